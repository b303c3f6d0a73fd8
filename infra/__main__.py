"""Pulumi entry point: `pulumi up -s <stack>` builds the stack described by Pulumi.<stack>.yaml."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the Pulumi CLI runs this file from infra/

import pulumi  # noqa: E402

from exaone_lora.spec import load_spec  # noqa: E402
from infra.common import InfraOptions, check_deployable  # noqa: E402
from infra.program import build  # noqa: E402

ops = pulumi.Config("ops")
spec = load_spec(pulumi.get_stack(), ROOT)
options = InfraOptions(operator_principal_id=ops.get("operatorPrincipalId"), api_key=ops.get_secret("apiKey"),
                       kubernetes_version=ops.get("kubernetesVersion"))
# Before any resource: `pulumi up` refuses unset or example operator settings; a preview only warns.
check_deployable(spec, options, preview=pulumi.runtime.is_dry_run(), warn=pulumi.log.warn)
for key, value in build(spec, options).items():
    pulumi.export(key, value)
