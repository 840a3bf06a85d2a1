"""The ``dask-lance-index`` command line, for batch jobs against a Dask cluster.

Each subcommand is one ``_add_<name>(subparsers)`` function that declares its
arguments and sets ``func`` to the function that runs it; :data:`COMMANDS`
lists them in the order ``--help`` shows them. A new subcommand is one more
such function appended to :data:`COMMANDS`, e.g.::

    def _add_cleanup(sub) -> None:
        p = sub.add_parser("cleanup", help="...", description=_para("..."),
                           epilog=... + SHORT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
        _add_dataset_args(p)          # uri, --column, --storage-option
        p.add_argument("--build-id"); p.add_argument("--dry-run", action="store_true")
        _add_output_args(p)           # --json
        p.set_defaults(func=_run_cleanup)   # _run_cleanup(args) -> exit code

Errors need no handling there: :func:`main` maps exceptions to exit codes.

Exit codes (:data:`EXIT_CODES`): 0 success; 2 usage or bad input (the command
as given cannot succeed: a wrong argument, column, dimension, artifact or
dataset path); 3 conflict (an index of that name exists without ``--replace``,
or the dataset changed under the build); 1 any other failure (worth a retry:
a lost worker, an unreachable scheduler, an I/O error); 130 interrupted.

A command that seems stuck prints every thread's stack to stderr on
``kill -USR1 <pid>`` and goes on (:mod:`faulthandler`).
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import json
import os
import signal
import sys
import textwrap
import traceback
import warnings
from typing import Callable

import numpy as np
from distributed import Client, LocalCluster

from . import __version__
from .api import create_index, create_scalar_index, plan_index, plan_scalar_index, run
from .errors import ClusterLostError, DatasetChangedError, IndexExistsError, InvalidInputError
from .evaluation import check_queries, evaluate_index, index_on, sample_query_rows
from .plan import HIERARCHICAL_MIN_PARTITIONS, INDEX_TYPES, IVF_TRAININGS, SCALAR_ALIASES, SCALAR_INDEX_TYPES, is_scalar
from .recovery import cleanup
from .runtime import check_security, parallelism, tls_refused_hint, tls_security
from .storage import column_info, open_or_fail

__all__ = ["main", "build_parser", "exit_code", "EXIT_CODES", "COMMANDS"]

PROG = "dask-lance-index"
EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_CONFLICT, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_FAILURE: "any other failure (a lost worker, an unreachable scheduler, an I/O error): worth a retry",
    EXIT_USAGE: "usage or bad input (unknown option, wrong column, dimension, artifact or dataset path): "
    "fix the command",
    EXIT_CONFLICT: "conflict: an index of that name exists (pass --replace) or the dataset changed "
    "during the build (run again)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
}


SHORT_CODES = "exit codes: 0 ok, 1 failure (retry), 2 bad input, 3 conflict (index exists / dataset changed)"


def _para(text: str) -> str:
    return textwrap.fill(text, 79)


class UsageError(Exception):
    """A command-line value that cannot be used (exit code 2)."""


class SchedulerUnreachable(Exception):
    """No scheduler answered at ``--scheduler`` in time (exit code 1: worth a retry)."""


# How error messages name the TLS settings on the command line (the options of ``dask worker``).
TLS_NAMES = {"ca": "--tls-ca-file", "cert": "--tls-cert", "key": "--tls-key",
             "fix": "pass --tls-ca-file CA.pem --tls-cert CERT.pem --tls-key KEY.pem, the options of "
                    "'dask worker' (the CA that signed the cluster's certificates, this client's certificate "
                    "and its key)"}


def _security(args):
    """The ``Security`` of ``--tls-ca-file/--tls-cert/--tls-key`` for ``--scheduler``, or None;
    checked (files, options, address scheme) before any connection or work."""
    given = [n for n, v in (("--tls-ca-file", args.tls_ca_file), ("--tls-cert", args.tls_cert),
                            ("--tls-key", args.tls_key)) if v is not None]
    if not args.scheduler:
        if given:
            raise InvalidInputError(
                f"{', '.join(given)} secure the connection to --scheduler, and no --scheduler was given. Fix: "
                "pass --scheduler tls://HOST:PORT, or drop the TLS options for a LocalCluster on this machine."
            )
        return None
    security = tls_security(args.tls_ca_file, args.tls_cert, args.tls_key, TLS_NAMES) if given else None
    return check_security(args.scheduler, security, TLS_NAMES)


def _connect(args):
    """A client of ``--scheduler``, or :class:`SchedulerUnreachable` naming the address."""
    try:
        return Client(args.scheduler, timeout=f"{args.connect_timeout}s", security=args.security)
    except (OSError, TimeoutError) as exc:
        raise SchedulerUnreachable(
            f"no dask scheduler answered at {args.scheduler} within {args.connect_timeout:g} s ({exc}). "
            "Fix: check the address and that the scheduler is running, or omit --scheduler to start a "
            "LocalCluster." + (tls_refused_hint(TLS_NAMES) if args.security is not None else "")
        ) from None


def exit_code(exc: BaseException) -> int:
    """The exit code a script sees for ``exc``."""
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    # IndexExistsError is also an InvalidInputError: test the conflicts first.
    if isinstance(exc, (IndexExistsError, DatasetChangedError)):
        return EXIT_CONFLICT
    if isinstance(exc, (InvalidInputError, UsageError)):
        return EXIT_USAGE
    return EXIT_FAILURE


# -- argument types -------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {v}")
    return v


def _int_list(text: str) -> tuple[int, ...]:
    return tuple(_positive_int(t) for t in text.split(",") if t.strip())


def _refine_list(text: str) -> tuple[int | None, ...]:
    return tuple(None if t.strip().lower() in ("none", "0", "-") else _positive_int(t) for t in text.split(",") if t.strip())


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _lance_option(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` with the value read as JSON where it is (true, 3, ["a"]), else as text."""
    key, value = _key_value(text)
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


# -- shared option groups -------------------------------------------------------------------------


def _add_dataset_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("uri", help="the Lance dataset: a path or URI (file://, s3://, gs://, az://, ...)")
    p.add_argument("--column", default="vector",
                   help="the column to index, or a field path such as emb.v (default: %(default)s)")
    p.add_argument(
        "--storage-option", dest="storage_options", metavar="KEY=VALUE", type=_key_value, action="append",
        default=[], help="a Lance storage option, e.g. aws_region=us-east-1 (repeatable)",
    )


def _add_index_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("index options (as Lance's create_index)")
    g.add_argument("--index-type", default="IVF_PQ", type=str.upper,
                   choices=(*INDEX_TYPES, *SCALAR_INDEX_TYPES, *SCALAR_ALIASES), metavar="TYPE",
                   help=f"a vector index, one of {', '.join(INDEX_TYPES)} (default: %(default)s), or a scalar or "
                        f"full-text one, {', '.join(SCALAR_INDEX_TYPES)} (FTS is INVERTED)")
    g.add_argument("--lance-option", dest="lance_options", metavar="KEY=VALUE", type=_lance_option,
                   action="append", default=[],
                   help="scalar and full-text indexes: an option passed to Lance, e.g. with_position=true or "
                        "base_tokenizer=whitespace (repeatable; values read as JSON where they are)")
    g.add_argument("--name", help="index name (default: <column>_idx)")
    g.add_argument("--metric", default="l2", choices=("l2", "cosine", "dot", "hamming"),
                   help="distance (default: %(default)s; hamming for uint8 binary vectors, cosine for multivectors)")
    g.add_argument("--num-partitions", type=_positive_int, metavar="N",
                   help="IVF partitions (default: rows / target partition size, in [1, 4096])")
    g.add_argument("--target-partition-size", type=_positive_int, metavar="ROWS",
                   help="rows per IVF partition when --num-partitions is not given (default: 8192)")
    g.add_argument("--num-sub-vectors", type=_positive_int, metavar="N", help="PQ sub-vectors (default: dim/16, else /8, /4, /2)")
    g.add_argument("--num-bits", type=_positive_int, metavar="B", help="bits per code: PQ 4 or 8, SQ 8, RQ 1-9")
    g.add_argument("--replace", action="store_true", help="replace an existing index of that name, atomically")
    t = p.add_argument_group("training")
    t.add_argument("--ivf-training", default="auto", choices=IVF_TRAININGS,
                   help="IVF k-means: flat (as Lance) or hierarchical (two levels, coarse-to-fine assignment; "
                        f"default from {HIERARCHICAL_MIN_PARTITIONS} partitions on, l2 and cosine)")
    t.add_argument("--coarse-probes", type=_positive_int, metavar="N",
                   help="hierarchical: coarse groups searched per row (default: the fewest that assign 99.5%% of "
                        "sampled rows exactly)")
    d = p.add_argument_group("build layout")
    d.add_argument("--num-tasks", type=_positive_int, metavar="N",
                   help="build tasks, one segment each (default: one per worker thread; IVF_FLAT: 1 GiB of rows each)")
    d.add_argument("--num-segments", type=_positive_int, default=1, metavar="N",
                   help="segments in the committed index (default: %(default)s)")
    d.add_argument("--seed", type=int, help="seed of sampling and training (same seed and data: same index)")
    d.add_argument("--journal", metavar="LOCATION",
                   help="keep the build's journal here (a directory or object-store prefix); the same command "
                        "again resumes the build where it stopped (default: <uri>/_dli/<build id>, removed "
                        "after the commit)")


def _add_cluster_args(p: argparse.ArgumentParser, *, required_for: str) -> None:
    g = p.add_argument_group("cluster")
    g.add_argument("--scheduler", metavar="ADDRESS",
                   help="a dask-distributed scheduler, e.g. tcp://10.0.0.5:8786, or tls://10.0.0.5:8786 with "
                   f"the --tls-* options (default: start a LocalCluster on this machine for {required_for})")
    g.add_argument("--connect-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="how long to wait for --scheduler to answer (default: %(default)g)")
    _add_tls_args(g)
    g.add_argument("--workers", type=_positive_int, metavar="N",
                   help="worker processes of the LocalCluster (default: dask's choice for this machine)")
    g.add_argument("--threads-per-worker", type=_positive_int, default=1, metavar="N",
                   help="threads per LocalCluster worker (default: %(default)s)")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar on stderr (default: only when stderr is a terminal)")


def _add_tls_args(g) -> None:
    """The TLS options of ``dask worker``, for a ``--scheduler tls://...`` started with ``--protocol tls``."""
    g.add_argument("--tls-ca-file", metavar="PATH",
                   help="CA certificate(s) that signed the cluster's certificates, PEM (as dask worker); "
                        "with --tls-cert and --tls-key for a --scheduler tls://HOST:PORT")
    g.add_argument("--tls-cert", metavar="PATH", help="this client's certificate, PEM (may hold the key too)")
    g.add_argument("--tls-key", metavar="PATH", help="this client's private key, PEM")


def _add_output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout instead of text")


@contextlib.contextmanager
def _cluster(args):
    """A client on ``--scheduler``, or on a LocalCluster started (and stopped) here."""
    if args.scheduler:
        with _connect(args) as client:
            yield client
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "port in use" style start-up chatter
        cluster = LocalCluster(
            n_workers=args.workers, threads_per_worker=args.threads_per_worker,
            processes=True, dashboard_address=":0",  # any free port: 8787 may be taken
        )
    with cluster, Client(cluster) as client:
        yield client


def _cluster_info(client) -> dict:
    """What the command ran on: the scheduler, its workers and each worker's threads."""
    threads = client.nthreads()
    return {"scheduler": client.scheduler.address, "workers": len(threads),
            "threads_per_worker": sorted(threads.values())}


def _cluster_line(info: dict) -> str:
    return (f"cluster: {info['workers']} worker(s), threads per worker {info['threads_per_worker']}, "
            f"scheduler {info['scheduler']}")


def _index_kwargs(args) -> dict:
    return dict(
        name=args.name,
        metric=args.metric,
        replace=args.replace,
        num_partitions=args.num_partitions,
        target_partition_size=args.target_partition_size,
        num_sub_vectors=args.num_sub_vectors,
        num_bits=args.num_bits,
        ivf_training=args.ivf_training,
        coarse_probes=args.coarse_probes,
        num_tasks=args.num_tasks,
        num_segments=args.num_segments,
        seed=args.seed,
        storage_options=dict(args.storage_options) or None,
    )


# Options of vector indexes only: refused with a scalar --index-type rather than ignored.
_VECTOR_ONLY = ("num_partitions", "target_partition_size", "num_sub_vectors", "num_bits", "coarse_probes", "seed")


def _scalar_kwargs(args) -> dict:
    """The scalar or full-text build's arguments, or an error naming a vector-only option given."""
    given = [f"--{k.replace('_', '-')}" for k in _VECTOR_ONLY if getattr(args, k) is not None]
    if given:
        raise InvalidInputError(
            f"the options {', '.join(given)} are for vector indexes only, not {args.index_type}. Fix: drop them "
            "(Lance's options of a scalar index go in --lance-option KEY=VALUE)."
        )
    return dict(name=args.name, replace=args.replace, num_tasks=args.num_tasks, num_segments=args.num_segments,
                storage_options=dict(args.storage_options) or None, **dict(args.lance_options))


def _check_lance_options(args) -> None:
    if args.lance_options and not is_scalar(args.index_type):
        raise InvalidInputError(
            f"--lance-option applies to scalar and full-text indexes, not {args.index_type}. Fix: drop it."
        )


def _emit(args, obj: dict, text: str) -> None:
    print(json.dumps(obj, indent=2, default=str) if args.json else text, flush=True)


def _seconds_table(seconds: dict) -> str:
    return "seconds per stage:\n" + "\n".join(f"  {k:<8s} {v:8.2f}" for k, v in seconds.items())


# -- build ----------------------------------------------------------------------------------------


def _add_build(sub) -> None:
    p = sub.add_parser(
        "build", help="build and commit an index on a cluster",
        description=_para(
            "Plan, train, build, merge and commit a vector index on a Dask cluster, or a scalar or "
            "full-text index (--index-type BTREE, INVERTED, ...: one Lance part per fragment group, merged). "
            "Prints the plan, the result and the seconds of each stage."
        ),
        epilog=textwrap.dedent(f"""\
            examples:
              {PROG} build data/docs.lance --index-type IVF_PQ --num-partitions 256 --num-sub-vectors 16
              {PROG} build data/docs.lance --index-type INVERTED --column text --lance-option with_position=true
              {PROG} build s3://bucket/docs.lance --scheduler tcp://10.0.0.5:8786 \\
                  --storage-option aws_region=us-east-1 --replace --json > build.json
              {PROG} build s3://bucket/docs.lance --scheduler tls://10.0.0.5:8786 \\
                  --tls-ca-file ca.pem --tls-cert client.pem --tls-key client-key.pem""") + "\n\n" + SHORT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_dataset_args(p)
    _add_index_args(p)
    _add_cluster_args(p, required_for="the build")
    _add_output_args(p)
    p.set_defaults(func=_run_build)


def _run_build(args) -> int:
    _check_lance_options(args)
    scalar = is_scalar(args.index_type)
    kwargs = _scalar_kwargs(args) if scalar else _index_kwargs(args)
    plan, create = (plan_scalar_index, create_scalar_index) if scalar else (plan_index, create_index)
    # Check the request (metadata only) before starting a cluster: bad input exits at once.
    plan(args.uri, args.column, args.index_type, **kwargs)
    with _cluster(args) as client:
        build = create(args.uri, args.column, args.index_type, client=client, compute=False, journal=args.journal,
                       **kwargs)
        if not args.json:
            print(build.plan, flush=True)
        result = run(build, client=client, progress=args.progress)
        cluster = _cluster_info(client)
    _emit(args, {"plan": build.plan.to_dict(), "result": result.to_dict(), "cluster": cluster},
          f"{result}\n{_cluster_line(cluster)}\n{_seconds_table(result.seconds)}")
    return EXIT_OK


# -- plan -----------------------------------------------------------------------------------------


def _add_plan(sub) -> None:
    p = sub.add_parser(
        "plan", help="show what a build would do, without running it",
        description=_para(
            "Open the dataset (metadata only), check the request and print the plan: fragment "
            "groups (one build task each), the training sample, the merges and the commit. Nothing is "
            "written. Exits 2 or 3 where the build would fail on its input."
        ),
        epilog=textwrap.dedent(f"""\
            examples:
              {PROG} plan data/docs.lance --index-type IVF_RQ --num-partitions 64
              {PROG} plan data/docs.lance --scheduler tcp://10.0.0.5:8786 --json | jq .groups""") + "\n\n" + SHORT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_dataset_args(p)
    _add_index_args(p)
    g = p.add_argument_group("cluster")
    g.add_argument("--scheduler", metavar="ADDRESS",
                   help="size the plan for this scheduler's worker threads (default: the cores this process may use)")
    g.add_argument("--connect-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="how long to wait for --scheduler to answer (default: %(default)g)")
    _add_tls_args(g)
    _add_output_args(p)
    p.set_defaults(func=_run_plan)


def _run_plan(args) -> int:
    _check_lance_options(args)
    scalar = is_scalar(args.index_type)
    kwargs = _scalar_kwargs(args) if scalar else _index_kwargs(args)
    if args.scheduler:
        with _connect(args) as client:
            threads = parallelism(client)
    else:
        threads = parallelism(None)
    plan = (plan_scalar_index if scalar else plan_index)(args.uri, args.column, args.index_type,
                                                         parallelism=threads, **kwargs)
    _emit(args, plan.to_dict(), str(plan))
    return EXIT_OK


# -- evaluate -------------------------------------------------------------------------------------


def _add_evaluate(sub) -> None:
    p = sub.add_parser(
        "evaluate", help="recall@k and latency of a committed index",
        description=_para(
            "Compute exact nearest neighbours on the cluster (one task per fragment, top-k merged "
            "as a tree), then query the committed index at each --nprobes and --refine-factors setting from "
            "this process and report recall@k and milliseconds per query. Queries are --num-queries rows "
            "drawn from the dataset (so each query's nearest row is itself), or the rows of --queries FILE.npy."
        ),
        epilog=textwrap.dedent(f"""\
            examples:
              {PROG} evaluate data/docs.lance --nprobes 1,5,10,20,50 --refine-factors none,5
              {PROG} evaluate data/docs.lance --queries held_out.npy -k 100 --plot recall.png --json""") + "\n\n" + SHORT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_dataset_args(p)
    p.add_argument("--name", help="the index (default: the index on --column)")
    p.add_argument("-k", "--k", dest="k", type=_positive_int, default=10, help="neighbours per query (default: %(default)s)")
    p.add_argument("--nprobes", type=_int_list, default=(1, 5, 10, 20, 50), metavar="N,N,...",
                   help="IVF partitions to probe (default: 1,5,10,20,50)")
    p.add_argument("--refine-factors", type=_refine_list, default=(None, 5), metavar="R,R,...",
                   help="Lance refine_factor values, 'none' for no refinement (default: none,5)")
    q = p.add_mutually_exclusive_group()
    q.add_argument("--num-queries", type=_positive_int, default=100, metavar="N",
                   help="query with N random rows of the dataset (default: %(default)s)")
    q.add_argument("--queries", metavar="FILE.npy", help="query with the rows of this (num_queries, dim) .npy array")
    p.add_argument("--metric", choices=("l2", "cosine", "dot", "hamming"), help="metric of the exact search (default: the index's)")
    p.add_argument("--id-column", help="compare this column's values (default: Lance row ids)")
    p.add_argument("--seed", type=int, default=0, help="seed of the query sample (default: %(default)s)")
    p.add_argument("--plot", metavar="FILE.png", help="also draw recall against nprobes and latency (needs matplotlib)")
    _add_cluster_args(p, required_for="the exact search")
    _add_output_args(p)
    p.set_defaults(func=_run_evaluate)


def _load_queries(args, ds, dimension: int):
    if args.queries:
        try:
            return np.load(args.queries, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read queries from {args.queries!r}: {exc}") from None
    return sample_query_rows(ds, args.column, args.num_queries, seed=args.seed, dimension=dimension)


def _run_evaluate(args) -> int:
    if args.plot:
        try:
            import matplotlib

            matplotlib.use("Agg")
        except ImportError:
            raise UsageError("--plot needs matplotlib: pip install matplotlib") from None
    # Check the input before starting a cluster: bad input exits at once.
    ds = open_or_fail(args.uri, None, dict(args.storage_options) or None)
    info = column_info(ds, args.column)
    dimension = info.dimension
    index_on(ds, info.name, args.name)
    queries = check_queries(_load_queries(args, ds, dimension), dimension)
    with _cluster(args) as client:
        table = evaluate_index(
            args.uri, args.column, queries, args.k, args.nprobes, args.refine_factors,
            name=args.name, metric=args.metric, id_column=args.id_column,
            storage_options=dict(args.storage_options) or None, client=client, progress=args.progress,
        )
        cluster = _cluster_info(client)
    if args.plot:
        table.plot().savefig(args.plot, dpi=120)
    _emit(args, {**table.to_dict(), "cluster": cluster},
          f"{table}\n{_cluster_line(cluster)}" + (f"\nplot written to {args.plot}" if args.plot else ""))
    return EXIT_OK


# -- cleanup --------------------------------------------------------------------------------------


def _add_cleanup(sub) -> None:
    p = sub.add_parser(
        "cleanup", help="remove what crashed or failed builds left on the dataset",
        description=_para(
            "Remove the uncommitted segments under _indices/ and the journals that crashed or "
            "failed builds left (dask_lance_index.cleanup). Never removes a segment that any "
            "version of the dataset references; without --build-id, builds that are still running "
            "are left alone."
        ),
        epilog=textwrap.dedent(f"""\
            examples:
              {PROG} cleanup data/docs.lance --dry-run
              {PROG} cleanup s3://bucket/docs.lance --build-id 3f2a9c1e --storage-option aws_region=eu-west-1""")
        + "\n\n" + SHORT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_dataset_args(p)
    p.add_argument("--build-id", help="the build to clean up (BuildResult.build_id / the name under <uri>/_dli/)")
    p.add_argument("--journal", help="the journal's location, when the build was given journal= elsewhere")
    p.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
    _add_output_args(p)
    p.set_defaults(func=_run_cleanup)


def _run_cleanup(args) -> int:
    removed = cleanup(
        args.uri, args.build_id, storage_options=dict(args.storage_options) or None,
        dry_run=args.dry_run, journal=args.journal,
    )
    verb = "would remove" if args.dry_run else "removed"
    text = f"{verb} {len(removed)} path(s)" + "".join(f"\n  {r}" for r in removed)
    _emit(args, {"dry_run": args.dry_run, "removed": removed}, text)
    return EXIT_OK


COMMANDS: list[Callable] = [_add_build, _add_plan, _add_evaluate, _add_cleanup]


# -- the parser and main --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    codes = "\n".join(f"  {c:<4d} {what}" for c, what in EXIT_CODES.items())
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Build, plan and evaluate Lance vector indexes at cluster scale on Dask.",
        epilog=textwrap.dedent(f"""\
            examples:
              {PROG} plan data/docs.lance --num-partitions 256 --num-sub-vectors 16
              {PROG} build data/docs.lance --num-partitions 256 --num-sub-vectors 16 --scheduler tcp://10.0.0.5:8786
              {PROG} evaluate data/docs.lance --nprobes 10,20,50 --refine-factors none,5 --plot recall.png

            Without --scheduler, build and evaluate start a LocalCluster on this machine.
            A scheduler started with --protocol tls takes --tls-ca-file, --tls-cert and --tls-key, as dask worker.
            Run '{PROG} COMMAND --help' for the options of a command.

            exit codes:
            """) + codes,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (see :data:`EXIT_CODES`)."""
    # Lance warns about centroids in index statistics on every call; the CLI does not need them.
    os.environ.setdefault("LANCE_INCLUDE_VECTOR_CENTROIDS", "false")
    if hasattr(signal, "SIGUSR1") and sys.stderr is not None:  # where a stuck command is: kill -USR1
        with contextlib.suppress(ValueError, OSError, AttributeError, RuntimeError):  # not main thread, no fileno
            faulthandler.register(signal.SIGUSR1, all_threads=True)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error (argparse exits 2)
        return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_USAGE
    try:
        if hasattr(args, "scheduler"):  # check TLS files and the address before any work
            args.security = _security(args)
        return args.func(args)
    except BaseException as exc:  # noqa: BLE001 - every failure becomes a documented exit code
        code = exit_code(exc)
        if code == EXIT_FAILURE and not isinstance(exc, (SchedulerUnreachable, ClusterLostError)):
            traceback.print_exc()  # unexpected: the traceback is what a bug report needs
        msg = "interrupted" if code == EXIT_INTERRUPTED else f"{type(exc).__name__}: {exc}"
        print(f"{PROG}: error: {msg}", file=sys.stderr, flush=True)
        return code


if __name__ == "__main__":  # pragma: no cover - python -m dask_lance_index.cli
    raise SystemExit(main())
