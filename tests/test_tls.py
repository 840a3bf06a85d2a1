"""TLS on the cluster-script path: ``dask scheduler --protocol tls`` and ``dask worker`` processes
with a throwaway CA, the CLI's ``--tls-ca-file/--tls-cert/--tls-key``, clients refused without the
cluster's certificate, and bad TLS input refused before any connection or work."""

from __future__ import annotations

import gc
import json
import os
import socket
import ssl
import subprocess
import sys

import lance
import pytest
from distributed import Client
from distributed.security import Security

import dask_lance_index as dli
from dask_lance_index.cli import main
from dask_lance_index.evaluation import exact_knn, recall_at_k, search
from dask_lance_index.plan import IndexPlan
from dask_lance_index.runtime import connect, tls_security

from .certs import make_ca
from .conftest import dask_processes, index_dirs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> dict:
    """``{"good": files of the cluster's CA, "other": files of another CA}``."""
    d = tmp_path_factory.mktemp("tls")
    return {"good": make_ca(d, "cluster"), "other": make_ca(d, "other")}


@pytest.fixture(scope="module")
def tls_cluster(certs, tmp_path_factory):
    """``dask scheduler --protocol tls`` and two ``dask worker`` processes with the cluster's certificate."""
    with dask_processes(tmp_path_factory.mktemp("tls-logs"), workers=2, tls=certs["good"]) as cluster:
        yield cluster


def _tls_options(files: dict) -> list[str]:
    return ["--tls-ca-file", files["ca"], "--tls-cert", files["cert"], "--tls-key", files["key"]]


def _security(ca: str, cert: str, key: str | None) -> Security:
    return Security(tls_ca_file=ca, tls_client_cert=cert, tls_client_key=key, require_encryption=True)


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m dask_lance_index ARGS`` with this checkout first on the path."""
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "dask_lance_index", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


# -- (a) a build through the TLS scheduler ---------------------------------------------------------


def test_cli_build_through_a_tls_scheduler(dataset_uri, tls_cluster, certs, vectors, queries):
    proc = cli("build", dataset_uri, "--index-type", "IVF_PQ", "--num-partitions", "8", "--num-sub-vectors", "8",
               "--seed", "1", "--scheduler", tls_cluster.address, *_tls_options(certs["good"]), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["cluster"]["scheduler"] == tls_cluster.address and out["cluster"]["workers"] == 2
    assert out["result"]["version"] == 2 and out["result"]["num_rows_indexed"] == len(vectors)
    ds = lance.dataset(dataset_uri)
    assert {s.uuid for d in ds.describe_indices() for s in d.segments} == set(out["result"]["segments"])
    assert index_dirs(dataset_uri) == set(out["result"]["segments"])
    truth = exact_knn(vectors, queries, 10, "l2")
    found, _ = search(ds, "vector", queries, 10, nprobes=8, refine_factor=5)
    assert recall_at_k(found, truth) > 0.9


def test_python_connect_with_security_and_a_cert_file_holding_its_key(tls_cluster, certs, dataset_uri, capsys):
    good = certs["good"]
    with connect(tls_cluster.address, security=_security(good["ca"], good["cert"], good["key"]), timeout=30) as c:
        assert len(c.scheduler_info()["workers"]) == 2
    # dask allows the key appended to the certificate file, and so does the CLI (plan asks the cluster)
    with connect(tls_cluster.address, security=_security(good["ca"], good["both"], None), timeout=30) as c:
        assert c.submit(sum, [1, 2]).result() == 3
    assert main(["plan", dataset_uri, "--num-partitions", "8", "--scheduler", tls_cluster.address, "--json",
                 "--tls-ca-file", good["ca"], "--tls-cert", good["both"]]) == 0
    assert IndexPlan.from_json(capsys.readouterr().out).num_tasks == 2  # sized for the cluster's 2 worker threads


# -- (b) clients without the cluster's certificate are refused -------------------------------------


def _raw_tls(port: int, ctx: ssl.SSLContext) -> str:
    """A TLS connection to the scheduler: "accepted" when the scheduler talks on it or keeps it
    open, "refused: ..." when it ends it."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, ctx.wrap_socket(raw) as tls:
            tls.settimeout(1)
            # TLS 1.3: a refused certificate ends the connection after the handshake; an accepted
            # one gets the scheduler's first message (dask's comm handshake)
            return "accepted" if tls.recv(1) else "refused: closed"
    except TimeoutError:
        return "accepted"
    except (ssl.SSLError, ConnectionError) as exc:
        return f"refused: {exc}"


def test_clients_without_the_certificate_are_refused(dataset_uri, tls_cluster, certs, capsys):
    port = int(tls_cluster.address.rsplit(":", 1)[1])
    # the CLI without TLS options: a clear error before any connection
    assert main(["build", dataset_uri, "--num-partitions", "8", "--scheduler", tls_cluster.address]) == 2
    err = capsys.readouterr().err
    assert f"the scheduler address '{tls_cluster.address}' is TLS" in err
    assert "--tls-ca-file CA.pem --tls-cert CERT.pem --tls-key KEY.pem" in err
    # a plain Client: no TLS settings, no connection
    with pytest.raises(TypeError, match="TLS expects a `ssl_context`"):
        Client(tls_cluster.address, timeout="3s")
    # the half-made client collected now: collected while the next one starts its loop, its
    # __del__ waited on that loop's lock and the test hung (fresh-clone CI, once)
    gc.collect()
    # a Client speaking plain TCP to the TLS port: the scheduler answers only TLS
    with pytest.raises(OSError, match="Connection reset by peer"):
        Client(f"tcp://127.0.0.1:{port}", timeout="3s")
    gc.collect()
    # TLS that trusts the scheduler but shows no certificate: the scheduler ends the connection
    # (the same handshake with the cluster's certificate is accepted: the scheduler waits for a message)
    ctx = ssl.create_default_context(cafile=certs["good"]["ca"])
    ctx.check_hostname = False
    assert _raw_tls(port, ctx).startswith("refused")
    ctx.load_cert_chain(certs["good"]["cert"], certs["good"]["key"])
    assert _raw_tls(port, ctx) == "accepted"
    # a certificate signed by another CA (the client trusts the scheduler's CA): refused
    other = certs["other"]
    with pytest.raises(OSError, match="UNKNOWN_CA|SSLEOFError"):  # the scheduler ends the handshake
        Client(tls_cluster.address, security=_security(certs["good"]["ca"], other["cert"], other["key"]), timeout="3s")
    # the CLI with that certificate: no scheduler answers it (exit 1, with the TLS hint)
    assert main(["plan", dataset_uri, "--num-partitions", "8", "--scheduler", tls_cluster.address,
                 "--connect-timeout", "3", "--tls-ca-file", certs["good"]["ca"], "--tls-cert", other["cert"],
                 "--tls-key", other["key"]]) == 1
    assert "refused this client's certificate" in capsys.readouterr().err
    assert lance.dataset(dataset_uri).version == 1 and not index_dirs(dataset_uri)


# -- (c) bad TLS input: refused before any connection or work --------------------------------------


def _unused_tls_address() -> str:
    """A tls:// address nothing listens on: a check made after connecting would exit 1, not 2."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tls://127.0.0.1:{s.getsockname()[1]}"


def _bad_inputs(good: dict, other: dict, d) -> list[tuple[str, list[str], list[str]]]:
    """``(case, options after the dataset, what the message says)``."""
    dead = _unused_tls_address()
    (d / "garbage.pem").write_text("not a certificate\n")
    (d / "a-directory.pem").mkdir(exist_ok=True)
    missing = str(d / "missing-ca.pem")
    return [
        ("missing CA file", ["--scheduler", dead, "--tls-ca-file", missing, "--tls-cert", good["cert"], "--tls-key",
                             good["key"]], [f"--tls-ca-file {missing!r}: no such file", "Fix: give the path"]),
        ("a directory as key", ["--scheduler", dead, *_tls_options({**good, "key": str(d / "a-directory.pem")})],
         ["--tls-key", "a-directory.pem' is a directory", "Fix: give the path of a PEM file"]),
        ("cert without key", ["--scheduler", dead, "--tls-ca-file", good["ca"], "--tls-cert", good["cert"]],
         [f"--tls-cert {good['cert']!r} holds no private key, and no --tls-key was given", "Fix: pass --tls-key"]),
        ("key without cert", ["--scheduler", dead, "--tls-ca-file", good["ca"], "--tls-key", good["key"]],
         ["TLS needs --tls-cert too", "Fix: pass --tls-ca-file CA.pem --tls-cert CERT.pem --tls-key KEY.pem"]),
        ("no CA", ["--scheduler", dead, "--tls-cert", good["cert"], "--tls-key", good["key"]],
         ["TLS needs --tls-ca-file too", "Fix: pass --tls-ca-file CA.pem"]),
        ("tls:// without options", ["--scheduler", dead],
         [f"the scheduler address '{dead}' is TLS", "Fix: pass --tls-ca-file CA.pem --tls-cert CERT.pem"]),
        ("options with tcp://", ["--scheduler", dead.replace("tls://", "tcp://"), *_tls_options(good)],
         ["is not TLS (tcp://)", "Fix: write the address as tls://HOST:PORT"]),
        ("options with a plain HOST:PORT", ["--scheduler", dead.replace("tls://", ""), *_tls_options(good)],
         ["is not TLS (tcp://)", "Fix: write the address as tls://HOST:PORT"]),
        ("options without --scheduler", _tls_options(good), ["no --scheduler was given", "Fix: pass --scheduler tls://"]),
        ("key of another certificate", ["--scheduler", dead, *_tls_options({**good, "key": other["key"]})],
         ["do not make a TLS context", "Fix: give PEM files, the key that belongs to the certificate"]),
        ("a CA file that is not PEM", ["--scheduler", dead, *_tls_options({**good, "ca": str(d / "garbage.pem")})],
         ["do not make a TLS context", "Fix: give PEM files"]),
    ]


@pytest.mark.parametrize("command", ["build", "plan", "evaluate"])
def test_bad_tls_input_exits_2_before_any_connection_or_work(command, dataset_uri, certs, tmp_path, capsys):
    if command == "evaluate":  # an index to evaluate, so that only the TLS input is wrong
        lance.dataset(dataset_uri).create_index("vector", "IVF_FLAT", num_partitions=4)
    version, indices = lance.dataset(dataset_uri).version, index_dirs(dataset_uri)
    extra = ["--num-partitions", "8"] if command != "evaluate" else []
    for case, options, says in _bad_inputs(certs["good"], certs["other"], tmp_path):
        assert main([command, dataset_uri, *extra, "--connect-timeout", "20", *options]) == 2, case
        err = capsys.readouterr().err
        assert err.startswith("dask-lance-index: error: InvalidInputError: "), (case, err)
        for text in says:
            assert text in err, (case, text, err)
        assert lance.dataset(dataset_uri).version == version and index_dirs(dataset_uri) == indices, case


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode")
def test_an_unreadable_cert_file_exits_2(dataset_uri, certs, tmp_path, capsys):
    cert = tmp_path / "cert.pem"
    cert.write_bytes(open(certs["good"]["cert"], "rb").read())
    cert.chmod(0)
    opts = _tls_options({**certs["good"], "cert": str(cert)})
    assert main(["build", dataset_uri, "--scheduler", _unused_tls_address(), *opts]) == 2
    err = capsys.readouterr().err
    assert f"--tls-cert {str(cert)!r} cannot be read" in err and "Fix: make it readable" in err
    assert lance.dataset(dataset_uri).version == 1 and not index_dirs(dataset_uri)


def test_python_api_tls_errors_name_the_python_settings(dataset_uri, tls_cluster, certs, tmp_path):
    good, other = certs["good"], certs["other"]
    with pytest.raises(dli.InvalidInputError, match="is TLS, and no TLS settings were given.*Fix: pass "
                                                    r"security=Security\(tls_ca_file="):
        connect(tls_cluster.address)
    with pytest.raises(dli.InvalidInputError, match="is TLS.*or a Client made with it as client="):
        dli.create_index(dataset_uri, "vector", "IVF_FLAT", num_partitions=8, client=tls_cluster.address)
    with pytest.raises(dli.InvalidInputError, match=r"is not TLS \(tcp://\)"):
        connect(tls_cluster.address.replace("tls://", "tcp://"), _security(good["ca"], good["cert"], good["key"]))
    missing = str(tmp_path / "nope.pem")
    with pytest.raises(dli.InvalidInputError, match=f"tls_ca_file '{missing}': no such file"):
        connect(tls_cluster.address, _security(missing, good["cert"], good["key"]))
    with pytest.raises(dli.InvalidInputError, match="tls_client_cert .* holds no private key, and no tls_client_key"):
        connect(tls_cluster.address, _security(good["ca"], good["cert"], None))
    with pytest.raises(dli.InvalidInputError, match="do not make a TLS context"):
        connect(tls_cluster.address, _security(good["ca"], good["cert"], other["key"]))
    with pytest.raises(dli.InvalidInputError, match=r"the TLS files \(tls_ca_file, .*do not make a TLS context"):
        tls_security(good["ca"], good["cert"], other["key"])
    made = tls_security(good["ca"], good["cert"], good["key"])  # what the CLI's options make
    assert made.require_encryption is True and made.get_tls_config_for_role("client") == {
        "ca_file": good["ca"], "ciphers": None, "cert": good["cert"], "key": good["key"]}
    assert lance.dataset(dataset_uri).version == 1 and not index_dirs(dataset_uri)
