"""Pulumi entry point: `pulumi up -s <stack>` builds the stack described by Pulumi.<stack>.yaml."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the Pulumi CLI runs this file from infra/

import pulumi  # noqa: E402

from exaone_lora.spec import load_spec  # noqa: E402
from infra.common import InfraOptions  # noqa: E402
from infra.program import build  # noqa: E402

ops = pulumi.Config("ops")
outputs = build(
    load_spec(pulumi.get_stack(), ROOT),
    InfraOptions(operator_principal_id=ops.get("operatorPrincipalId"), api_key=ops.get_secret("apiKey"),
                 kubernetes_version=ops.get("kubernetesVersion")),
)
for key, value in outputs.items():
    pulumi.export(key, value)
