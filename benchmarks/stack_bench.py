"""`exaone-lora bench --stack poc`: the benchmark suites against a stack's vLLM server, recorded as evidence.

The same suites as the H100 runs (`benchmarks.suites`), at the sizes asked for (tiny by default: a few requests,
minutes on a CPU stand-in), loading the given adapter directories under names of the run's own (so serving
versions are never touched), then unloading them. Passed = every request of every suite answered. The record
carries what the server served (`service.served.measure`), so promotion can compare it with the stack's pins.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.suites import SUITES, SuiteSizes, Target, run_all
from exaone_lora.evidence import Measured, record_evidence
from exaone_lora.spec import DeploymentSpec

SIZES = {"tiny": SuiteSizes.tiny, "full": SuiteSizes.full}
# The suites a stack check runs unless told otherwise: the seed's two tests and the saturation levels
# (whose aggregate tok/s `exaone-lora infra costs` reads back from this evidence).
DEFAULT_SUITES: tuple[str, ...] = ("test1", "test2", "saturation")


@dataclass(frozen=True)
class StackBench:
    result: dict[str, Any]
    passed: bool
    errors: list[str]
    evidence: Path


def _errors(value: Any, where: str = "") -> Iterator[str]:
    """Every non-empty `errors` list anywhere in a suite's result, with where it was."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "errors" and isinstance(item, list) and item:
                yield f"{where or 'result'}: {'; '.join(map(str, item[:3]))}"
            else:
                yield from _errors(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _errors(item, f"{where}[{index}]")


def parse_suites(text: str) -> tuple[str, ...]:
    chosen = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = sorted(set(chosen) - set(SUITES))
    if not chosen or unknown:
        raise ValueError(f"--suites: unknown {unknown or 'nothing given'}; known: {', '.join(SUITES)}")
    return chosen


def bench_stack(spec: DeploymentSpec, url: str, adapter_dirs: dict[str, str], measured: Measured, root: Path, *,
                size: str = "tiny", suites: tuple[str, ...] = DEFAULT_SUITES) -> StackBench:
    if size not in SIZES:
        raise ValueError(f"--size must be one of {', '.join(SIZES)} (got {size!r})")
    target = Target(url=url, base_model=spec.model.served_name, adapter_dirs=adapter_dirs,
                    name_prefix=f"bench{secrets.token_hex(3)}-")
    result = run_all(target, SIZES[size](), server_argv=[], variant=f"stack:{spec.stack}", suites=suites,
                     max_loras=spec.max_loras, extra={"size": size, "stack": spec.stack})
    errors = list(_errors(result["suites"]))
    passed = not errors
    path = record_evidence(root, spec, "benchmark", passed, result, measured)
    return StackBench(result, passed, errors, path)


__all__ = ["DEFAULT_SUITES", "SIZES", "StackBench", "bench_stack", "parse_suites"]
