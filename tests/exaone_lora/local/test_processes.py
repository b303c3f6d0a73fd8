"""Helpers that start the local servers: CPU slots for vLLM servers that run side by side."""

from __future__ import annotations

import os

from tests.support.processes import cpu_slot


def test_cpu_slots_are_allowed_cpus_and_wrap_around() -> None:
    allowed = sorted(os.sched_getaffinity(0))
    slots = [cpu_slot(i) for i in range(2 * len(allowed))]
    assert slots == allowed + allowed
    if len(allowed) > 1:
        assert cpu_slot(0) != cpu_slot(1)  # two servers side by side compute on different cores
