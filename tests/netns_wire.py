"""A network switch in user space: the wire between the hosts of ``tests/netns.py``.

Each host's network interface is a TAP device whose other end is this process:
it reads every Ethernet frame a host sends, learns which port a MAC address is
behind, and writes the frame to that port (broadcasts and unknown addresses to
every other port). Because every frame passes through here, the test harness can
impair any link the way a real network fails, without kernel support for
``tc netem`` (this kernel has none): hold frames back (delay), drop a share of
them at random (loss), or drop all of them (a cut link, a black hole: no error
reaches either end, TCP just retransmits until its own timeouts).

Run as ``python netns_wire.py CONTROL_SOCKET PORT [PORT ...]``: it creates one
TAP device per port name (in the calling network namespace; the harness then
moves each into its host's namespace, the open file keeps it attached here),
prints ``ready`` and serves one-line JSON commands on the Unix socket:

``{"cmd": "set", "port": NAME | "*", "delay": S, "loss": P, "down": BOOL}``
    impair a link (both directions) or, with ``"*"``, every frame on the switch.
``{"cmd": "stats"}``
    frames forwarded, dropped by loss, dropped on a cut link, per port.
"""

from __future__ import annotations

import fcntl
import heapq
import json
import os
import random
import socket
import struct
import sys
import threading
import time

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
MTU = 65000  # large frames: fewer of them for Python to move


class Link:
    """How one port (or, as ``"*"``, the whole switch) is impaired now."""

    def __init__(self) -> None:
        self.delay = 0.0
        self.loss = 0.0
        self.down = False
        self.forwarded = 0
        self.lost = 0
        self.cut = 0


class Switch:
    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.fds = {}
        for name in names:
            fd = os.open("/dev/net/tun", os.O_RDWR)
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
            self.fds[name] = fd
        self.links = {name: Link() for name in names}
        self.network = Link()
        self.macs: dict[bytes, str] = {}
        self.queue: list = []  # (due, seq, port, frame)
        self.seq = 0
        self.cond = threading.Condition()
        self.rng = random.Random(0)

    # -- forwarding -----------------------------------------------------------------------------
    def _passes(self, links) -> tuple[bool, float]:
        """Whether a frame crossing ``links`` survives, and how long it is held."""
        delay = 0.0
        for link in links:
            if link.down:
                link.cut += 1
                return False, 0.0
            if link.loss and self.rng.random() < link.loss:
                link.lost += 1
                return False, 0.0
            delay += link.delay
        return True, delay

    def _send(self, src: str, dst: str, frame: bytes) -> None:
        with self.cond:
            ok, delay = self._passes((self.links[src], self.network, self.links[dst]))
            if not ok:
                return
            self.links[dst].forwarded += 1
            if delay <= 0 and not self.queue:
                pass  # straight through, below (outside the lock)
            else:
                self.seq += 1
                heapq.heappush(self.queue, (time.monotonic() + delay, self.seq, dst, frame))
                self.cond.notify()
                return
        try:
            os.write(self.fds[dst], frame)
        except OSError:
            pass  # the host's interface is not up yet, or gone: the frame is lost

    def reader(self, src: str) -> None:
        fd = self.fds[src]
        while True:
            try:
                frame = os.read(fd, MTU + 64)
            except OSError:
                time.sleep(0.05)  # the interface is down: nothing to read yet
                continue
            if len(frame) < 14:
                continue
            dst_mac, src_mac = frame[:6], frame[6:12]
            self.macs[src_mac] = src
            port = self.macs.get(dst_mac) if not dst_mac[0] & 1 else None
            targets = [port] if port is not None else [n for n in self.names if n != src]
            for dst in targets:
                if dst != src:
                    self._send(src, dst, frame)

    def sender(self) -> None:
        while True:
            with self.cond:
                while not self.queue or self.queue[0][0] > time.monotonic():
                    self.cond.wait(None if not self.queue else self.queue[0][0] - time.monotonic())
                _, _, dst, frame = heapq.heappop(self.queue)
            try:
                os.write(self.fds[dst], frame)
            except OSError:
                pass

    # -- control --------------------------------------------------------------------------------
    def command(self, msg: dict) -> dict:
        if msg["cmd"] == "set":
            link = self.network if msg["port"] == "*" else self.links[msg["port"]]
            with self.cond:
                for key in ("delay", "loss", "down"):
                    if key in msg:
                        setattr(link, key, type(getattr(link, key))(msg[key]))
            return {"ok": True}
        if msg["cmd"] == "stats":
            every = dict(self.links, **{"*": self.network})
            return {name: {"forwarded": l.forwarded, "lost": l.lost, "cut": l.cut} for name, l in every.items()}
        return {"error": f"unknown command {msg['cmd']!r}"}

    def serve(self, path: str) -> None:
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(path)
        server.listen(8)
        print("ready", flush=True)
        while True:
            conn, _ = server.accept()
            with conn, conn.makefile("rw") as f:
                for line in f:
                    f.write(json.dumps(self.command(json.loads(line))) + "\n")
                    f.flush()


def main(argv: list[str]) -> None:
    control, names = argv[0], argv[1:]
    switch = Switch(names)
    for name in names:
        threading.Thread(target=switch.reader, args=(name,), daemon=True).start()
    threading.Thread(target=switch.sender, daemon=True).start()
    switch.serve(control)


if __name__ == "__main__":
    main(sys.argv[1:])
