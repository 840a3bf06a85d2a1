"""Several hosts on one machine: Linux network namespaces joined by a user-space switch.

Each host is a network namespace with one interface and its own address; every
frame between hosts passes through ``netns_wire.py``, which can delay, drop or
black-hole it per link. The test process (the client) stays in the root
namespace on a port of its own. The file system stays shared, so a local
dataset is the same path on every host, while everything the hosts say to each
other (dask's comms, S3 requests to the object-store host) is real TCP over a
network that can fail.

Used by ``tests/test_hosts.py`` and the soak benchmark::

    with Network(["sched", "w1", "w2", "store"]) as net:
        cluster = HostCluster(net, workers=["w1", "w2"])
        client = cluster.client()
        with net.cut("w1"):
            ...

Needs root (``ip netns``) and ``/dev/net/tun``; :func:`unavailable` says why
not when they are missing, for tests to skip with.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

WIRE = str(Path(__file__).with_name("netns_wire.py"))
BIN = os.path.dirname(sys.executable)

# Short timeouts so a cut link is noticed in seconds, not minutes (dask's defaults: 30 s to
# connect, 300 s of silence on a comm, a worker dropped after 5 minutes without a heartbeat).
FAST_FAILURE = {
    "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "5s",
    "DASK_DISTRIBUTED__COMM__TIMEOUTS__TCP": "12s",  # dask's floor is 11 s
    "DASK_DISTRIBUTED__SCHEDULER__WORKER_TTL": "10s",
    "DASK_DISTRIBUTED__COMM__RETRY__COUNT": "3",
}


_NETWORKS = itertools.count()  # this process's networks: unique interface and namespace names


def unavailable() -> str | None:
    """Why hosts cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add); run the suite as root"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing: TAP devices cannot be made"
    name = f"dliprobe{os.getpid()}"
    probe = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if probe.returncode:
        return f"ip netns add failed: {probe.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


def die_with_parent() -> None:
    """In a child before exec: SIGKILL it when the process that started it dies, so a killed
    test run leaves no switch or dask process behind (Linux's PR_SET_PDEATHSIG)."""
    import ctypes
    import signal

    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1


def remove_stale() -> None:
    """Remove the namespaces of earlier runs whose process is gone (``dli<pid>x<n>-<host>``)."""
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for line in listing.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.fullmatch(r"dli(\d+)x\d+-.+", name)
        if m and not os.path.exists(f"/proc/{m.group(1)}"):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


def _ip(*args: str, ns: str | None = None) -> None:
    cmd = ["ip"] + (["-n", ns] if ns else []) + list(args)
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def free_subnet() -> str:
    """A 10.x.y.0/24 no interface of this machine is on: ``"10.x.y"``."""
    used = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True).stdout
    rng = random.Random()
    while True:
        prefix = f"10.{rng.randint(100, 250)}.{rng.randint(0, 255)}"
        if f" {prefix}." not in used:
            return prefix


class Network:
    """Hosts (network namespaces) on one switch; the caller is host ``"client"``.

    Parameters
    ----------
    hosts
        Host names; each gets a namespace, an interface and an address.
    logs
        Folder of every host process's log (``<host>-<name>.log``); a temporary one by default.
    """

    def __init__(self, hosts: list[str], logs: str | os.PathLike | None = None) -> None:
        remove_stale()
        n = next(_NETWORKS)
        self.tag = f"{os.getpid()}x{n}"
        self.hosts = list(hosts)
        self.prefix = free_subnet()
        self.addresses = {"client": f"{self.prefix}.1"}
        self.addresses.update({h: f"{self.prefix}.{i + 2}" for i, h in enumerate(self.hosts)})
        # Interface names have at most 15 characters: dl<pid, 5 digits><n, 2 digits>p<i>.
        self.ports = {h: f"dl{os.getpid() % 100000:05d}{n % 100:02d}p{i}" for i, h in enumerate(["client"] + self.hosts)}
        self.namespaces = {h: f"dli{self.tag}-{h}" for h in self.hosts}  # dli<pid>x<n>-<host>
        self.logs = Path(logs or tempfile.mkdtemp(prefix="dli-hosts-"))
        self.logs.mkdir(parents=True, exist_ok=True)
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self._control = str(self.logs / "wire.sock")
        self._wire = None
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._control)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # lance warns in a forked child; this one only execs
            self._wire = subprocess.Popen(
                [sys.executable, WIRE, self._control, *self.ports.values()],
                stdout=subprocess.PIPE, stderr=open(self.logs / "wire.log", "w"), text=True,
                preexec_fn=die_with_parent,
            )
        if self._wire.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the switch did not start; see {self.logs / 'wire.log'}")
        for host, ns in self.namespaces.items():
            _ip("netns", "add", ns)
            _ip("link", "set", self.ports[host], "netns", ns)
            _ip("link", "set", "lo", "up", ns=ns)
        for host, port in self.ports.items():
            ns = self.namespaces.get(host)
            _ip("link", "set", port, "mtu", "65000", ns=ns)
            _ip("addr", "add", f"{self.addresses[host]}/24", "dev", port, ns=ns)
            _ip("link", "set", port, "up", ns=ns)

    # -- processes on hosts ---------------------------------------------------------------------
    def start(self, host: str, name: str, argv: list[str], env: dict | None = None) -> subprocess.Popen:
        """Start ``argv`` on ``host``; its output goes to ``<logs>/<host>-<name>.log``."""
        log = open(self.logs / f"{host}-{name}.log", "a")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # lance warns in a forked child; this one only execs
            proc = subprocess.Popen(["ip", "netns", "exec", self.namespaces[host], *argv],
                                    stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=die_with_parent)
        log.close()
        self.procs.append((host, proc))
        return proc

    def wait_for_port(self, host: str, port: int, timeout: float = 60.0) -> None:
        """Until ``host:port`` accepts a TCP connection from the client's side of the switch."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection((self.addresses[host], port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"nothing listens on {host} ({self.addresses[host]}:{port}) "
                                       f"after {timeout:.0f} s; see the logs in {self.logs}") from None
                time.sleep(0.1)

    # -- the network ----------------------------------------------------------------------------
    def _command(self, msg: dict) -> dict:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(self._control)
            with s.makefile("rw") as f:
                f.write(json.dumps(msg) + "\n")
                f.flush()
                return json.loads(f.readline())

    def impair(self, host: str = "*", *, delay: float = 0.0, loss: float = 0.0, down: bool = False) -> None:
        """Set ``host``'s link (both directions; ``"*"``: every frame) to ``delay`` seconds,
        ``loss`` (a share of frames dropped at random) and ``down`` (every frame dropped)."""
        port = "*" if host == "*" else self.ports[host]
        self._command({"cmd": "set", "port": port, "delay": delay, "loss": loss, "down": down})

    @contextlib.contextmanager
    def cut(self, host: str):
        """``host``'s link dropped whole while the block runs (a black hole: no reset, no error)."""
        self.impair(host, down=True)
        try:
            yield
        finally:
            self.impair(host)

    def stats(self) -> dict:
        """Frames forwarded, lost and cut, per host (``"*"``: the switch)."""
        names = {port: host for host, port in self.ports.items()}
        return {names.get(k, k): v for k, v in self._command({"cmd": "stats"}).items()}

    def log_text(self) -> dict[str, str]:
        """Every host process's log: ``{file name: text}``."""
        return {p.name: p.read_text(errors="replace") for p in sorted(self.logs.glob("*.log"))}

    def close(self) -> None:
        for _, proc in self.procs[::-1]:
            if proc.poll() is None:
                proc.kill()
        for _, proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        for ns in self.namespaces.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        if self._wire is not None:
            self._wire.kill()
            self._wire.wait(10)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._control)

    def __enter__(self) -> "Network":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class HostCluster:
    """``dask scheduler`` and ``dask worker`` processes on the hosts of ``net``, started as a
    cluster script starts them; optionally an S3 server (moto) on a host of its own.

    Parameters
    ----------
    net
        The hosts.
    scheduler, workers, store
        Host names: the scheduler's, one worker process per worker host, the object store's
        (None: no store).
    env
        Environment of every process (``FAST_FAILURE`` timeouts are added).
    worker_args
        Extra ``dask worker`` options.
    tls
        ``{"ca", "cert", "key"}`` files: every process speaks TLS with them (as ``dask scheduler
        --protocol tls --tls-ca-file --tls-cert --tls-key``), and so does :meth:`client`.
    """

    SCHEDULER_PORT = 8786
    STORE_PORT = 5000

    def __init__(self, net: Network, scheduler: str = "sched", workers: tuple[str, ...] = ("w1", "w2"),
                 store: str | None = None, env: dict | None = None, worker_args: tuple[str, ...] = (),
                 tls: dict | None = None) -> None:
        self.net = net
        self.scheduler_host = scheduler
        self.worker_hosts = list(workers)
        self.store_host = store
        self.env = dict(env if env is not None else os.environ, **FAST_FAILURE)
        self.tls = tls
        self.tls_args = ["--tls-ca-file", tls["ca"], "--tls-cert", tls["cert"], "--tls-key", tls["key"]] if tls else []
        self.worker_args = list(worker_args) + self.tls_args
        scheme = "tls" if tls else "tcp"
        self.address = f"{scheme}://{net.addresses[scheduler]}:{self.SCHEDULER_PORT}"
        self.scheduler = None
        self.workers: dict[str, subprocess.Popen] = {}
        self.store = None
        if store is not None:
            self.start_store()
        self.start_scheduler()
        for host in self.worker_hosts:
            self.start_worker(host)

    def start_scheduler(self) -> None:
        host = self.scheduler_host
        self.scheduler = self.net.start(host, "scheduler", [
            os.path.join(BIN, "dask"), "scheduler", "--host", self.net.addresses[host],
            "--port", str(self.SCHEDULER_PORT), "--no-dashboard",
            *(["--protocol", "tls", *self.tls_args] if self.tls else [])], env=self.env)
        self.net.wait_for_port(host, self.SCHEDULER_PORT)

    def kill_scheduler(self) -> None:
        self.scheduler.kill()
        self.scheduler.wait(10)

    def start_worker(self, host: str) -> None:
        self.workers[host] = self.net.start(host, "worker", [
            os.path.join(BIN, "dask"), "worker", self.address, "--host", self.net.addresses[host],
            "--nthreads", "1", "--no-dashboard", "--memory-limit", "4GB", *self.worker_args], env=self.env)

    def restart_worker(self, host: str) -> None:
        """Stop ``host``'s worker if it still runs, and start it again (what a supervisor does)."""
        proc = self.workers.get(host)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
        self.start_worker(host)

    def start_store(self) -> None:
        host = self.store_host
        self.store = self.net.start(host, "store", [
            sys.executable, "-m", "moto.server", "-H", self.net.addresses[host], "-p", str(self.STORE_PORT)],
            env=self.env)
        self.net.wait_for_port(host, self.STORE_PORT)

    @property
    def store_endpoint(self) -> str:
        return f"http://{self.net.addresses[self.store_host]}:{self.STORE_PORT}"

    def client(self, timeout: float = 60.0):
        """A ``distributed.Client`` from the client host, once every worker has joined."""
        from distributed import Client

        security = None
        if self.tls:
            from distributed.security import Security

            security = Security(tls_ca_file=self.tls["ca"], tls_client_cert=self.tls["cert"],
                                tls_client_key=self.tls["key"], require_encryption=True)
        client = Client(self.address, timeout=f"{timeout}s", security=security)
        client.wait_for_workers(len(self.worker_hosts), timeout=timeout)
        return client
