"""The alias blob with a canary: old blobs parse, blobs without a canary are written as before, and any state
round-trips (hypothesis over hostile values: huge versions, out-of-range weights are refused with a clear error)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from exaone_lora.canary import CanarySplit
from service.registry import AliasConflictError, AliasState

OLD_BLOB = b'{\n  "domain": "medical",\n  "current": 3,\n  "history": [\n    1,\n    3\n  ]\n}\n'

splits = st.builds(CanarySplit, version=st.integers(1, 10**6), weight=st.integers(0, 100),
                   shadow=st.integers(0, 100), sticky=st.sampled_from([None, "user"]))
states = st.builds(AliasState, domain=st.from_regex(r"[a-z][a-z0-9_]{0,39}", fullmatch=True),
                   current=st.none() | st.integers(1, 10**6), history=st.lists(st.integers(1, 10**6), max_size=20),
                   canary=st.none() | splits)


def test_an_alias_blob_written_before_canaries_parses_and_is_written_byte_for_byte() -> None:
    state = AliasState.model_validate_json(OLD_BLOB)
    assert (state.current, state.history, state.canary) == (3, [1, 3], None)
    assert state.to_bytes() == OLD_BLOB


@given(states)
def test_any_alias_state_round_trips(state: AliasState) -> None:
    assert AliasState.model_validate_json(state.to_bytes()) == state


@given(st.integers(), st.integers(), st.integers(), st.text(max_size=10))
def test_hostile_canary_values_are_refused_by_name(version: int, weight: int, shadow: int, sticky: str) -> None:
    blob = json.dumps({"domain": "medical", "current": 1, "history": [1],
                       "canary": {"version": version, "weight": weight, "shadow": shadow, "sticky": sticky}})
    valid = version >= 1 and 0 <= weight <= 100 and 0 <= shadow <= 100 and sticky == "user"
    if valid:
        assert AliasState.model_validate_json(blob).canary == CanarySplit(version=version, weight=weight,
                                                                          shadow=shadow, sticky="user")
    else:
        with pytest.raises(ValidationError, match="canary"):
            AliasState.model_validate_json(blob)


def test_canary_transitions() -> None:
    state = AliasState(domain="medical", current=3, history=[1, 3])
    with pytest.raises(AliasConflictError, match="already the current version"):
        state.with_canary(CanarySplit(version=3, weight=10))
    with pytest.raises(AliasConflictError, match="no current version"):
        AliasState(domain="medical").with_canary(CanarySplit(version=1, weight=10))
    canary = state.with_canary(CanarySplit(version=4, weight=10))
    assert canary.current == 3 and canary.canary is not None and canary.canary.weight == 10
    assert canary.without_canary() == state
    promoted = canary.switched(4)
    assert (promoted.current, promoted.history, promoted.canary) == (4, [1, 3, 4], None)
    ended = canary.switched(3)  # `adapters alias medical 3` ends a canary, history unchanged
    assert (ended.current, ended.history, ended.canary) == (3, [1, 3], None)
    assert canary.rolled_back().canary is None
