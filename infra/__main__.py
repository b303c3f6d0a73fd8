"""Pulumi entry point: `pulumi up -s <stack>` builds the stack described by Pulumi.<stack>.yaml."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the Pulumi CLI runs this file from infra/

import pulumi  # noqa: E402

from exaone_lora.spec import load_spec  # noqa: E402
from infra.common import InfraOptions, check_deployable, subscription_id  # noqa: E402
from infra.program import build  # noqa: E402
from infra.registry import build_registry, is_registry_stack, load_registry_config  # noqa: E402

ops = pulumi.Config("ops")
stack = pulumi.get_stack()
if is_registry_stack(stack, ROOT):
    # `pulumi up -s registry`: the one adapter registry the serving stacks reference.
    outputs = build_registry(load_registry_config(stack, ROOT), subscription_id(),
                             publisher_principal_id=ops.get("operatorPrincipalId"))
else:
    spec = load_spec(stack, ROOT)
    options = InfraOptions(operator_principal_id=ops.get("operatorPrincipalId"), api_key=ops.get_secret("apiKey"),
                           kubernetes_version=ops.get("kubernetesVersion"))
    # Before any resource: `pulumi up` refuses unset or example operator settings; a preview only warns.
    check_deployable(spec, options, preview=pulumi.runtime.is_dry_run(), warn=pulumi.log.warn)
    outputs = build(spec, options)
for key, value in outputs.items():
    pulumi.export(key, value)
