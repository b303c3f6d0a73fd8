"""The stack outputs file: the JSON object `pulumi stack output --json` writes, read by the Fabric tasks.

Secrets appear as the string "[secret]" unless the operator passed `--show-secrets`; the API key is therefore
also accepted from the operator's environment, so it never has to sit in a file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# What `pulumi stack output --json` prints in place of a secret without --show-secrets.
HIDDEN_SECRET = "[secret]"


class OutputsError(ValueError):
    """An outputs file that is missing, not JSON, or lacks a key a task needs; the message names file and key."""


@dataclass(frozen=True)
class StackOutputs:
    values: dict[str, Any]
    source: str

    @classmethod
    def load(cls, path: Path | str) -> StackOutputs:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise OutputsError(f"{path}: no such outputs file (write it with `pulumi stack output --json -s STACK > "
                               f"{path.name}`)") from None
        except json.JSONDecodeError as exc:
            raise OutputsError(f"{path}: not the JSON of `pulumi stack output --json`: {exc}") from None
        if not isinstance(data, dict):
            raise OutputsError(f"{path}: expected one JSON object of stack outputs, got {type(data).__name__}")
        return cls(data, str(path))

    def require(self, key: str) -> Any:
        value = self.values.get(key)
        if value in (None, "", []):
            raise OutputsError(f"{self.source}: no '{key}' output (is the stack deployed, and is it the right stack?)")
        return value

    def hosts(self) -> list[str]:
        hosts = self.require("hostIps")
        if not isinstance(hosts, list) or not all(isinstance(h, str) for h in hosts):
            raise OutputsError(f"{self.source}: 'hostIps' must be a list of addresses")
        return [h for h in hosts if h]

    def secret(self, key: str) -> str | None:
        """A secret output when the file holds it in clear (`--show-secrets`), else None."""
        value = self.values.get(key)
        return value if isinstance(value, str) and value and value != HIDDEN_SECRET else None
