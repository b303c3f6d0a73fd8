"""Stack promotion: copy the tested pins of one stack file into another, keeping the target's own tier, SKU,
region, network and tags. Refuses unless the source has passing evidence (every required kind) for exactly its pins
AND each record's measurement of the server (what `/v1/models` listed, the host's sha256 of the adapter files, the
vLLM version and build it reported) matches every pin; a stand-in's measurement (CPU vLLM, tiny checkpoint) proves
the vLLM and model pins of a GPU stack only when the operator accepts that explicitly (`accept_stand_in`).

The target file is edited as a round-trip YAML document (ruamel.yaml keeps its comments and key order), the
result is validated with the same loader Pulumi uses, and it replaces the old file only by an atomic rename.
"""

from __future__ import annotations

import difflib
import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from exaone_lora import PROJECT
from exaone_lora.evidence import (
    REQUIRED_KINDS,
    Measured,
    evidence_records,
    measured_mismatches,
    passing_evidence,
    pins,
    pins_fingerprint,
    read_evidence,
)
from exaone_lora.spec import DeploymentSpec, SpecError, build_spec, load_spec, read_config, stack_file

# Spec keys (camelCase, as in the stack file) that make up the pins; everything else stays the target's.
PIN_KEYS: tuple[str, ...] = ("vllmVersion", "model", "adapters", "maxLoraRank", "maxLoras", "maxCpuLoras",
                             "maxModelLen", "maxNumSeqs", "gpuMemoryUtilization", "serverArgs", "serverEnv")
# What promotion must never change in the target.
KEPT: tuple[str, ...] = ("tier", "target", "region", "vm_sku", "gpus_per_node", "node_count", "operator_cidr", "api",
                         "storage", "gateway", "port", "admin_username", "ssh_public_key", "tags", "os_disk_gb")


class PromotionError(Exception):
    """Promotion refused; the target stack file was not touched."""


@dataclass(frozen=True)
class PromotionResult:
    source: str
    target: str
    target_path: Path
    diff: str
    evidence: dict[str, Path]
    written: bool
    unproven: tuple[str, ...] = ()  # pins only a stand-in measured (accepted with accept_stand_in)

    @property
    def changed(self) -> bool:
        return bool(self.diff)


def _yaml() -> YAML:
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=4, offset=2)
    return yaml


def _pin_diff(old: dict[str, Any], new: dict[str, Any], path: str = "") -> list[str]:
    """Human-readable differences between two pin dicts: 'adapters: ... -> ...'."""
    lines = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        where = f"{path}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            lines += _pin_diff(a, b, where + ".")
        elif a != b:
            lines.append(f"{where}: tested {a!r}, stack now {b!r}")
    return lines


def check_evidence(root: Path, spec: DeploymentSpec, *,
                   accept_stand_in: bool = False) -> tuple[dict[str, Path], list[str]]:
    """Passing evidence for every required kind for exactly the spec's pins, whose measurement of the server matches
    every pin; returns it and the pins only a stand-in measured. PromotionError says what is missing or differs."""
    found = passing_evidence(root, spec, REQUIRED_KINDS)
    problems = []
    unproven: list[str] = []
    for kind in REQUIRED_KINDS:
        if kind in found:
            path = found[kind]
            try:
                measured = Measured.from_dict(read_evidence(path).get("measured"))
            except ValueError as exc:
                problems.append(f"{kind} evidence {path.name} records no measurement of the server ({exc}): run "
                                f"the {kind} command again (it measures what the server serves)")
                continue
            wrong, stand_in = measured_mismatches(spec, measured, accept_stand_in=accept_stand_in)
            problems += [f"pin mismatch in {kind} evidence {path.name}: {line}" for line in wrong]
            unproven += [f"{kind}: {line}" for line in stand_in if accept_stand_in]
            continue
        passing = [(p, r) for p, r in evidence_records(root, spec.stack, kind) if r.get("passed") is True]
        if passing:
            path, record = passing[-1]
            diff = "; ".join(_pin_diff(record.get("pins", {}), pins(spec))) or "fingerprint differs"
            problems.append(f"pin mismatch: the newest passing {kind} evidence ({path.name}) tested other pins than "
                            f"Pulumi.{spec.stack}.yaml has now: {diff}")
        else:
            problems.append(f"no passing {kind} evidence for stack {spec.stack} "
                            f"(expected evidence/{spec.stack}/{kind}-*.json with passed=true for fingerprint "
                            f"{pins_fingerprint(spec)[:12]})")
    if problems:
        raise PromotionError(f"refusing to promote {spec.stack}: " + "\n".join(problems))
    return found, unproven


def pin_values(spec: DeploymentSpec) -> dict[str, Any]:
    """The pins as stack-file values (camelCase keys)."""
    return {
        "vllmVersion": spec.vllm_version,
        "model": {"name": spec.model.name, "revision": spec.model.revision},
        "adapters": [{"alias": a.alias, "version": a.version, "blobPath": a.blob_path, "sha256": a.sha256, "rank": a.rank}
                     for a in spec.adapters],
        "maxLoraRank": spec.max_lora_rank,
        "maxLoras": spec.max_loras,
        "maxCpuLoras": spec.max_cpu_loras,
        "maxModelLen": spec.max_model_len,
        "maxNumSeqs": spec.max_num_seqs,
        "gpuMemoryUtilization": spec.gpu_memory_utilization,
        "serverArgs": dict(sorted(spec.server_args.items())),
        "serverEnv": dict(sorted(spec.server_env.items())),
    }


def _apply_pins(config: CommentedMap, values: dict[str, Any]) -> None:
    keys = list(config.keys())
    anchor = f"{PROJECT}:vllmVersion"
    insert_at = keys.index(anchor) + 1 if anchor in keys else len(keys)
    for key in PIN_KEYS:
        full = f"{PROJECT}:{key}"
        value = values[key]
        if key == "model" and isinstance(config.get(full), dict):
            # Only name and revision are pins; the host path and served name are the target's.
            config[full]["name"] = value["name"]
            config[full]["revision"] = value["revision"]
            continue
        if key in ("adapters", "serverArgs", "serverEnv") and not value:
            config.pop(full, None)
            continue
        if key == "adapters":
            value = CommentedSeq([CommentedMap(a) for a in value])
        elif key in ("serverArgs", "serverEnv"):
            value = CommentedMap(value)
        if full in config:
            config[full] = value
        else:
            config.insert(insert_at, full, value)
            insert_at += 1


def promote(source: str, target: str, root: Path | str = ".", *, dry_run: bool = False,
            accept_stand_in: bool = False) -> PromotionResult:
    """Copy `source`'s tested pins into `Pulumi.<target>.yaml`; see the module docstring."""
    root = Path(root)
    if source == target:
        raise PromotionError("source and target are the same stack")
    try:
        src = load_spec(source, root)
        old_target = load_spec(target, root)
    except SpecError as exc:
        raise PromotionError(f"cannot promote: {exc}") from None
    evidence, unproven = check_evidence(root, src, accept_stand_in=accept_stand_in)

    path = stack_file(target, root)
    original = path.read_text()
    yaml = _yaml()
    document = yaml.load(original)
    _apply_pins(document["config"], pin_values(src))
    buffer = io.StringIO()
    yaml.dump(document, buffer)
    new_text = buffer.getvalue()

    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(new_text)
        try:
            promoted = build_spec(target, read_config(tmp), path.name)
        except SpecError as exc:
            raise PromotionError(f"the promoted {path.name} would not load:\n{exc}") from None
        if pins(promoted) != pins(src):
            raise PromotionError("pin mismatch after promotion: " + "; ".join(_pin_diff(pins(src), pins(promoted))))
        moved = [k for k in KEPT if getattr(promoted, k) != getattr(old_target, k)]
        if moved:
            raise PromotionError(f"promotion would change the target's own settings: {', '.join(moved)}")
        diff = "".join(difflib.unified_diff(original.splitlines(keepends=True), new_text.splitlines(keepends=True),
                                            fromfile=f"{path.name} (before)", tofile=f"{path.name} (promoted from {source})"))
        written = False
        if not dry_run and diff:
            os.chmod(tmp, path.stat().st_mode & 0o777)
            os.replace(tmp, path)  # atomic: readers see the old file or the new one, never a half-written one
            written = True
        return PromotionResult(source, target, path, diff, evidence, written, tuple(unproven))
    finally:
        tmp.unlink(missing_ok=True)
