"""Session fixtures for the Fabric tasks: the booted test host, the stack it serves, a bootstrapped host."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from exaone_lora.checkpoints import Checkpoint
from exaone_lora.local.testhost import TestHost, boot_testhost
from exaone_lora.spec import DeploymentSpec, load_spec
from provisioning.bootstrap import bootstrap
from provisioning.results import Change
from tests.support.processes import REPO, free_port

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
    import time

    messages: list[str] = []
    start = time.monotonic()
    changes = bootstrap(testhost.connection, host_spec, wheelhouse=testhost.wheelhouse, model_path=tiny_checkpoint.path,
                        report=messages.append)
    return Bootstrapped(testhost, changes, time.monotonic() - start, messages)
