"""The gateway's view of adapter version names; the rule itself is `exaone_lora.naming`."""

from __future__ import annotations

from exaone_lora.naming import parse_version_name, version_name

__all__ = ["parse_version_name", "version_name"]
