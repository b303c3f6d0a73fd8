"""Merged replicas on a VM (or the local systemd test host): one systemd unit per `mergedReplicas` entry, the
served version in an env file.

The unit's argv comes from `vllm_config.merged_launch` with the version left to systemd: `${MERGED_VERSION}`
is both the served model name and the directory under `/data/models/merged/`, and it is read from
`/etc/exaone-lora/merged-<alias>.env`. A deploy folds the new version (`service.merge`), rewrites that one
line and restarts the unit; until the unit answers again the gateway sends the version to the LoRA
replicas, so no request waits for it. Before the first deploy the env file does not exist and the unit
does not start (`ConditionPathExists`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

from exaone_lora.spec import DeploymentSpec, MergedReplicaSpec
from service.layout import DEFAULT_LAYOUT, HostLayout
from service.vllm_config import merged_cache_layout, merged_launch, unit_text

VERSION_VAR = "MERGED_VERSION"


def merged_unit_name(alias: str) -> str:
    return f"exaone-vllm-merged-{alias}.service"


def merged_env_file(layout: HostLayout, alias: str) -> PurePosixPath:
    return layout.config / f"merged-{alias}.env"


def merged_root(layout: HostLayout = DEFAULT_LAYOUT) -> PurePosixPath:
    return layout.models / "merged"


@dataclass(frozen=True)
class MergedEndpoint:
    alias: str
    unit: str
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def merged_endpoints(spec: DeploymentSpec) -> list[MergedEndpoint]:
    return [MergedEndpoint(m.alias, merged_unit_name(m.alias), m.port) for m in spec.merged_replicas]


def merged_for(spec: DeploymentSpec, alias: str) -> MergedReplicaSpec | None:
    return next((m for m in spec.merged_replicas if m.alias == alias), None)


def merged_unit(spec: DeploymentSpec, merged: MergedReplicaSpec, layout: HostLayout = DEFAULT_LAYOUT) -> str:
    version = "${" + VERSION_VAR + "}"
    launch = merged_launch(spec, merged, version_name=version, model_path=f"{merged_root(layout)}/{version}",
                           layout=layout)
    env_file = merged_env_file(layout, merged.alias)
    return unit_text(launch, layout, merged_cache_layout(layout, merged.alias).cache,
                     f"vLLM merged replica of {merged.alias} ({'CPU' if spec.target == 'local' else f'GPU {merged.gpu}'}, "
                     f"stack {spec.stack})",
                     unit_extra=f"\nConditionPathExists={env_file}", env_files=(str(env_file),))


def merged_units(spec: DeploymentSpec, layout: HostLayout = DEFAULT_LAYOUT) -> dict[str, str]:
    return {merged_unit_name(m.alias): merged_unit(spec, m, layout) for m in spec.merged_replicas}
