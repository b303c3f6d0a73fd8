"""The admin listener binds to loopback or one private address: never to every interface, link-local or public."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exaone_lora.local.processes import free_port
from service.gateway import create_gateway
from service.gateway.guards import GuardError, check_admin_host
from service.gateway.server import gateway_in_thread
from tests.support.gateway_replicas import admin_key
from tests.support.processes import REPO

ALLOWED = [ipaddress.ip_network(n) for n in ("127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "::1/128",
                                              "fc00::/7")]


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "169.254.169.254", "fe80::1", "8.8.8.8", "100.64.0.1", "192.0.2.1",
                                  "2001:db8::1", "::ffff:10.0.0.1", "240.0.0.1", "example.internal", ""])
def test_unspecified_public_and_odd_addresses_are_refused(host: str) -> None:
    with pytest.raises(GuardError, match="admin listener"):
        check_admin_host(host)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "10.0.0.4", "172.20.1.2", "192.168.1.10", "::1", "fd00::5"])
def test_loopback_and_private_addresses_are_accepted(host: str) -> None:
    check_admin_host(host)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)))
def test_an_address_is_accepted_exactly_when_loopback_or_private(address: ipaddress.IPv4Address | ipaddress.IPv6Address
                                                                 ) -> None:
    allowed = any(address in network for network in ALLOWED)
    try:
        check_admin_host(str(address))
    except GuardError:
        assert not allowed, address
    else:
        assert allowed and not address.is_unspecified, address


def test_no_server_binds_the_admin_app_on_every_interface() -> None:
    apps = create_gateway(["http://127.0.0.1:9"], admin_key=admin_key())
    with pytest.raises(GuardError, match="every interface"), \
         gateway_in_thread(apps, ("127.0.0.1", free_port()), ("0.0.0.0", free_port())):
        pass


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_cli_refuses_an_unspecified_admin_address(host: str) -> None:
    env = {**os.environ, "EXAONE_GATEWAY_ADMIN_KEY": admin_key(), "COLUMNS": "500", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "service.cli", "gateway", "--upstream", "http://127.0.0.1:9",
                           "--port", str(free_port()), "--admin-host", host, "--admin-port", str(free_port())],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=30)
    assert done.returncode == 2 and "must not bind to every interface" in done.stderr, done.stderr
