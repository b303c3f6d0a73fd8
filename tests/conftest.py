"""Session fixtures shared by every test: tiny EXAONE checkpoints, a real CPU vLLM server, Azurite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from exaone_lora.checkpoints import Checkpoint, make_adapter, make_checkpoint
from tests.support.processes import REPO, Azurite, RunningProcess, azurite, cpu_slot, vllm_server

# Built once per machine and reused: the factory is deterministic and checks its own recipe.
CACHE = REPO / ".cache" / "test-checkpoints"


@pytest.fixture(scope="session")
def tiny_checkpoint() -> Checkpoint:
    return make_checkpoint(CACHE / "exaone-tiny", "tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_adapters(tiny_checkpoint: Checkpoint) -> dict[str, Path]:
    """Four rank-8 adapters over all seven modules (the seed's four domains), each with other weights."""
    domains = ("medical", "legal", "customer_support", "code")
    return {
        domain: make_adapter(tiny_checkpoint, CACHE / f"lora-{domain}", rank=8, seed=10 + i)
        for i, domain in enumerate(domains)
    }


@pytest.fixture(scope="session")
def logs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def vllm(tiny_checkpoint: Checkpoint, logs_dir: Path) -> Iterator[RunningProcess]:
    """One real vLLM OpenAI server for the whole session: no static adapters, runtime loading on.

    Tests that load adapters must unload what they loaded (or use names of their own) so that
    they do not depend on order. Its worker computes on CPU slot 0; servers a test starts beside it take
    slot 1 (`cpu_slot`).
    """
    with vllm_server(tiny_checkpoint.path, logs_dir / "vllm.log", max_loras=2, max_cpu_loras=4,
                     cpu=cpu_slot(0)) as server:
        yield server


@pytest.fixture(scope="session")
def azurite_blob(tmp_path_factory: pytest.TempPathFactory, logs_dir: Path) -> Iterator[Azurite]:
    with azurite(tmp_path_factory.mktemp("azurite"), logs_dir / "azurite.log") as service:
        yield service
