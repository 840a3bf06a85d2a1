"""The soak: index operations in a row on a multi-host cluster, with network faults, and the
dataset's invariants checked after every one.

Shared by ``benchmarks/soak.py`` (30 operations, prints the table) and ``tests/test_soak.py``
(a few operations, asserts no violation and no leftover). The cluster is ``tests/netns.py``'s:
a scheduler host, two worker hosts and an object-store host; the client (this process) is in the
root namespace. The dataset is either on the shared local disk or on the S3 server of the store
host.

Operations: ``create`` (a vector index; ``replace`` once one exists), ``update`` (rows appended,
then ``update_index``), ``delete`` (Lance's ``ds.delete``), ``compact``
(``ds.optimize.compact_files``) and ``scalar`` (``create_scalar_index`` on ``id``). Faults, during
the library's operations (create, replace, update, scalar):

* ``worker_cut``: a worker host's link cut mid-operation for longer than the scheduler's timeouts;
* ``slow_lossy``: every link 100 ms slower and losing 2% of frames for the whole operation;
* ``store_cut``: the object store host's link cut for a few seconds (S3 store only);
* ``scheduler_kill``: the scheduler killed mid-operation, a new one started, the same call repeated
  with the same explicit journal;
* ``client_cut``: the client's link cut once every build task is journaled (merge and commit).

An operation that fails must fail with a clear error and leave the dataset at its old version;
it is then run again (a rerun). After every operation :meth:`Soak.check` checks that Lance reads
every version, that the indexes cover only fragments that exist (or that deletes emptied), that
the index statistics match the rows appended since the last build, that no row is lost or indexed
twice, and that nothing is left under ``_indices/``, ``<uri>/_dli/`` or the journal folder.
"""

from __future__ import annotations

import ast
import collections
import contextlib
import dataclasses
import os
import random
import threading
import time
import traceback
import uuid

import dask.config
from distributed import Client
import lance
import numpy as np

import dask_lance_index as dli
from dask_lance_index.datagen import make_vectors, write_vectors
from dask_lance_index.recovery import BuildJournal
from dask_lance_index.storage import referenced_segments
from dask_lance_index.storage.files import Store

from .netns import FAST_FAILURE, HostCluster, Network

OPERATIONS = ("create", "update", "delete", "compact", "scalar")
LIBRARY_OPERATIONS = ("create", "replace", "update", "scalar")  # the ones faults are injected into
FAULTS = ("worker_cut", "slow_lossy", "store_cut", "scheduler_kill", "client_cut")
HOSTS = ["sched", "w1", "w2", "store"]
# A link cut for longer than FAST_FAILURE's timeouts (tcp 12 s, worker ttl 10 s).
LONG_CUT = 16.0
OP_TIMEOUT = 300.0  # an operation that has not ended by then hangs: a violation, and the soak stops
NUM_PARTITIONS = 8
# How long the client tries to reach a lost scheduler before it gives up (dask's default: 30 s,
# HostCluster.client's 60 s): a killed scheduler is noticed in this time.
CLIENT_TIMEOUT = "15s"


class SoakAborted(RuntimeError):
    """The soak cannot go on (an operation hangs, or the cluster does not come back)."""


@dataclasses.dataclass
class Tally:
    """What the soak did and found."""

    operations: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    faults: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    landed: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # while the job ran
    failures: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # by fault
    reruns: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # by fault
    failed_ops: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # by operation
    seconds: dict = dataclasses.field(default_factory=lambda: collections.defaultdict(list))
    fault_seconds: dict = dataclasses.field(default_factory=lambda: collections.defaultdict(list))
    violations: list = dataclasses.field(default_factory=list)
    leftovers: list = dataclasses.field(default_factory=list)
    errors: list = dataclasses.field(default_factory=list)  # (operation, fault, error text)
    wall: float = 0.0

    def table(self) -> str:
        lines = [f"{'operation':<10} {'runs':>5} {'failed':>7} {'mean s':>8} {'max s':>7}"]
        for op in ("create", "replace", "update", "delete", "compact", "scalar"):
            s = self.seconds.get(op, [])
            if self.operations[op]:
                lines.append(f"{op:<10} {self.operations[op]:>5} {self.failed_ops[op]:>7} "
                             f"{np.mean(s):>8.1f} {max(s):>7.1f}")
        lines.append("")
        lines.append(f"{'fault':<15} {'injected':>8} {'landed':>7} {'failures':>9} {'reruns':>7} {'mean s':>8}")
        for f in FAULTS:
            s = self.fault_seconds.get(f, [])
            mean = f"{np.mean(s):>8.1f}" if s else f"{'-':>8}"
            lines.append(f"{f:<15} {self.faults[f]:>8} {self.landed[f]:>7} {self.failures[f]:>9} {self.reruns[f]:>7} {mean}")
        lines.append("")
        total = sum(self.operations.values())
        lines.append(f"operations: {total}; faults injected: {sum(self.faults.values())}; "
                     f"failures: {sum(self.failures.values())}; reruns: {sum(self.reruns.values())}")
        lines.append(f"invariant violations: {len(self.violations)} (goal 0)")
        lines.append(f"leftover files: {len(self.leftovers)} (goal 0)")
        lines.append(f"seconds per operation: {self.wall / max(total, 1):.1f} (wall {self.wall:.0f} s)")
        for v in self.violations:
            lines.append(f"  VIOLATION {v}")
        for v in self.leftovers:
            lines.append(f"  LEFTOVER {v}")
        return "\n".join(lines)


def clear_error(exc: BaseException) -> bool:
    """An error a user can act on: a named type and a message (not a bare panic, not empty)."""
    text = str(exc).strip()
    if isinstance(exc, dli.DaskLanceIndexError):
        return bool(text)
    name = type(exc).__name__
    if name in ("PanicException", "Exception", "RuntimeError", "AssertionError", "KeyError", "AttributeError",
                "TypeError", "ValueError", "IndexError"):
        return False
    return bool(text) or name in ("CancelledError", "FutureCancelledError", "TimeoutError", "CommClosedError")


class Soak:
    """The soak on ``cluster`` (a :class:`HostCluster` on ``net``), data under ``workdir``.

    ``store``: ``"local"`` (the dataset on the shared disk) or ``"s3"`` (on the store host's
    S3 server). ``log``: where a line per operation goes.
    """

    def __init__(self, net: Network, cluster: HostCluster, workdir: str, *, store: str = "local",
                 rows: int = 24_000, dim: int = 32, append: int = 3_000, seed: int = 0, log=print):
        self.net, self.cluster, self.log = net, cluster, log
        self.rng = random.Random(seed)
        self.seed = seed
        self.store = store
        self.append_rows = append
        self.pool = make_vectors(rows + 64 * append, dim, num_clusters=100, seed=seed)
        self.tally = Tally()
        self.journals = os.path.join(str(workdir), "journals")
        os.makedirs(self.journals, exist_ok=True)
        if store == "s3":
            import boto3

            bucket = f"soak{uuid.uuid4().hex[:8]}"
            self.opts = {"aws_access_key_id": "testing", "aws_secret_access_key": "soak-" + uuid.uuid4().hex[:8],
                         "aws_region": "us-east-1", "aws_endpoint": cluster.store_endpoint, "allow_http": "true"}
            boto3.client("s3", endpoint_url=cluster.store_endpoint, aws_access_key_id="testing",
                         aws_secret_access_key=self.opts["aws_secret_access_key"],
                         region_name="us-east-1").create_bucket(Bucket=bucket)
            self.uri = f"s3://{bucket}/soak.lance"
        else:
            self.opts = None
            self.uri = os.path.join(str(workdir), "soak.lance")
        self.files = Store(self.uri, self.opts)
        write_vectors(self.uri, self.pool[:rows], max_rows_per_file=rows // 6, storage_options=self.opts)
        self.live = np.zeros(len(self.pool), dtype=bool)
        self.live[:rows] = True
        self.next_id = rows
        self.pending: set[int] = set(range(rows))  # live rows no vector index covers
        self.has_index = self.has_scalar = False
        self.emptied: set[int] = set()  # fragments whose every row a delete removed
        self.client = Client(cluster.address, timeout=CLIENT_TIMEOUT)
        self.client.wait_for_workers(len(cluster.worker_hosts), timeout=120)
        self.op_no = 0

    # -- the run ---------------------------------------------------------------------------------
    def run(self, schedule) -> Tally:
        """Run ``schedule``: ``(operation, fault or None)`` pairs."""
        t0 = time.monotonic()
        try:
            for op, fault in schedule:
                self.step(op, fault)
        finally:
            self.tally.wall = time.monotonic() - t0
        return self.tally

    def schedule(self, n: int, fault_rate: float = 0.7, faults=FAULTS) -> list[tuple[str, str | None]]:
        """``n`` random operations, a random fault from ``faults`` in about ``fault_rate`` of the
        library's; the first operation is always a create."""
        faults = [f for f in faults if f != "store_cut" or self.store == "s3"]
        out, bag = [], []
        for i in range(n):
            op = "create" if i == 0 else self.rng.choice(OPERATIONS)
            fault = None
            if op in ("create", "update", "scalar") and self.rng.random() < fault_rate:
                if not bag:  # every kind once, in random order, then again
                    bag = self.rng.sample(faults, len(faults))
                fault = bag.pop()
            out.append((op, fault))
        return out

    def step(self, op: str, fault: str | None) -> None:
        self.op_no += 1
        if op == "update" and not self.has_index:
            op = "create"
        if op == "create" and self.has_index:
            op = "replace"
        t0 = time.monotonic()
        note = ""
        if op == "delete":
            note = self.delete()
        elif op == "compact":
            note = self.compact()
        else:
            if op == "update":
                note = f"+{self.append()} rows"
            note += self.library_op(op, fault)
        seconds = time.monotonic() - t0
        self.tally.operations[op] += 1
        self.tally.seconds[op].append(seconds)
        if fault and op in LIBRARY_OPERATIONS:
            self.tally.fault_seconds[fault].append(seconds)
        before = len(self.tally.violations), len(self.tally.leftovers)
        self.check()
        bad = (len(self.tally.violations) - before[0], len(self.tally.leftovers) - before[1])
        self.log(f"op {self.op_no:>2} {op:<8} fault={fault or '-':<14} {seconds:6.1f} s  {note}"
                 + (f"  VIOLATIONS {bad[0]} LEFTOVERS {bad[1]}" if any(bad) else ""))

    # -- operations ------------------------------------------------------------------------------
    def dataset(self, version=None):
        return lance.dataset(self.uri, version=version, storage_options=self.opts)

    def append(self) -> int:
        n = self.append_rows
        ids = range(self.next_id, self.next_id + n)
        write_vectors(self.uri, self.pool[ids.start:ids.stop], mode="append", start_id=ids.start,
                      max_rows_per_file=n // 2, storage_options=self.opts)
        self.live[ids.start:ids.stop] = True
        self.pending.update(ids)
        self.next_id = ids.stop
        return n

    def delete(self) -> str:
        ds = self.dataset()
        before = {f.fragment_id for f in ds.get_fragments()}
        alive = np.flatnonzero(self.live)
        if self.rng.random() < 0.5:  # a contiguous range: may empty whole fragments
            start = int(self.rng.choice(alive))
            gone = alive[(alive >= start) & (alive < start + self.rng.randint(500, 5000))]
            ds.delete(f"id >= {start} AND id < {int(gone.max()) + 1}")
        else:  # rows here and there
            gone = np.array(sorted(self.rng.sample(list(alive), min(300, len(alive) // 4))))
            ds.delete("id IN (" + ",".join(map(str, gone.tolist())) + ")")
        self.live[gone] = False
        self.pending -= set(gone.tolist())
        after = {f.fragment_id for f in self.dataset().get_fragments()}
        self.emptied |= before - after
        return f"-{len(gone)} rows, {len(before - after)} fragments emptied"

    def compact(self) -> str:
        ds = self.dataset()
        n = len(ds.get_fragments())
        metrics = ds.optimize.compact_files(target_rows_per_fragment=self.rng.choice([6000, 12000]))
        return f"{n} -> {len(self.dataset().get_fragments())} fragments ({metrics.fragments_removed} removed)"

    def _call(self, op: str, journal: str | None):
        kw = dict(client=self.client, storage_options=self.opts, journal=journal, progress=False)
        if op in ("create", "replace"):
            return dli.create_index(self.uri, "vector", "IVF_FLAT", replace=op == "replace",
                                    num_partitions=NUM_PARTITIONS, num_tasks=4, seed=self.seed, **kw)
        if op == "update":
            return dli.update_index(self.uri, "vector", num_tasks=2, max_deltas=self.rng.choice([0, 2]), **kw)
        return dli.create_scalar_index(self.uri, "id", "BTREE", num_tasks=2, **kw)

    def library_op(self, op: str, fault: str | None) -> str:
        journal = os.path.join(self.journals, f"op{self.op_no}") if fault == "scheduler_kill" else None
        version = self.dataset().version
        if fault:
            self.tally.faults[fault] += 1
        box = self._with_fault(op, fault, journal)
        if fault:
            self.heal()
        note = ""
        if isinstance(box, BaseException):
            self.tally.failures[fault or "none"] += 1
            self.tally.failed_ops[op] += 1
            text = f"{type(box).__name__}: {str(box).strip()[:300]}"
            self.tally.errors.append((op, fault, text))
            note = f" failed ({text[:120]}); "
            self.log(f"   op {self.op_no} {op} under {fault} failed: {text}")
            if not clear_error(box):
                self.tally.violations.append(f"op {self.op_no} {op} under {fault}: unclear error {text!r}\n"
                                             + "".join(traceback.format_exception(box))[-3000:])
            now = self.dataset().version
            if isinstance(box, dli.CommittedDespiteError) and now == box.version:
                self._done(op, journal)
                return note + "committed: nothing to rerun"
            if now != version:
                self.tally.violations.append(f"op {self.op_no} {op} under {fault} failed with the dataset moved "
                                             f"from version {version} to {now}: {text}")
                self._done(op, journal, keep_journal=True)
                return note + "committed anyway: not rerun"
            self.tally.reruns[fault or "none"] += 1
            journal = getattr(box, "journal", None) or journal  # ClusterLostError names the journal to resume
            again = self._with_fault(op, None, journal)
            if isinstance(again, BaseException):
                self.tally.violations.append(f"op {self.op_no} {op}: the rerun after {fault} failed too: "
                                             f"{type(again).__name__}: {again}")
                self.heal()
                return note + "rerun failed"
            note += "rerun ok"
        self._done(op, journal)
        return note

    def _done(self, op: str, journal: str | None, keep_journal: bool = False) -> None:
        if op in ("create", "replace", "update"):
            self.has_index = True
            self.pending.clear()
        else:
            self.has_scalar = True
        if journal is not None:  # an explicit journal is kept, saying committed: the soak removes it
            j = BuildJournal.load(journal, self.opts)
            default = journal.startswith(f"{self.uri.rstrip('/')}/_dli/")  # removed after the commit
            if (j is None and not default or j is not None and j.status != "committed") and not keep_journal:
                self.tally.violations.append(f"op {self.op_no}: journal {journal} says "
                                             f"{None if j is None else j.status} after success")
            if j is not None:
                Store(journal, self.opts).remove_tree()

    def _journal(self, explicit: str | None) -> BuildJournal | None:
        if explicit:
            return BuildJournal.load(explicit)
        names = self.files.listdir("_dli")
        return BuildJournal.load(f"{self.uri}/_dli/{names[0]}", self.opts) if names else None

    def _with_fault(self, op: str, fault: str | None, journal: str | None):
        """Run the operation with ``fault``; its result or its exception."""
        box = {}

        def target():
            try:
                box["out"] = self._call(op, journal)
            except BaseException as exc:  # noqa: BLE001 - handed back
                box["out"] = exc

        thread = threading.Thread(target=target, daemon=True)
        deadline = time.monotonic() + OP_TIMEOUT
        if fault == "slow_lossy":
            self.net.impair("*", delay=0.1, loss=0.02)
            self.tally.landed[fault] += 1
        thread.start()
        try:
            if fault in ("worker_cut", "store_cut", "scheduler_kill"):
                while thread.is_alive() and self._journal(journal) is None:  # planned and journaled: tasks next
                    time.sleep(0.01)
                thread.join(self.rng.uniform(0.0, 0.15))  # sampling, training or building
                if thread.is_alive():
                    self.tally.landed[fault] += 1
                    if fault == "worker_cut":
                        with self.net.cut(self.rng.choice(self.cluster.worker_hosts)):
                            thread.join(LONG_CUT)
                    elif fault == "store_cut":
                        with self.net.cut(self.cluster.store_host):
                            thread.join(self.rng.uniform(3.0, 6.0))
                    else:
                        self.cluster.kill_scheduler()
            elif fault == "client_cut":
                while thread.is_alive() and time.monotonic() < deadline:
                    j = self._journal(journal)
                    if j is not None and len(j.segments) >= j.plan.num_tasks:
                        break
                    time.sleep(0.02)
                if thread.is_alive():
                    self.tally.landed[fault] += 1
                    with self.net.cut("client"):
                        thread.join(LONG_CUT)
            thread.join(max(deadline - time.monotonic(), 0))
        finally:
            if fault == "slow_lossy":
                self.net.impair("*")
        if thread.is_alive():
            self.tally.violations.append(f"op {self.op_no} {op} under {fault}: still running after {OP_TIMEOUT:.0f} s")
            raise SoakAborted(f"op {self.op_no} {op} hangs under {fault}")
        return box["out"]

    def heal(self) -> None:
        """Every link up, the scheduler and both workers running, a working client."""
        self.net.impair("*")
        for host in ["client", *self.net.hosts]:
            self.net.impair(host)
        c = self.cluster
        if c.scheduler.poll() is not None:  # killed: workers lose it and shut down; start afresh
            for host, proc in c.workers.items():
                try:
                    proc.wait(5)
                except Exception:  # noqa: BLE001 - still up: a cluster script restarts it
                    proc.kill()
                    proc.wait(10)
            c.start_scheduler()
            with contextlib.suppress(Exception):
                self.client.close(timeout=5)
            self.client = None
        if self.client is None or self.client.status != "running":
            self.client = Client(c.address, timeout=CLIENT_TIMEOUT)
        # A worker cut off from the scheduler shuts itself down (its process ends a moment
        # later): start a new one on that host until both are in.
        deadline = time.monotonic() + 120
        while len(self.client.scheduler_info(n_workers=-1)["workers"]) < len(c.worker_hosts):
            for host, proc in c.workers.items():
                if proc.poll() is not None:
                    c.start_worker(host)
            if time.monotonic() > deadline:
                raise SoakAborted(f"the workers did not come back; see the logs in {self.net.logs}")
            time.sleep(0.5)

    # -- invariants ------------------------------------------------------------------------------
    def violation(self, text: str) -> None:
        self.tally.violations.append(f"op {self.op_no}: {text}")

    def check(self) -> None:
        ds = self.dataset()
        for v in ds.versions():  # Lance reads every version
            try:
                self.dataset(v["version"]).count_rows()
            except Exception as exc:  # noqa: BLE001
                self.violation(f"version {v['version']} cannot be read: {exc}")
        expected = np.flatnonzero(self.live)
        ids = np.sort(ds.to_table(columns=["id"])["id"].to_numpy())
        if len(ids) != len(expected) or not np.array_equal(ids, expected):
            lost, extra = np.setdiff1d(expected, ids), np.setdiff1d(ids, expected)
            self.violation(f"rows: {len(ids)} read, {len(expected)} expected; {len(lost)} lost, {len(extra)} "
                           f"unexpected, {len(ids) - len(np.unique(ids))} duplicated")
        frags = {f.fragment_id: f for f in ds.get_fragments()}
        for desc in ds.describe_indices():
            covered: list[int] = [int(f) for s in desc.segments for f in s.fragment_ids]
            if len(covered) != len(set(covered)):
                self.violation(f"index {desc.name}: a fragment in two segments: {sorted(covered)}")
            gone = set(covered) - set(frags) - self.emptied
            if gone:
                self.violation(f"index {desc.name} covers fragments {sorted(gone)} that do not exist")
            if desc.name == "vector_idx":
                self._check_vector_index(ds, frags, set(covered))
        names = {d.name for d in ds.describe_indices()}
        if self.has_index != ("vector_idx" in names) or self.has_scalar != ("id_idx" in names):
            self.violation(f"indexes {sorted(names)}; expected vector {self.has_index}, scalar {self.has_scalar}")
        self._check_search(ds)
        self._check_leftovers(ds)

    def _check_vector_index(self, ds, frags, covered) -> None:
        stats = ds.stats.index_stats("vector_idx")
        live_pending = len(self.pending)
        uncovered = sum(f.count_rows() for i, f in frags.items() if i not in covered)
        if stats["num_unindexed_rows"] != live_pending or uncovered != live_pending:
            self.violation(f"unindexed rows: Lance says {stats['num_unindexed_rows']}, uncovered fragments hold "
                           f"{uncovered}, appended since the last build {live_pending}")
        if stats["num_indexed_rows"] != int(self.live.sum()) - live_pending:
            self.violation(f"indexed rows: Lance says {stats['num_indexed_rows']}, expected "
                           f"{int(self.live.sum()) - live_pending}")

    def _check_search(self, ds) -> None:
        alive = np.flatnonzero(self.live)
        picks = [int(self.rng.choice(alive)) for _ in range(2)]
        if self.pending:
            picks.append(self.rng.choice(sorted(self.pending)))
        k = min(400, len(alive))
        for i in picks:
            t = ds.to_table(nearest={"column": "vector", "q": self.pool[i], "k": k, "nprobes": NUM_PARTITIONS},
                            columns=["id", "_distance"], with_row_id=True)
            got, rowids = t["id"].to_numpy(), t["_rowid"].to_numpy()
            if len(np.unique(rowids)) != len(rowids) or len(np.unique(got)) != len(got):
                self.violation(f"search for row {i}: {len(got) - len(np.unique(got))} ids found twice")
            if i not in set(got.tolist()):
                self.violation(f"search for row {i} (k={k}) does not find the row itself")
            if not self.live[got].all():
                self.violation(f"search for row {i} finds deleted rows {got[~self.live[got]][:5].tolist()}")
            if len(got) != k:
                self.violation(f"search for row {i}: {len(got)} results, asked {k}")

    def _check_leftovers(self, ds) -> None:
        dirs = set(self.files.listdir("_indices"))
        referenced = referenced_segments(self.uri, self.opts)
        current = {s.uuid for d in ds.describe_indices() for s in d.segments}
        for u in sorted(current - dirs):
            self.violation(f"segment {u} of the current version is missing from _indices/")
        for u in sorted(dirs - referenced):
            self.tally.leftovers.append(f"op {self.op_no}: _indices/{u} (no version references it)")
        for name in self.files.listdir("_dli"):
            self.tally.leftovers.append(f"op {self.op_no}: _dli/{name} (a journal)")
        for name in os.listdir(self.journals):
            self.tally.leftovers.append(f"op {self.op_no}: journal folder {name}")

    def close(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.close(timeout=10)


def client_config() -> dict:
    """FAST_FAILURE as dask config, for the client in this process."""
    def value(text):
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text

    return {k.removeprefix("DASK_").lower().replace("__", "."): value(v) for k, v in FAST_FAILURE.items()}


def soak(workdir: str, schedule=None, *, operations: int = 30, seed: int = 0, store: str = "local",
         env: dict | None = None, log=print, **kw) -> Tally:
    """Start the hosts and the cluster, run the soak, stop them. ``schedule``: the operations
    and faults; default, ``operations`` random ones."""
    with dask.config.set(client_config()), Network(HOSTS, logs=os.path.join(str(workdir), "logs")) as net:
        cluster = HostCluster(net, store="store" if store == "s3" else None, env=env)
        s = Soak(net, cluster, workdir, store=store, seed=seed, log=log, **kw)
        try:
            s.run(schedule if schedule is not None else s.schedule(operations))
        finally:
            s.close()
        return s.tally
