"""Canary splits, pure parts: the weighted and sticky choice, the gateway's resolution on arrival, and the
reconciler's plan for setting, changing, ending and promoting a canary (no server)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from exaone_lora.canary import CanarySplit, sticky_bucket, takes_candidate, weighted_targets
from service.gateway.core import GatewayCore, RoutingError
from service.gateway.state import Split
from service.reconciler import DesiredAlias, Observed, plan

A = "http://127.0.0.1:1"


def test_weighted_choice_follows_the_weight_with_a_fixed_seed() -> None:
    rng = random.Random(7)
    for weight in (0, 10, 35, 60, 100):
        hits = sum(takes_candidate("medical", weight, None, rng) for _ in range(10_000))
        # 10,000 draws: the binomial's standard deviation is at most 50, so +-250 holds for any seed; with seed 7
        # the counts are fixed anyway.
        assert abs(hits - weight * 100) <= 250, (weight, hits)
    assert sum(takes_candidate("medical", 0, "u", rng) for _ in range(100)) == 0
    assert sum(takes_candidate("medical", 100, "u", rng) for _ in range(100)) == 100


def test_a_sticky_user_stays_on_one_side_and_only_moves_towards_the_candidate() -> None:
    rng = random.Random(1)
    users = [f"user-{i}" for i in range(2000)]
    sides = {w: {u: takes_candidate("medical", w, u, rng) for u in users} for w in (10, 35, 60)}
    for w in (10, 35, 60):
        again = {u: takes_candidate("medical", w, u, rng) for u in users}
        assert again == sides[w]  # the same user, the same side, whatever rng draws
        assert abs(sum(again.values()) - w * 20) <= 150  # ~w % of the users
    assert all(sides[35][u] for u in users if sides[10][u])  # on the candidate at 10 % -> still there at 35 %
    assert all(sides[60][u] for u in users if sides[35][u])
    assert 0 <= sticky_bucket("medical", "x") < 100 and sticky_bucket("medical", "x") != sticky_bucket("legal", "x")


def test_weighted_targets_sum_to_100_and_leave_zero_weights_out() -> None:
    assert weighted_targets("medical-v3", None, 0) == [("medical-v3", 100)]
    assert weighted_targets("medical-v3", "medical-v4", 10) == [("medical-v3", 90), ("medical-v4", 10)]
    assert weighted_targets("medical-v3", "medical-v4", 0) == [("medical-v3", 100)]
    assert weighted_targets("medical-v3", "medical-v4", 100) == [("medical-v4", 100)]
    with pytest.raises(ValueError, match=r"0\.\.100"):
        weighted_targets("medical-v3", "medical-v4", 101)


def _core(seed: int = 3) -> GatewayCore:
    core = GatewayCore.for_upstreams("exaone", [A])
    core.rng = random.Random(seed)
    core.replicas[0].loaded = {"medical-v1", "medical-v2"}
    core.replicas[0].base = ("exaone",)
    core.switch_alias("medical", "medical-v1")
    return core


def test_the_gateway_resolves_each_request_once_by_weight_and_sticky_user() -> None:
    core = _core()
    core.set_split("medical", "medical-v2", 25, shadow=50)
    labels = Counter(core.resolve("medical").label for _ in range(4000))
    assert abs(labels["medical-v2"] - 1000) <= 120 and labels["medical-v1"] + labels["medical-v2"] == 4000
    routes = [core.resolve("medical") for _ in range(4000)]
    shadows = [r for r in routes if r.shadow is not None]
    assert all(r.label == "medical-v1" and r.shadow == "medical-v2" for r in shadows)  # only the stable side
    assert abs(len(shadows) - 1500) <= 150  # 50 % of the ~75 % that stayed
    core.set_split("medical", "medical-v2", 50, sticky="user")
    first = {u: core.resolve("medical", u).label for u in ("ann", "bob", "cy", "dee", "eve", "fay")}
    assert all(core.resolve("medical", u).label == first[u] for u in first for _ in range(20))
    core.clear_split("medical")
    assert {core.resolve("medical").label for _ in range(50)} == {"medical-v1"}


def test_a_split_is_refused_for_another_domain_an_unloaded_version_or_a_bad_weight() -> None:
    core = _core()
    with pytest.raises(RoutingError, match="legal") as exc:
        core.set_split("medical", "legal-v1", 10)
    assert exc.value.code == "alias_domain_mismatch"
    with pytest.raises(RoutingError) as exc:
        core.set_split("medical", "medical-v3", 10)
    assert exc.value.code == "version_not_loaded"
    with pytest.raises(RoutingError) as exc:
        core.set_split("medical", "medical-v2", 120)
    assert exc.value.code == "bad_split"
    with pytest.raises(RoutingError) as exc:
        core.set_split("legal", "legal-v2", 10)
    assert exc.value.code in ("unknown_alias", "version_not_loaded")


def test_promotion_ends_the_split_and_the_candidate_cannot_be_drained_while_split() -> None:
    core = _core()
    core.set_split("medical", "medical-v2", 60)
    assert "medical-v2" in core.aliases.pointed_names()
    core.switch_alias("medical", "medical-v2")
    assert core.aliases.split("medical") is None
    assert {core.resolve("medical").label for _ in range(20)} == {"medical-v2"}


def _desired(canary: CanarySplit | None) -> dict[str, DesiredAlias]:
    return {"medical": DesiredAlias("medical", 1, None, canary)}


def _observed(loaded: set[str], splits: dict[str, Split] | None = None, alias: str = "medical-v1") -> Observed:
    return Observed({A: frozenset(loaded)}, {"medical": alias}, {}, splits or {})


def kinds(p: object) -> list[tuple[str, str]]:
    return [(a.kind, a.name) for a in p.actions]  # type: ignore[attr-defined]


def test_plan_loads_warms_then_sets_a_new_canary() -> None:
    p = plan(_desired(CanarySplit(version=2, weight=10)), _observed({"medical-v1"}), max_cpu_loras=4)
    assert kinds(p) == [("load", "medical-v2"), ("warmup", "medical-v2"), ("split", "medical-v2")]
    assert p.actions[-1].split == Split("medical-v2", 10)


def test_plan_changes_only_the_weight_of_a_running_canary() -> None:
    p = plan(_desired(CanarySplit(version=2, weight=35)), _observed({"medical-v1", "medical-v2"},
                                                                    {"medical": Split("medical-v2", 10)}),
             max_cpu_loras=4)
    assert kinds(p) == [("split", "medical-v2")] and p.actions[0].split == Split("medical-v2", 35)
    same = plan(_desired(CanarySplit(version=2, weight=35)), _observed({"medical-v1", "medical-v2"},
                                                                       {"medical": Split("medical-v2", 35)}),
                max_cpu_loras=4)
    assert same.actions == ()


def test_plan_ends_a_rolled_back_canary_before_anything_is_drained() -> None:
    p = plan(_desired(None), _observed({"medical-v1", "medical-v2"}, {"medical": Split("medical-v2", 35)}),
             max_cpu_loras=1)
    assert kinds(p) == [("unsplit", "medical-v2"), ("drain", "medical-v2"), ("unload", "medical-v2")]


def test_plan_promotes_with_one_switch_that_ends_the_canary() -> None:
    desired = {"medical": DesiredAlias("medical", 2, 1, None)}
    p = plan(desired, _observed({"medical-v1", "medical-v2"}, {"medical": Split("medical-v2", 85)}), max_cpu_loras=4)
    assert kinds(p) == [("warmup", "medical-v2"), ("switch", "medical-v2")]
