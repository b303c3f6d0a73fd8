"""Operator settings as `pulumi config set` would put them in a stack file (the shipped files leave them unset)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from exaone_lora.spec import MODEL_LICENSE_ACK

# A routable address that no test ever sends traffic to: it only ends up in rendered NSG rules.
OPERATOR_CIDR = "20.41.6.7/32"
# A real ed25519 public key whose private half was thrown away: it parses, and it opens nothing.
OPERATOR_SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGaQEhHn3p5SyEQgga/kWqnRDiV0Cqp3PHC+YdWFv/pu operator@tests"
# Without the namespace, for `build_spec` values and `variant(...)` overrides.
OPERATOR_VALUES: dict[str, Any] = {"operatorCidr": OPERATOR_CIDR, "sshPublicKey": OPERATOR_SSH_KEY,
                                   "acceptModelLicense": MODEL_LICENSE_ACK}


def ssh_public_key(directory: Path) -> str:
    """A fresh key pair in `directory` (for a host that must accept the private half)."""
    key = directory / "operator_ed25519"
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "operator@rehearsal", "-f", str(key)], check=True)
    return key.with_suffix(".pub").read_text().strip()


def operator_settings(directory: Path) -> dict[str, Any]:
    return {"exaone-lora:operatorCidr": OPERATOR_CIDR, "exaone-lora:sshPublicKey": ssh_public_key(directory),
            "exaone-lora:acceptModelLicense": MODEL_LICENSE_ACK}
