"""Entry point of the policy pack: `pulumi preview -s poc --policy-pack infra/policy`."""

import sys
from pathlib import Path

# The pack runs from its own directory; the rules live in the project package one level up.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pulumi_policy import PolicyPack

from infra.policy.pack import PACK_NAME, policies

PolicyPack(name=PACK_NAME, policies=list(policies()))
