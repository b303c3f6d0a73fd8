"""A network of its own for a second test host: a network namespace joined to this machine by a veth pair.

Two hosts of one stack listen on the same service ports (vLLM, the gateway), as two VMs behind a load balancer
do; in this machine's network they would collide. A namespace gives the second host its own loopback and one
private address, `10.231.x.2` on a /30 whose other end (`10.231.x.1`) is this machine's: SSH reaches the host
there, and nothing is routed anywhere else (no default route, no NAT, no forwarding).

The registry (Azurite) listens on this machine's 127.0.0.1, which the namespace cannot see; `forward_into`
listens on the namespace's own 127.0.0.1 at the same port and relays to it, so every host of the stack is given
the one registry location (a loopback connection string), as every VM of a stack is given one account URL.

Needs root and iproute2. `python -m exaone_lora.local.netns forward NETNS PORT` is the relay itself.
"""

from __future__ import annotations

import asyncio
import ctypes
import ipaddress
import itertools
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from exaone_lora.local.processes import INSTALL_HINT, REPO

NETNS_DIR = Path("/run/netns")
# Private /30s for the veth pairs, out of 10.231.0.0/16 (16,384 of them).
SUBNETS = ipaddress.IPv4Network("10.231.0.0/16")
CLONE_NEWNET = 0x40000000  # <sched.h>; os.setns arrives only with Python 3.12
READY = "listening"
_serial = itertools.count()
# The names private_network gives (pid, then a serial): what _remove_stale may delete.
STALE_NETNS = re.compile(r"exaone-[a-z0-9]+-(\d+)x\d+")
STALE_LINK = re.compile(r"ex(\d+)x\d+[hn]")


@dataclass(frozen=True)
class Netns:
    name: str
    outside: str  # this machine's end of the veth (interface name)
    host_address: str  # this machine's address on the /30
    address: str  # the namespace's address on the /30: where its services are reached from here

    @property
    def path(self) -> Path:
        return NETNS_DIR / self.name


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        # e.g. "Operation not permitted": namespaces and veths need root (CAP_NET_ADMIN and CAP_SYS_ADMIN)
        raise RuntimeError(f"`ip {' '.join(args)}` failed (exit {done.returncode}): {done.stderr.strip()}")
    return done


def _free_subnet(seed: int) -> ipaddress.IPv4Network:
    """A /30 that no interface of this machine uses, starting at a pid-derived one (concurrent runs differ)."""
    taken = [ipaddress.IPv4Interface(word.split()[0]).network for word in
             _ip("-o", "-4", "addr", "show").stdout.split(" inet ")[1:]]
    subnets = list(SUBNETS.subnets(new_prefix=30))
    for i in range(len(subnets)):
        candidate = subnets[(seed + i) % len(subnets)]
        if not any(candidate.overlaps(t) for t in taken):
            return candidate
    raise RuntimeError(f"every /30 of {SUBNETS} is in use on this machine")


def _remove_stale() -> None:
    """Namespaces and veths of runs that were killed before their cleanup (their pid is gone): names and /30s
    would otherwise pile up on a machine that runs the tests again and again."""
    namespaces = [line.split()[0] for line in _ip("netns", "list").stdout.splitlines() if line.strip()]
    links = [line.split(":", 2)[1].strip().split("@")[0] for line in _ip("-o", "link", "show").stdout.splitlines()]
    for kind, pattern, names in (("link", STALE_LINK, links), ("netns", STALE_NETNS, namespaces)):
        for name in names:
            match = pattern.fullmatch(name)
            if match and int(match[1]) != os.getpid() and not Path(f"/proc/{match[1]}").exists():
                _ip(kind, "delete", name, check=False)


@contextmanager
def private_network(tag: str) -> Iterator[Netns]:
    """A namespace with loopback up and one veth to this machine; deleted (with the veth) however the block ends."""
    if shutil.which("ip") is None:
        raise RuntimeError(f"ip is not installed: `apt-get install iproute2`; {INSTALL_HINT}")
    # Names carry the pid and a per-process serial: two runs (or two namespaces of one run) never collide.
    # Interface names have at most 15 characters: "ex" + pid (<= 7 digits) + serial + side.
    _remove_stale()
    serial = next(_serial)
    unique = f"{os.getpid()}x{serial}"
    name, outside, inside = f"exaone-{tag}-{unique}", f"ex{unique}h", f"ex{unique}n"
    subnet = _free_subnet(os.getpid() * 8 + serial)
    here, there = (str(a) for a in subnet.hosts())
    net = Netns(name, outside, here, there)
    try:
        _ip("netns", "add", name)
        _ip("link", "add", outside, "type", "veth", "peer", "name", inside, "netns", name)
        _ip("addr", "add", f"{here}/30", "dev", outside)
        _ip("link", "set", outside, "up")
        _ip("-n", name, "addr", "add", f"{there}/30", "dev", inside)
        _ip("-n", name, "link", "set", inside, "up")
        _ip("-n", name, "link", "set", "lo", "up")
        yield net
    finally:
        # Deleting either end removes the pair; the namespace last (it would take its end along anyway).
        _ip("link", "delete", outside, check=False)
        _ip("netns", "delete", name, check=False)


@contextmanager
def forward_into(net: Netns, port: int, log: Path, timeout: float = 30) -> Iterator[subprocess.Popen[bytes]]:
    """Relay the namespace's 127.0.0.1:`port` to this machine's 127.0.0.1:`port` while the block runs."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # this checkout's package, whatever the venv has installed
    with log.open("ab") as out:
        process = subprocess.Popen([sys.executable, "-m", "exaone_lora.local.netns", "forward", str(net.path), str(port)],
                                   cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=out, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    try:
        _wait_ready(process, log, timeout)
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


def _wait_ready(process: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    assert process.stdout is not None
    # The relay prints one line once it listens; a blocking read ends at that line or at its exit.
    with selectors.DefaultSelector() as sel:
        sel.register(process.stdout, selectors.EVENT_READ)
        if sel.select(timeout) and process.stdout.readline().decode().strip() == READY:
            return
    process.kill()
    process.wait(timeout=10)
    raise RuntimeError(f"the relay into the namespace did not start (exit {process.returncode}):\n"
                       f"{log.read_text(errors='replace')[-2000:]}")


# ------------------------------------------------------------------ the relay process


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def listen_in(netns: Path, port: int) -> socket.socket:
    """A listening socket on `netns`'s 127.0.0.1:`port`; this thread is back in its own network afterwards.

    A socket belongs to the namespace it was made in, whatever its process joins later: so one process listens
    in there and connects out here."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(netns, os.O_RDONLY)
    try:
        _setns(target)
        try:
            return socket.create_server(("127.0.0.1", port))
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()  # pass the half-close on: the other direction may still be answering
    except (ConnectionError, OSError):
        writer.close()


async def _relay(server_socket: socket.socket, port: int) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        for w in (writer, up_writer):
            w.close()
            with suppress(ConnectionError, OSError):
                await w.wait_closed()

    server = await asyncio.start_server(handle, sock=server_socket)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(READY, flush=True)
    async with server:
        await stop.wait()


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] != "forward":
        print("usage: python -m exaone_lora.local.netns forward NETNS_PATH PORT", file=sys.stderr)
        return 2
    port = int(argv[2])
    asyncio.run(_relay(listen_in(Path(argv[1]), port), port))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
