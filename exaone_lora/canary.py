"""A canary split of one alias: the one model of "candidate version, weight, shadow share, sticky key".

The registry's alias blob stores it (`service.registry.AliasState.canary`), the reconciler pushes it to every
gateway, the gateway resolves each request with `takes_candidate`, and the AKS path renders the same split into
the Inference Extension's InferenceModelRewrite weights with `weighted_targets`. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import random
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# Request fields a split may stick on. Only the OpenAI `user` field today: it is what clients already send to name
# an end user, and the gateway's body allow-list passes it through.
StickyKey = Literal["user"]


class CanarySplit(BaseModel):
    """`weight` percent of an alias's requests go to `version` (the candidate), the rest to the alias's current
    version; `shadow` percent of the requests that stay on the current version are also sent to the candidate in the
    background (answers discarded). With `sticky`, a request carrying that field always lands on the same side."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int = Field(ge=1)
    weight: int = Field(default=0, ge=0, le=100)
    shadow: int = Field(default=0, ge=0, le=100)
    sticky: StickyKey | None = None


def weighted_targets(stable: str, candidate: str | None, weight: int) -> list[tuple[str, int]]:
    """[(version name, weight)] summing to 100, zero weights left out (the Inference Extension's weights start at 1;
    the gateway never picks a side at weight 0)."""
    if not 0 <= weight <= 100:
        raise ValueError(f"a canary weight is a percentage in 0..100, got {weight}")
    split = [(stable, 100)] if candidate is None else [(stable, 100 - weight), (candidate, weight)]
    return [(name, w) for name, w in split if w > 0]


def sticky_bucket(alias: str, key: str) -> float:
    """A stable point in [0, 100) for one (alias, key): the same user lands on the same side while the weight does
    not cross it, and moves only one way as the weight grows (a user on the candidate at 10 % stays there at 35 %)."""
    digest = hashlib.sha256(f"{alias}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100


def takes_candidate(alias: str, weight: int, key: str | None, rng: random.Random) -> bool:
    """Whether one request goes to the candidate: by its sticky key's bucket when it has one, else by `rng`."""
    if weight <= 0:
        return False
    if weight >= 100:
        return True
    point = sticky_bucket(alias, key) if key is not None else rng.random() * 100
    return point < weight


def takes_shadow(share: int, rng: random.Random) -> bool:
    return share > 0 and (share >= 100 or rng.random() * 100 < share)
