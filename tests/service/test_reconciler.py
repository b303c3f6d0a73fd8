"""The reconciler's planning, pure (no server): idempotence, LRU eviction, crash recovery, replica drift."""

from __future__ import annotations

import asyncio

from service.reconciler import Action, DesiredAlias, MemoryAliases, Observed, desired_from_mapping, desired_from_registry, plan

A, B = "http://127.0.0.1:1", "http://127.0.0.1:2"


def obs(replicas: dict[str, set[str]], aliases: dict[str, str] | None = None,
        last_used: dict[str, float] | None = None) -> Observed:
    return Observed({u: frozenset(n) for u, n in replicas.items()}, aliases or {}, last_used or {})


def kinds(p: object) -> list[tuple[str, str, str | None]]:
    return [(a.kind, a.name, a.replica or a.alias) for a in p.actions]  # type: ignore[attr-defined]


def test_fresh_deploy_loads_warms_then_switches_on_every_replica() -> None:
    p = plan(desired_from_mapping({"medical": 1}), obs({A: set(), B: set()}), max_cpu_loras=4)
    assert kinds(p) == [("load", "medical-v1", A), ("load", "medical-v1", B), ("warmup", "medical-v1", A),
                        ("warmup", "medical-v1", B), ("switch", "medical-v1", "medical")]


def test_converged_state_plans_nothing() -> None:
    state = obs({A: {"medical-v2", "medical-v1"}, B: {"medical-v2", "medical-v1"}}, {"medical": "medical-v2"})
    p = plan(desired_from_mapping({"medical": (2, 1)}), state, max_cpu_loras=4)
    assert p.actions == () and p.keep == ("medical-v1",)


def test_deploy_keeps_the_previous_version_for_rollback_and_evicts_lru() -> None:
    state = obs({A: {"medical-v1", "medical-v2", "legal-v1", "legal-v2"}},
                {"medical": "medical-v2", "legal": "legal-v2"}, last_used={"legal-v1": 50.0})
    # Capacity 4: medical-v3 and legal-v2 wanted, one rollback slot besides medical-v2 ... 4 - 2 = 2 kept.
    p = plan(desired_from_mapping({"medical": 3, "legal": 2}), state, max_cpu_loras=4)
    assert p.keep == ("medical-v2", "legal-v1")  # the alias's current version first, then most recently used
    assert p.evict == ("medical-v1",)
    assert kinds(p)[-2:] == [("drain", "medical-v1", None), ("unload", "medical-v1", A)]
    # Capacity 3: only the rollback target of the alias being switched stays.
    p = plan(desired_from_mapping({"medical": 3, "legal": 2}), state, max_cpu_loras=3)
    assert p.keep == ("medical-v2",) and p.evict == ("legal-v1", "medical-v1")


def test_foreign_adapters_are_untouched_but_count_against_capacity() -> None:
    state = obs({A: {"someone-else", "code-v1", "medical-v1"}}, {"medical": "medical-v1"})
    p = plan(desired_from_mapping({"medical": 2}), state, max_cpu_loras=3)
    touched = {a.name for a in p.actions}
    assert "someone-else" not in touched and "code-v1" not in touched  # not managed: code has no alias here
    assert p.evict == ("medical-v1",)  # 3 slots - 2 foreign - 1 wanted = no room for a rollback copy
    assert p.warnings == ()
    crowded = plan(desired_from_mapping({"medical": 2, "legal": 1}), state, max_cpu_loras=3)
    assert crowded.warnings and "exceed max_cpu_loras" in crowded.warnings[0]


def test_after_a_crash_half_way_the_next_plan_finishes_the_job() -> None:
    # Killed after loading v2 on replica A only, before warm-up and switch.
    state = obs({A: {"medical-v1", "medical-v2"}, B: {"medical-v1"}}, {"medical": "medical-v1"})
    p = plan(desired_from_mapping({"medical": 2}), state, max_cpu_loras=4)
    assert kinds(p) == [("load", "medical-v2", B), ("warmup", "medical-v2", A), ("warmup", "medical-v2", B),
                        ("switch", "medical-v2", "medical")]
    # Killed after the switch, before the unload of an evicted version on B.
    state = obs({A: {"medical-v2"}, B: {"medical-v2", "medical-v1"}}, {"medical": "medical-v2"})
    p = plan(desired_from_mapping({"medical": 2}), state, max_cpu_loras=1)
    assert kinds(p) == [("drain", "medical-v1", None), ("unload", "medical-v1", B)]


def test_replicas_that_drifted_apart_get_the_same_adapter_set() -> None:
    state = obs({A: {"medical-v2", "medical-v1"}, B: {"medical-v2"}}, {"medical": "medical-v2"})
    p = plan(desired_from_mapping({"medical": 2}), state, max_cpu_loras=4)
    assert kinds(p) == [("load", "medical-v1", B)]  # the rollback copy too, so a rollback works on both


def test_memory_aliases_refuse_to_drain_a_live_target() -> None:
    sink = MemoryAliases({"medical": "medical-v1"})
    try:
        asyncio.run(sink.drain("medical-v1"))
    except RuntimeError as exc:
        assert "still the target" in str(exc)
    else:
        raise AssertionError("drain of a live alias target must fail")


def test_desired_state_from_registry_alias_history() -> None:
    class FakeAlias:
        def __init__(self, current: int | None, history: list[int]) -> None:
            self.current, self.history, self.canary = current, history, None

    class Registry:
        def domains(self) -> list[str]:
            return ["medical", "legal", "code"]

        def alias(self, domain: str) -> FakeAlias:
            return {"medical": FakeAlias(3, [1, 2, 3]), "legal": FakeAlias(1, [1, 2, 1]), "code": FakeAlias(None, [])}[domain]

    desired = desired_from_registry(Registry())
    assert desired == {"medical": DesiredAlias("medical", 3, 2), "legal": DesiredAlias("legal", 1, 2)}
    assert Action("load", "x").replica is None
