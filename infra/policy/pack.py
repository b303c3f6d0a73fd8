"""The rules wrapped as pulumi-policy ResourceValidationPolicies (the pack itself is built in __main__.py,
because constructing a PolicyPack starts its gRPC server)."""

from __future__ import annotations

from typing import Any

from pulumi_policy import EnforcementLevel, Policy, ReportViolation, ResourceValidationArgs, ResourceValidationPolicy

from infra.policy.rules import RULES, Rule

PACK_NAME = "exaone-lora-azure"


def _validator(rule: Rule) -> Any:
    def validate(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
        for message in rule.check(args.resource_type, args.props):
            report_violation(message, args.urn)

    return validate


def policies(enforcement: EnforcementLevel = EnforcementLevel.MANDATORY) -> list[Policy]:
    """One mandatory policy per rule: a violation blocks `pulumi up`."""
    return [
        ResourceValidationPolicy(name=rule.name, description=rule.description, validate=_validator(rule),
                                 enforcement_level=enforcement)
        for rule in RULES
    ]
