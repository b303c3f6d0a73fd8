"""Session fixtures for the Fabric tasks: the booted test host, the stack it serves, a bootstrapped host, and a
second host of the same stack in a network of its own (prod-large: two VMs behind the load balancer)."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from exaone_lora.checkpoints import Checkpoint
from exaone_lora.local.netns import forward_into, private_network
from exaone_lora.local.testhost import TestHost, boot_testhost
from exaone_lora.spec import DeploymentSpec, load_spec
from provisioning import units
from provisioning.bootstrap import bootstrap
from provisioning.remote import sh
from provisioning.results import Change
from tests.support.processes import REPO, Azurite, free_port

# The booted host, for failure messages that show its journal.
CURRENT_HOST: list[TestHost] = []


@pytest.fixture(scope="session")
def testhost(tmp_path_factory: pytest.TempPathFactory, logs_dir: Path) -> Iterator[TestHost]:
    with boot_testhost(tmp_path_factory.mktemp("testhost"), logs_dir / "testhost.log") as host:
        CURRENT_HOST.append(host)
        try:
            yield host
        finally:
            CURRENT_HOST.clear()


@pytest.fixture(scope="session")
def stack_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The dev stack on free ports (the host shares this machine's network), vLLM behind the gateway as shipped."""
    root = tmp_path_factory.mktemp("stack")
    data = yaml.safe_load((REPO / "Pulumi.dev.yaml").read_text())
    data["config"]["exaone-lora:port"] = free_port()
    data["config"]["exaone-lora:gateway"] = {"enginePort": free_port(), "adminPort": free_port()}
    data["config"]["exaone-lora:monitoring"] = {"prometheusPort": free_port(), "alertmanager": {"port": free_port()}}
    (root / "Pulumi.dev.yaml").write_text(yaml.safe_dump(data))
    return root


@pytest.fixture(scope="session")
def host_spec(stack_root: Path) -> DeploymentSpec:
    return load_spec("dev", stack_root)


@dataclass
class Bootstrapped:
    host: TestHost
    first: list[Change]
    seconds: float
    messages: list[str]


@pytest.fixture(scope="session")
def bootstrapped(testhost: TestHost, host_spec: DeploymentSpec, tiny_checkpoint: Checkpoint) -> Bootstrapped:
    messages: list[str] = []
    start = time.monotonic()
    changes = bootstrap(testhost.connection, host_spec, wheelhouse=testhost.wheelhouse, model_path=tiny_checkpoint.path,
                        report=messages.append)
    return Bootstrapped(testhost, changes, time.monotonic() - start, messages)


APT_ARCHIVES = "/var/cache/apt/archives"


def _same_image(first: TestHost, workdir: Path) -> None:
    """What a second VM of the stack shares with the first before its own bootstrap: the operator's SSH key, the
    image (here: the first host's vLLM venv under /opt, ~10 s to copy instead of minutes to install), and the
    packages bootstrap installed there (the second host has no route to a Debian mirror: its network is the
    namespace's /30 alone)."""
    workdir.mkdir(parents=True, exist_ok=True)
    for name in (first.key.name, first.key.name + ".pub"):
        shutil.copy2(first.workdir / name, workdir / name)
    subprocess.run(["cp", "-a", "--reflink=auto", str(first.workdir / "opt"), str(workdir / "opt")], check=True,
                   timeout=900)
    debs = workdir / "debs"
    debs.mkdir()
    c = first.connection
    for name in c.run(f"cd {APT_ARCHIVES} && ls -1 -- *.deb", hide=True).stdout.split():
        c.get(f"{APT_ARCHIVES}/{name}", str(debs / name))


def _install_debs(host: TestHost) -> None:
    debs = sorted((host.workdir / "debs").iterdir())
    assert debs, "the first host's bootstrap downloaded no packages"
    c = host.connection
    c.run("mkdir -p /root/debs", hide=True)
    for deb in debs:
        c.put(str(deb), f"/root/debs/{deb.name}")
    # One dpkg call for the whole set: it configures them in dependency order, offline.
    sh(c, "DEBIAN_FRONTEND=noninteractive dpkg -i /root/debs/*.deb >/dev/null && rm -rf /root/debs", timeout=900)


# Module scope: only test_host.py deploys to two hosts, and its ~2.3 GB of memory is then free for the rest.
@pytest.fixture(scope="module")
def second_host(bootstrapped: Bootstrapped, host_spec: DeploymentSpec, tiny_checkpoint: Checkpoint,
                azurite_blob: Azurite, tmp_path_factory: pytest.TempPathFactory, logs_dir: Path) -> Iterator[Bootstrapped]:
    """prod-large's second VM: the same stack (the same service ports) on a host booted in a network namespace of
    its own, reached at its address there; bootstrapped and serving (vLLM behind the gateway) like the first.

    The registry is the one the first host reads: the same loopback connection string, relayed from the
    namespace's 127.0.0.1 to Azurite's port here (`forward_into`)."""
    start = time.monotonic()
    workdir = tmp_path_factory.mktemp("testhost2")
    _same_image(bootstrapped.host, workdir)
    log = logs_dir / "testhost2.log"
    azurite_port = urlsplit(azurite_blob.blob_url).port
    assert azurite_port is not None, azurite_blob.blob_url
    try:
        with private_network("th2") as net, forward_into(net, azurite_port, logs_dir / "testhost2-relay.log"), \
                boot_testhost(workdir, log, network=net) as host:
            _install_debs(host)
            messages: list[str] = []
            changes = bootstrap(host.connection, host_spec, wheelhouse=host.wheelhouse,
                                model_path=tiny_checkpoint.path, report=messages.append)
            units.install_service(host.connection, host_spec, health_timeout=600)
            seconds = time.monotonic() - start
            print(f"second test host at {host.address}: image, boot, bootstrap and install-service in {seconds:.0f} s")
            yield Bootstrapped(host, changes, seconds, messages)
    finally:
        # The copied venv tells nothing about a failure (the logs do): a kept temporary directory of a failed run
        # should not hold a second 3.5 GB.
        shutil.rmtree(workdir / "opt", ignore_errors=True)
