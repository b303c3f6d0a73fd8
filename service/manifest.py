"""The manifest of one immutable adapter version: what was published, with the sha256 and size of every file.

The manifest is stored as `{domain}/v{N}/manifest.json`. Its bytes are canonical (sorted keys, fixed
indentation), so `manifest_sha256` of a parsed manifest equals the sha256 of the stored blob and a stack
file can pin a version by that one hash (`AdapterPin.sha256`).
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from exaone_lora.model_shape import ALL_LINEAR_MODULES
from exaone_lora.naming import MANIFEST_FILE as MANIFEST_FILE  # re-exported: part of the adapter contract
from exaone_lora.naming import version_name
from exaone_lora.spec import ALIAS_PATTERN, SHA256_PATTERN

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
# The only files a version holds besides its manifest: exactly what vLLM reads from a PEFT adapter.
ADAPTER_FILES: tuple[str, ...] = (CONFIG_FILE, WEIGHTS_FILE)
SCHEMA_VERSION = 1
# A plain file name: no separators, no leading dot, nothing a shell or a blob path would read twice.
FILE_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_CHUNK = 1024 * 1024


class FileDigest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    sha256: str
    size: int = Field(ge=0)

    @field_validator("sha256")
    @classmethod
    def _hex(cls, value: str) -> str:
        if not SHA256_PATTERN.fullmatch(value):
            raise ValueError("must be 64 lower-case hex digits")
        return value


class BaseModelRef(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    revision: str = Field(min_length=1, max_length=100)


class AdapterManifest(BaseModel):
    """One published adapter version (`name` is the immutable name vLLM serves it under, e.g. `medical-v3`)."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    # `schema` would shadow a BaseModel attribute, so the Python name differs from the JSON key.
    schema_version: int = Field(default=SCHEMA_VERSION, alias="schema")
    domain: str
    version: int = Field(ge=1)
    name: str
    files: dict[str, FileDigest]
    rank: int = Field(ge=1)
    alpha: float
    target_modules: list[str]
    base_model: BaseModelRef
    training: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    created_at: datetime

    @field_validator("schema_version")
    @classmethod
    def _schema(cls, value: int) -> int:
        if value != SCHEMA_VERSION:
            raise ValueError(f"unsupported manifest schema {value} (this tool reads schema {SCHEMA_VERSION})")
        return value

    @field_validator("domain")
    @classmethod
    def _domain(cls, value: str) -> str:
        if not ALIAS_PATTERN.fullmatch(value):
            raise ValueError(f"domain {value!r} must be lower-case letters, digits or '_', starting with a letter")
        return value

    @field_validator("files")
    @classmethod
    def _files(cls, value: dict[str, FileDigest]) -> dict[str, FileDigest]:
        for filename in value:
            if not FILE_NAME_PATTERN.fullmatch(filename) or ".." in filename:
                raise ValueError(f"file name {filename!r} is not a plain file name")
        missing = [f for f in ADAPTER_FILES if f not in value]
        if missing:
            raise ValueError(f"files must list {', '.join(missing)}")
        # Exactly the adapter's files: anything else (a .py beside the weights) would travel to every host.
        extra = sorted(set(value) - set(ADAPTER_FILES))
        if extra:
            raise ValueError(f"files lists {', '.join(extra)}; a version holds only {' and '.join(ADAPTER_FILES)}")
        return value

    @field_validator("created_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        # Canonical bytes need one time zone and no sub-second noise across parse/serialise round trips.
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC).replace(microsecond=0)

    @model_validator(mode="after")
    def _name(self) -> AdapterManifest:
        if self.name != version_name(self.domain, self.version):
            raise ValueError(f"name {self.name!r} must be {version_name(self.domain, self.version)!r}")
        return self


def manifest_bytes(manifest: AdapterManifest) -> bytes:
    """The canonical stored form of a manifest (what `manifest.json` holds, byte for byte)."""
    data = manifest.model_dump(mode="json", by_alias=True)
    return (json.dumps(data, indent=2, sort_keys=True, ensure_ascii=True) + "\n").encode()


def manifest_sha256(manifest: AdapterManifest | bytes) -> str:
    """sha256 of the manifest.json bytes as stored (pass the raw bytes read from a blob to hash them as they are)."""
    data = manifest if isinstance(manifest, bytes) else manifest_bytes(manifest)
    return hashlib.sha256(data).hexdigest()


def parse_manifest(data: bytes | str) -> AdapterManifest:
    return AdapterManifest.model_validate_json(data)


def file_digest(path: Path) -> FileDigest:
    sha = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            sha.update(chunk)
            size += len(chunk)
    return FileDigest(sha256=sha.hexdigest(), size=size)


def build_manifest(
    adapter_dir: Path | str,
    domain: str,
    version: int,
    base_model_name: str,
    base_model_revision: str,
    training: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    *,
    created_at: datetime | None = None,
) -> AdapterManifest:
    """Hash the adapter's files and read rank/alpha/modules from its adapter_config.json.

    This does not validate the adapter (call `service.validation.validate_adapter` for that); it only
    records what is there.
    """
    root = Path(adapter_dir)
    config = json.loads((root / CONFIG_FILE).read_text())
    modules = config.get("target_modules") or []
    if modules == "all-linear":
        modules = list(ALL_LINEAR_MODULES)
    elif isinstance(modules, str):
        modules = [modules]
    return AdapterManifest(
        domain=domain,
        version=version,
        name=version_name(domain, version),
        files={name: file_digest(root / name) for name in ADAPTER_FILES},
        rank=int(config["r"]),
        alpha=float(config.get("lora_alpha", config["r"])),
        target_modules=sorted(str(m) for m in modules),
        base_model=BaseModelRef(name=base_model_name, revision=base_model_revision),
        training=training,
        metrics=metrics,
        created_at=created_at or datetime.now(UTC),
    )
