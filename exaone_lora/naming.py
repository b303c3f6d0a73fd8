"""Immutable adapter version names: `{domain}-v{N}`, made and parsed in one place (the stack's pins, the
registry's manifests, the gateway and the reconciler all name a version this way)."""

from __future__ import annotations

import re

# The file in each version's folder (registry and host) whose sha256 a stack file pins.
MANIFEST_FILE = "manifest.json"

_VERSION = re.compile(r"^(?P<domain>[a-z0-9][a-z0-9_-]{0,62}?)-v(?P<number>[1-9][0-9]{0,5})$")


def version_name(domain: str, version: int) -> str:
    return f"{domain}-v{version}"


def parse_version_name(name: str) -> tuple[str, int] | None:
    """(domain, N) for `domain-vN`, None for anything else (the base model, foreign adapters)."""
    match = _VERSION.match(name)
    if not match:
        return None
    return match["domain"], int(match["number"])
