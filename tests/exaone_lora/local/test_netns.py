"""The second test host's network: a namespace on a private /30, a relay to this machine's loopback, cleanup."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from exaone_lora.local.netns import Netns, forward_into, private_network
from tests.support.processes import free_port


def _in(net: Netns, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", net.name, *argv], capture_output=True, text=True, timeout=60)


# An HTTP GET from inside the namespace (this Python: no curl needed): the status, or "refused".
GET = ("import sys, urllib.request\n"
       "try:\n    print(urllib.request.urlopen(sys.argv[1], timeout=10).status)\n"
       "except OSError:\n    print('refused')\n")


def _names() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout + \
        subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout


@pytest.fixture
def loopback_server() -> Iterator[int]:
    """An HTTP server on this machine's 127.0.0.1 only, as Azurite is."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_the_namespace_reaches_only_what_is_relayed(loopback_server: int, tmp_path: Path) -> None:
    port = loopback_server
    url = f"http://127.0.0.1:{port}/"
    get = [sys.executable, "-c", GET, url]
    with private_network("t") as net:
        assert net.address.startswith("10.231.") and net.host_address.startswith("10.231.")
        # Its own loopback: this machine's server is not there ...
        assert _in(net, *get).stdout.strip() == "refused"
        # ... the namespace's address answers from here (and this machine's from there) over the veth alone ...
        assert subprocess.run(["ip", "route", "get", net.address], capture_output=True, text=True).stdout.split()[2] \
            == net.outside
        assert "default" not in _in(net, "ip", "route").stdout
        with forward_into(net, port, tmp_path / "relay.log"):
            # ... and the relay makes the same URL work in there, listening on the namespace's loopback only.
            assert _in(net, *get).stdout.strip() == "200"
            listening = [line.split()[3] for line in _in(net, "ss", "-Hltn").stdout.splitlines()]
            assert listening == [f"127.0.0.1:{port}"], listening
        assert _in(net, *get).stdout.strip() == "refused"
        name, outside = net.name, net.outside
    assert name not in _names() and outside not in _names()


def test_the_namespace_goes_when_the_block_fails() -> None:
    with pytest.raises(RuntimeError, match="boom"), private_network("t") as net:
        name, outside = net.name, net.outside
        raise RuntimeError("boom")
    assert name not in _names() and outside not in _names()
