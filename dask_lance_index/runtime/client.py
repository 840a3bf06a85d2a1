"""Which cluster a build runs on: the client given, one reached by address, the current
one, or none (dask's local scheduler); and what a task can ask of the cluster it runs on.
"""

from __future__ import annotations

import ssl
import time

from distributed import Client, default_client, get_worker
from distributed.security import Security

from ..errors import InvalidInputError
from .blas import host_cores

__all__ = ["check_client", "check_security", "connect", "num_workers", "other_hosts", "parallelism",
           "resolve_client", "tls_refused_hint", "tls_security", "wait_for_tasks", "worker_client_or_none"]

# How the Python API names the TLS settings; the command line passes its option names instead.
PYTHON_TLS_NAMES = {"ca": "tls_ca_file", "cert": "tls_client_cert", "key": "tls_client_key",
                    "fix": "pass security=Security(tls_ca_file=..., tls_client_cert=..., tls_client_key=..., "
                           "require_encryption=True) to connect(), or a Client made with it as client="}


def tls_refused_hint(names: dict[str, str] | None = None) -> str:
    """What to add to a failed TLS connection's message: a refused certificate looks the same."""
    names = names or PYTHON_TLS_NAMES
    return (f" With TLS this is also what you see when the scheduler refused this client's certificate or the "
            f"client did not trust the scheduler's: check that {names['cert']} is signed by the cluster's CA and "
            f"that {names['ca']} is that CA.")


def _scheme(address: str) -> str:
    return address.split("://", 1)[0].lower() if "://" in address else "tcp"  # dask's default scheme


def _check_file(path: str, name: str) -> None:
    """``path`` (a PEM file named by the option ``name``) exists and can be read, or a clear error."""
    try:
        with open(path, "rb") as f:
            f.read(1)
    except FileNotFoundError:
        raise InvalidInputError(f"{name} {path!r}: no such file. Fix: give the path of an existing PEM file.") from None
    except IsADirectoryError:
        raise InvalidInputError(f"{name} {path!r} is a directory. Fix: give the path of a PEM file.") from None
    except OSError as exc:
        raise InvalidInputError(
            f"{name} {path!r} cannot be read ({exc.strerror}). Fix: make it readable by this user "
            "(chmod/chown), or give another copy."
        ) from None


def _holds_key(path: str) -> bool:
    with open(path, "rb") as f:
        return b"PRIVATE KEY-----" in f.read()


def tls_security(ca_file: str | None, cert: str | None, key: str | None = None,
                 names: dict[str, str] | None = None) -> Security:
    """The ``Security`` of a TLS client, as ``dask worker --tls-ca-file --tls-cert --tls-key`` makes
    one, with every file checked before any connection.

    Parameters
    ----------
    ca_file : str or None
        The CA certificate(s) that signed the cluster's certificates (PEM).
    cert : str or None
        This client's certificate (PEM); it may hold the private key too.
    key : str or None
        This client's private key (PEM); may be left out when ``cert`` holds it.
    names : dict, optional
        How the caller names the three settings in error messages (keys ``ca``, ``cert``, ``key``,
        and ``fix``: how to give them); the Python names by default.

    Returns
    -------
    distributed.security.Security
        With ``require_encryption=True``.

    Raises
    ------
    InvalidInputError
        A file missing or unreadable, a setting missing (a CA file and a certificate are needed; a
        key unless the certificate file holds it), or files that do not make a TLS context (not PEM,
        a key that does not match the certificate).
    """
    names = names or PYTHON_TLS_NAMES
    _check_settings(ca_file, cert, key, names)
    security = Security(tls_ca_file=ca_file, tls_client_cert=cert, tls_client_key=key, require_encryption=True)
    _check_context(security, names)
    return security


def _check_settings(ca_file: str | None, cert: str | None, key: str | None, names: dict[str, str]) -> None:
    """The files exist and can be read, a CA file and a certificate are given, and a key unless the
    certificate file holds it. Settings holding PEM text (dask allows it) are not files."""
    given = {"ca": ca_file, "cert": cert, "key": key}
    for k, path in given.items():
        if path is not None and "\n" not in path:
            _check_file(path, names[k])
    missing = [names[k] for k in ("ca", "cert") if not given[k]]
    if missing:
        raise InvalidInputError(
            f"TLS needs {' and '.join(missing)} too: the scheduler accepts only clients that show a certificate "
            f"signed by the cluster's CA. Fix: {names['fix']}."
        )
    if key is None and "\n" not in cert and not _holds_key(cert):
        raise InvalidInputError(
            f"{names['cert']} {cert!r} holds no private key, and no {names['key']} was given. Fix: pass "
            f"{names['key']} with the certificate's key file (or append the key to the certificate file)."
        )


def _check_context(security: Security, names: dict[str, str]) -> None:
    """Build the client's TLS context now, so bad PEM files fail before any connection."""
    try:
        security.get_connection_args("client")
    except (ssl.SSLError, ValueError, OSError) as exc:
        raise InvalidInputError(
            f"the TLS files ({names['ca']}, {names['cert']}, {names['key']}) do not make a TLS context "
            f"({type(exc).__name__}: {exc}). Fix: give PEM files, the key that belongs to the certificate, "
            "and the CA certificate that signed the cluster's certificates."
        ) from None


def check_security(address: str, security: Security | None, names: dict[str, str] | None = None) -> Security | None:
    """The ``Security`` to reach ``address`` with, checked before any connection: a ``tls://``
    address needs TLS settings (given, or in dask's configuration), TLS settings need a ``tls://``
    address, and the files they name must exist, be readable and load.

    Parameters
    ----------
    address : str
        The scheduler's address, e.g. ``tls://10.0.0.5:8786``.
    security : distributed.security.Security or None
        The client's TLS settings; None for dask's configuration (``distributed.comm.tls.*``).
    names : dict, optional
        As in :func:`tls_security`.

    Returns
    -------
    distributed.security.Security or None
        What to pass to ``Client(address, security=...)``.
    """
    names = names or PYTHON_TLS_NAMES
    tls = _scheme(address) == "tls"
    configured = security if security is not None else Security()
    has_tls = bool(configured.tls_ca_file or configured.tls_client_cert or configured.tls_client_key)
    if tls and not has_tls:
        raise InvalidInputError(
            f"the scheduler address {address!r} is TLS, and no TLS settings were given: the scheduler "
            f"refuses a client without a certificate signed by the cluster's CA. Fix: {names['fix']}."
        )
    if not tls and security is not None and (has_tls or security.require_encryption):
        raise InvalidInputError(
            f"TLS settings were given, but the scheduler address {address!r} is not TLS ({_scheme(address)}://). "
            f"Fix: write the address as tls://HOST:PORT (a scheduler started with --protocol tls), or drop "
            f"{names['ca']}, {names['cert']} and {names['key']} for a plain tcp:// scheduler."
        )
    if not tls:
        return security
    _check_settings(configured.tls_ca_file, configured.tls_client_cert, configured.tls_client_key, names)
    _check_context(configured, names)
    return security


def connect(address: str, security: Security | None = None, timeout: float | None = None) -> Client:
    """A ``distributed.Client`` for the scheduler at ``address``, or a clear error.

    Parameters
    ----------
    address : str
        The scheduler, e.g. ``tcp://10.0.0.5:8786`` or ``tls://10.0.0.5:8786``.
    security : distributed.security.Security, optional
        TLS settings for a ``tls://`` scheduler (see :func:`tls_security`); without them dask's
        configuration (``distributed.comm.tls.*``) is used. Checked before connecting.
    timeout : float, optional
        Seconds to wait for the scheduler (default: dask's ``distributed.comm.timeouts.connect``).

    Returns
    -------
    distributed.Client

    Raises
    ------
    InvalidInputError
        TLS settings that do not fit the address or name unusable files, or no scheduler answering.
    """
    security = check_security(address, security)
    try:
        # Waits dask's "distributed.comm.timeouts.connect" (30 s by default) unless told.
        return Client(address, security=security, **({"timeout": f"{timeout}s"} if timeout else {}))
    except (OSError, TimeoutError) as exc:
        raise InvalidInputError(
            f"cannot reach a Dask scheduler at {address!r} ({type(exc).__name__}: {exc}). Fix: start "
            "the scheduler (dask scheduler / LocalCluster) or pass the right address, or pass "
            "client=None to build with the local scheduler." + (tls_refused_hint() if _scheme(address) == "tls" else "")
        ) from None


def check_client(client) -> None:
    """A closed or broken client fails here, before any work, not mid-build."""
    status = getattr(client, "status", "running")
    if status != "running":
        raise InvalidInputError(
            f"the Dask client is {status!r}, not running. Fix: pass a connected Client, or "
            "client=None to build with the local scheduler."
        )


def resolve_client(client=None, scheduler: str | None = None):
    """The ``distributed.Client`` to run on: the one given (or one connected to the
    scheduler address given; a ``tls://`` address takes its TLS settings from dask's
    configuration), else the current one, else None. An explicit local ``scheduler`` wins
    over a current client picked up implicitly."""
    if isinstance(client, str):
        return connect(client)
    if client is not None:
        check_client(client)
        return client
    if scheduler is not None:
        return None
    try:
        return default_client()
    except ValueError:
        return None


def parallelism(client) -> int:
    """Worker threads of ``client``'s cluster, or this process's cores without one
    (:func:`.blas.host_cores`: a CPU set that confines the process counts)."""
    if client is not None:
        try:
            return max(1, sum(client.nthreads().values()))
        except Exception:  # a client that cannot answer: plan as for one machine
            pass
    return host_cores()


def worker_client_or_none():
    """The client of the dask worker this task runs in, or None outside a worker."""
    try:
        return get_worker().client
    except ValueError:
        return None


def num_workers(client) -> int:
    return len(client.scheduler_info(n_workers=-1)["workers"])


def other_hosts(client) -> bool:
    """Whether any of the cluster's workers runs on another host than this task's
    worker (hosts by the address workers listen on)."""
    here = _host(get_worker().address)
    return any(_host(addr) != here for addr in client.scheduler_info(n_workers=-1)["workers"])


def _host(address: str) -> str:
    return address.split("://")[-1].rsplit(":", 1)[0]


def wait_for_tasks(client, token: str, timeout: float) -> bool:
    """Wait until no worker executes a task whose key holds ``token``; True if none does."""

    def executing(dask_worker, token=token):
        return [str(ts.key) for ts in dask_worker.state.executing if token in str(ts.key)]

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            running = [k for keys in client.run(executing).values() for k in keys]
        except Exception:  # workers going away: ask again
            running = ["?"]
        if not running:
            return True
        time.sleep(0.2)
    return False
