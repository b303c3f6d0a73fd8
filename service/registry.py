"""The adapter registry in Azure Blob: immutable versions `{domain}-v{N}` and one alias per domain.

Blob layout in the container (default `adapters`):

    {domain}/v{N}/adapter_config.json
    {domain}/v{N}/adapter_model.safetensors
    {domain}/v{N}/manifest.json          (written last: a version exists once its manifest does)
    {domain}/alias.json                  {"domain", "current": N|null, "history": [N, ...], "canary"?: {...}}
    {domain}/rollout.json                the last rollout's record (service.rollout), for `adapters rollout-status`

Immutability is enforced by the storage service, not by convention: every version blob is written with
`If-None-Match: *` (`overwrite=False`), so two publishers racing for v{N} cannot both win, and a prefix
that exists (even from a crashed publish) is never written again. alias.json is updated with
compare-and-swap on its ETag, so concurrent switches are applied one after the other and none is lost.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import random
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import EllipsisType
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
)
from azure.storage.blob import ContainerClient, ContentSettings, ExponentialRetry
from pydantic import BaseModel, ConfigDict, Field

from exaone_lora.canary import CanarySplit
from exaone_lora.model_shape import SHAPES, ModelShape
from service.manifest import (
    ADAPTER_FILES,
    MANIFEST_FILE,
    AdapterManifest,
    FileDigest,
    build_manifest,
    file_digest,
    manifest_bytes,
    manifest_sha256,
    parse_manifest,
    version_name,
)
from service.registry_location import (
    CLIENT_ID_ENV,
    DEFAULT_CONTAINER,
    ConnectionString,
    Identity,
    RegistryLocationError,
    RegistrySettings,
    check_ca_file,
    check_client_id,
    check_container,
    parse_location,
)
from service.validation import ValidatedAdapter, check_file_name, check_name, check_version, validate_adapter

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

ALIAS_FILE = "alias.json"
ROLLOUT_FILE = "rollout.json"
# Bounded retries: compare-and-swap loops and version claims give up rather than spin forever.
MAX_ATTEMPTS = 25
STALE_PARTIAL_SECONDS = 3600
_CHUNK = 4 * 1024 * 1024

BaseConfig = Path | str | dict[str, Any] | ModelShape
P = ParamSpec("P")
R = TypeVar("R")


# ---------------------------------------------------------------- errors


class RegistryError(RuntimeError):
    code = "registry-error"

    def __init__(self, message: str) -> None:
        super().__init__(f"[{self.code}] {message}")
        self.message = message


class VersionExistsError(RegistryError):
    code = "version-exists"


class VersionNotFoundError(RegistryError):
    code = "version-not-found"


class AliasConflictError(RegistryError):
    code = "alias-conflict"


class RollbackError(RegistryError):
    code = "no-previous-version"


class IntegrityError(RegistryError):
    code = "integrity"


class ConcurrencyError(RegistryError):
    code = "too-much-contention"


class RegistryAccessError(RegistryError):
    """Blob storage refused us (token, role, TLS) or could not be reached; says which and what to check."""

    code = "access-denied"


def _access_message(exc: AzureError) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    detail = next((line.split(":", 1)[1].strip() for line in lines if line.lower().startswith("authenticationerrordetail:")),
                  None)
    response = getattr(exc, "response", None)
    if isinstance(exc, ClientAuthenticationError) and response is None:
        # azure-identity could not get a token at all (no IMDS, no az login, the endpoint refused the client id);
        # its message repeats itself once per credential in the chain: keep the first statement.
        first = re.split(r"\w+Credential\.get_token(?:_info)? failed", lines[0] if lines else "")[0].strip()
        return f"could not get an Entra ID token for Blob storage: {first or type(exc).__name__}"
    if isinstance(exc, ServiceRequestError):
        hint = (" (TLS: a self-signed Azurite certificate needs --ca-file / $EXAONE_LORA_REGISTRY_CA_FILE)"
                if "CERTIFICATE_VERIFY_FAILED" in str(exc) else "")
        return f"cannot reach the registry: {lines[0] if lines else type(exc).__name__}{hint}"
    status = getattr(response, "status_code", "?")
    code = getattr(exc, "error_code", None) or "?"
    code = getattr(code, "value", code)  # the SDK gives a StorageErrorCode enum
    reason = (detail or (lines[0] if lines else type(exc).__name__)).rstrip(".")
    return (f"Blob storage refused the request (HTTP {status} {code}): {reason}. A token must be issued for "
            "https://storage.azure.com by the stack's tenant and still be valid, and the identity needs a Storage Blob "
            "Data role on the container (Reader for hosts, Contributor for publishers)")


def _access_errors(method: Callable[P, R]) -> Callable[P, R]:
    """Storage's authentication and transport errors become RegistryAccessError with one readable line."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except (ClientAuthenticationError, ServiceRequestError) as exc:
            raise RegistryAccessError(_access_message(exc)) from exc
        except HttpResponseError as exc:
            if exc.status_code == 403:
                raise RegistryAccessError(_access_message(exc)) from exc
            raise

    return wrapper


# ---------------------------------------------------------------- alias state


class AliasState(BaseModel):
    """What clients get when they call `domain`: the current version, the versions that were current before, and
    an optional canary (a candidate version taking a share of the traffic). Blobs written before canaries existed
    have no `canary` key and parse as "no canary"; one without a canary is written without the key, byte for byte
    as before."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    domain: str
    current: int | None = None
    history: list[int] = Field(default_factory=list)
    canary: CanarySplit | None = None

    @property
    def current_name(self) -> str | None:
        return version_name(self.domain, self.current) if self.current is not None else None

    def switched(self, version: int) -> AliasState:
        """`version` becomes current (a deploy, or a canary's promotion); any canary ends with it."""
        if version == self.current and self.canary is None:
            return self
        history = self.history if version == self.current else [*self.history, version]
        return AliasState(domain=self.domain, current=version, history=history)

    def rolled_back(self) -> AliasState:
        """Drop the current version from the top of the history; the one before it becomes current."""
        history = list(self.history)
        while history and history[-1] == self.current:
            history.pop()
        if self.current is None or not history:
            raise RollbackError(f"alias {self.domain!r} has no previous version to roll back to "
                                f"(current {self.current}, history {self.history})")
        return AliasState(domain=self.domain, current=history[-1], history=history)

    def with_canary(self, split: CanarySplit) -> AliasState:
        if self.current is None:
            raise AliasConflictError(f"alias {self.domain!r} has no current version: deploy one before a canary")
        if split.version == self.current:
            raise AliasConflictError(f"{version_name(self.domain, split.version)} is already the current version of "
                                     f"{self.domain!r}; a canary needs another version")
        return self.model_copy(update={"canary": split})

    def without_canary(self) -> AliasState:
        return self if self.canary is None else self.model_copy(update={"canary": None})

    def to_json(self) -> dict[str, Any]:
        """The blob's (and the CLI's) JSON: `canary` only while there is one, so both read as before canaries."""
        data = self.model_dump(mode="json")
        if data["canary"] is None:
            del data["canary"]
        return data

    def to_bytes(self) -> bytes:
        return (json.dumps(self.to_json(), indent=2) + "\n").encode()


# ---------------------------------------------------------------- helpers


def resolve_base_config(base_model_name: str, base_config: BaseConfig | None) -> BaseConfig:
    """The shape to validate against: given explicitly, a known model name, or a local model directory."""
    if base_config is not None:
        return base_config
    for shape in SHAPES.values():
        if shape.name == base_model_name:
            return shape
    if (Path(base_model_name) / "config.json").is_file():
        return Path(base_model_name)
    known = ", ".join(s.name for s in SHAPES.values())
    raise ValueError(f"unknown base model {base_model_name!r}: pass base_config (a config.json path, dict or "
                     f"ModelShape) or use one of {known}")


def _version_prefix(domain: str, version: int) -> str:
    return f"{domain}/v{version}/"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sleep_backoff(attempt: int) -> None:
    time.sleep(min(0.5, 0.01 * 2**attempt) * random.random())


# ---------------------------------------------------------------- registry


class AdapterRegistry:
    """Versions and aliases of LoRA adapters in one Blob container (Azure, or Azurite in tests)."""

    def __init__(self, container_client: ContainerClient) -> None:
        self.container = container_client

    @classmethod
    def from_connection_string(cls, conn: str, container: str = DEFAULT_CONTAINER) -> AdapterRegistry:
        """Kept for callers not yet moved to `open_registry` (same checks: loopback Azurite only)."""
        return open_registry(conn, container)

    @classmethod
    def from_account_url(cls, url: str, container: str = DEFAULT_CONTAINER, credential: Any = None) -> AdapterRegistry:
        """Kept for callers not yet moved to `open_registry`; the operator's DefaultAzureCredential by default."""
        return open_registry(url, container, credential=credential)

    @_access_errors
    def ensure_container(self) -> None:
        """Create the container when missing (Azurite). On Azure the stack made it, and a publisher's role is scoped
        to it: asking first avoids a create call that role may not be allowed to make."""
        if self.container.exists():
            return
        with contextlib.suppress(ResourceExistsError):
            self.container.create_container()

    # ------------------------------------------------------------ reading

    @_access_errors
    def domains(self) -> list[str]:
        names = []
        for item in self.container.walk_blobs(delimiter="/"):
            name = item.name.rstrip("/")
            if item.name.endswith("/") and re.fullmatch(r"[a-z][a-z0-9_]{0,39}", name):
                names.append(name)
        return sorted(names)

    def _version_blobs(self, domain: str) -> dict[int, set[str]]:
        pattern = re.compile(rf"^{re.escape(domain)}/v([1-9][0-9]*)/([^/]+)$")
        found: dict[int, set[str]] = {}
        for blob in self.container.list_blobs(name_starts_with=f"{domain}/v"):
            match = pattern.match(blob.name)
            if match:
                found.setdefault(int(match[1]), set()).add(match[2])
        return found

    @_access_errors
    def versions(self, domain: str) -> list[int]:
        """Complete versions (their manifest exists), ascending; a crashed publish's leftovers are not listed."""
        check_name(domain, "domain")
        return sorted(v for v, names in self._version_blobs(domain).items() if MANIFEST_FILE in names)

    @_access_errors
    def manifest_bytes(self, domain: str, version: int) -> bytes:
        check_name(domain, "domain")
        check_version(version)
        try:
            return self.container.download_blob(_version_prefix(domain, version) + MANIFEST_FILE).readall()
        except ResourceNotFoundError:
            raise VersionNotFoundError(f"{version_name(domain, version)} is not in the registry") from None

    def manifest(self, domain: str, version: int) -> AdapterManifest:
        data = self.manifest_bytes(domain, version)
        return self._parse_manifest(domain, version, data)

    def manifest_digest(self, domain: str, version: int) -> str:
        """sha256 of the stored manifest.json: the value a stack file pins (`AdapterPin.sha256`)."""
        return manifest_sha256(self.manifest_bytes(domain, version))

    @staticmethod
    def _parse_manifest(domain: str, version: int, data: bytes) -> AdapterManifest:
        try:
            manifest = parse_manifest(data)
        except ValueError as exc:
            raise IntegrityError(f"the manifest of {version_name(domain, version)} is unreadable: {exc}") from None
        if (manifest.domain, manifest.version) != (domain, version):
            raise IntegrityError(f"{domain}/v{version}/{MANIFEST_FILE} describes {manifest.name}, not "
                                 f"{version_name(domain, version)}")
        return manifest

    # ------------------------------------------------------------ publishing

    @_access_errors
    def publish(
        self,
        domain: str,
        adapter_dir: Path | str,
        *,
        base_model_name: str,
        base_model_revision: str,
        max_rank: int,
        training: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
        base_config: BaseConfig | None = None,
        version: int | None = None,
    ) -> AdapterManifest:
        """Validate, then upload as the next free version (or exactly `version`); never overwrites anything."""
        check_name(domain, "domain")
        if version is not None:
            check_version(version)
        shape = resolve_base_config(base_model_name, base_config)
        validated = validate_adapter(adapter_dir, base_config=shape, max_rank=max_rank)
        with tempfile.TemporaryDirectory(prefix="exaone-lora-publish-") as tmp:
            # Upload a private copy, checked against what was validated: a file changed in between is refused.
            staging = Path(tmp)
            for name in ADAPTER_FILES:
                shutil.copyfile(Path(adapter_dir) / name, staging / name, follow_symlinks=False)
                if file_digest(staging / name) != validated.files[name]:
                    raise IntegrityError(f"{name} changed while it was being published; publish again")
            return self._publish_staged(domain, staging, validated, base_model_name, base_model_revision,
                                        training, metrics, version)

    def _publish_staged(self, domain: str, staging: Path, validated: ValidatedAdapter, base_model_name: str,
                        base_model_revision: str, training: dict[str, Any] | None, metrics: dict[str, Any] | None,
                        version: int | None) -> AdapterManifest:
        for attempt in range(MAX_ATTEMPTS):
            claimed = self._version_blobs(domain)
            if version is not None and version in claimed:
                raise VersionExistsError(f"{version_name(domain, version)} already exists; versions are immutable")
            candidate = version if version is not None else max(claimed, default=0) + 1
            manifest = build_manifest(staging, domain, candidate, base_model_name, base_model_revision,
                                      training=training, metrics=metrics)
            # The first file claims the version: If-None-Match: * lets exactly one publisher create it.
            first, *rest = ADAPTER_FILES
            try:
                self._upload_file(domain, candidate, staging / first, manifest.files[first])
            except ResourceExistsError:
                if version is not None:
                    raise VersionExistsError(f"{version_name(domain, version)} already exists; versions are immutable") \
                        from None
                _sleep_backoff(attempt)
                continue
            for name in rest:
                self._upload_file(domain, candidate, staging / name, manifest.files[name])
            self.container.upload_blob(
                _version_prefix(domain, candidate) + MANIFEST_FILE, manifest_bytes(manifest), overwrite=False,
                content_settings=ContentSettings(content_type="application/json"),
                metadata={"sha256": manifest_sha256(manifest)},
            )
            return manifest
        raise ConcurrencyError(f"could not claim a version of {domain} after {MAX_ATTEMPTS} attempts")

    def _upload_file(self, domain: str, version: int, path: Path, digest: FileDigest) -> None:
        content_type = "application/json" if path.suffix == ".json" else "application/octet-stream"
        with path.open("rb") as handle:
            self.container.upload_blob(
                _version_prefix(domain, version) + path.name, handle, length=digest.size, overwrite=False,
                content_settings=ContentSettings(content_type=content_type), metadata={"sha256": digest.sha256},
                validate_content=True,
            )

    # ------------------------------------------------------------ downloading

    @_access_errors
    def download(self, domain: str, version: int, dest_dir: Path | str, *, expected_manifest_sha256: str | None = None,
                 base_config: BaseConfig | None = None, max_rank: int | None = None) -> Path:
        """Download a version into `dest_dir` (the version's own directory, e.g. /data/lora-adapters/medical-v3).

        Files land in a temporary directory next to `dest_dir`, every sha256 and size is checked against the
        manifest (and the manifest against `expected_manifest_sha256`), optionally the adapter is validated,
        and only then the directory is renamed into place: an interrupted download never leaves a half
        version. A `dest_dir` that already holds this exact version is returned as is.
        """
        dest = Path(dest_dir)
        raw = self.manifest_bytes(domain, version)
        if expected_manifest_sha256 is not None and manifest_sha256(raw) != expected_manifest_sha256:
            raise IntegrityError(f"the manifest of {version_name(domain, version)} has sha256 {manifest_sha256(raw)}, "
                                 f"expected {expected_manifest_sha256}")
        manifest = self._parse_manifest(domain, version, raw)
        for name in manifest.files:
            check_file_name(name)
        if dest.exists():
            return self._existing(dest, manifest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        self._remove_stale_partials(dest)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
        try:
            for name, digest in manifest.files.items():
                self._download_file(domain, version, name, digest, tmp / name)
            (tmp / MANIFEST_FILE).write_bytes(raw)
            if base_config is not None and max_rank is not None:
                validate_adapter(tmp, base_config=base_config, max_rank=max_rank, manifest=manifest)
            for path in tmp.iterdir():
                path.chmod(0o644)
            # mkdtemp makes 0700; vLLM runs as its own user and must be able to read the adapter.
            tmp.chmod(0o755)
            _fsync_dir(tmp)
            try:
                tmp.rename(dest)
            except OSError:
                if dest.exists():  # another process finished the same download first
                    return self._existing(dest, manifest)
                raise
            _fsync_dir(dest.parent)
            return dest
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _download_file(self, domain: str, version: int, name: str, digest: FileDigest, target: Path) -> None:
        sha = hashlib.sha256()
        size = 0
        try:
            stream = self.container.download_blob(_version_prefix(domain, version) + name)
        except ResourceNotFoundError:
            raise IntegrityError(f"{version_name(domain, version)}: {name} is listed in the manifest but missing") from None
        with target.open("wb") as out:
            for chunk in stream.chunks():
                sha.update(chunk)
                size += len(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if size != digest.size or sha.hexdigest() != digest.sha256:
            raise IntegrityError(f"{version_name(domain, version)}: {name} downloaded as {size} bytes sha256 "
                                 f"{sha.hexdigest()}, the manifest says {digest.size} bytes sha256 {digest.sha256}")

    @staticmethod
    def _existing(dest: Path, manifest: AdapterManifest) -> Path:
        for name, digest in manifest.files.items():
            path = dest / name
            if path.is_symlink() or not path.is_file() or file_digest(path) != digest:
                raise IntegrityError(f"{dest} exists but does not hold {manifest.name} ({name} differs); "
                                     "remove it and download again")
        return dest

    @staticmethod
    def _remove_stale_partials(dest: Path) -> None:
        cutoff = time.time() - STALE_PARTIAL_SECONDS
        for leftover in dest.parent.glob(f".{dest.name}.partial-*"):
            if leftover.is_dir() and not leftover.is_symlink() and leftover.stat().st_mtime < cutoff:
                shutil.rmtree(leftover, ignore_errors=True)

    # ------------------------------------------------------------ aliases

    def _alias_name(self, domain: str) -> str:
        return f"{check_name(domain, 'domain')}/{ALIAS_FILE}"

    def _read_alias(self, domain: str) -> tuple[AliasState, str | None]:
        try:
            stream = self.container.download_blob(self._alias_name(domain))
        except ResourceNotFoundError:
            return AliasState(domain=domain), None
        try:
            state = AliasState.model_validate_json(stream.readall())
        except ValueError as exc:
            raise IntegrityError(f"{domain}/{ALIAS_FILE} is unreadable: {exc}") from None
        if state.domain != domain:
            raise IntegrityError(f"{domain}/{ALIAS_FILE} names domain {state.domain!r}")
        return state, stream.properties.etag

    @_access_errors
    def alias(self, domain: str) -> AliasState:
        return self._read_alias(domain)[0]

    def current(self, domain: str) -> AdapterManifest | None:
        """The manifest the alias points at (None while it is unset): what a reconciler should serve."""
        state = self.alias(domain)
        return self.manifest(domain, state.current) if state.current is not None else None

    def _update_alias(self, domain: str, change: Callable[[AliasState], AliasState]) -> AliasState:
        """Read-modify-write of alias.json under its ETag; a lost race re-reads and re-applies `change`."""
        name = self._alias_name(domain)
        for attempt in range(MAX_ATTEMPTS):
            state, etag = self._read_alias(domain)
            new = change(state)
            if new == state:
                return state
            try:
                if etag is None:
                    self.container.upload_blob(name, new.to_bytes(), overwrite=False,
                                               content_settings=ContentSettings(content_type="application/json"))
                else:
                    self.container.upload_blob(name, new.to_bytes(), overwrite=True, etag=etag,
                                               match_condition=MatchConditions.IfNotModified,
                                               content_settings=ContentSettings(content_type="application/json"))
                return new
            except (ResourceModifiedError, ResourceExistsError):
                _sleep_backoff(attempt)
        raise ConcurrencyError(f"alias {domain!r} changed under us {MAX_ATTEMPTS} times in a row; try again")

    @_access_errors
    def set_alias(self, domain: str, version: int, *, expected_current: int | EllipsisType | None = ...) -> AliasState:
        """Point `domain` at `version` (which must exist). With `expected_current`, refuse if someone moved it first."""
        check_version(version)
        if version not in self.versions(domain):
            raise VersionNotFoundError(f"{version_name(domain, version)} is not in the registry")

        def change(state: AliasState) -> AliasState:
            if expected_current is not ... and state.current != expected_current:
                raise AliasConflictError(f"alias {domain!r} points at {state.current}, expected {expected_current}")
            return state.switched(version)

        return self._update_alias(domain, change)

    @_access_errors
    def set_canary(self, domain: str, split: CanarySplit, *, expected_current: int | EllipsisType | None = ...
                   ) -> AliasState:
        """Give `split.version` (which must exist) `split.weight` percent of the alias's traffic. With
        `expected_current`, refuse if the alias's current version moved; a canary of another version is replaced."""
        if split.version not in self.versions(domain):
            raise VersionNotFoundError(f"{version_name(domain, split.version)} is not in the registry")

        def change(state: AliasState) -> AliasState:
            if expected_current is not ... and state.current != expected_current:
                raise AliasConflictError(f"alias {domain!r} points at {state.current}, expected {expected_current}")
            return state.with_canary(split)

        return self._update_alias(domain, change)

    @_access_errors
    def clear_canary(self, domain: str) -> AliasState:
        """End a canary without promoting it: every request goes to the current version again."""
        return self._update_alias(domain, lambda s: s.without_canary())

    @_access_errors
    def promote_canary(self, domain: str, version: int) -> AliasState:
        """The canary `version` becomes current (the same change as a deploy), the canary ends. Refused when the
        alias's canary is another version (someone started another rollout); a no-op once it is current."""

        def change(state: AliasState) -> AliasState:
            if state.current == version and state.canary is None:
                return state
            if state.canary is None or state.canary.version != version:
                raise AliasConflictError(f"alias {domain!r} has no canary of version {version} to promote "
                                         f"(canary: {state.canary})")
            return state.switched(version)

        return self._update_alias(domain, change)

    @_access_errors
    def put_rollout_record(self, domain: str, data: bytes) -> None:
        """The last rollout's record beside the alias (overwritten by the next rollout; the alias stays the state)."""
        self.container.upload_blob(f"{check_name(domain, 'domain')}/{ROLLOUT_FILE}", data, overwrite=True,
                                   content_settings=ContentSettings(content_type="application/json"))

    @_access_errors
    def rollout_record(self, domain: str) -> bytes | None:
        try:
            return bytes(self.container.download_blob(f"{check_name(domain, 'domain')}/{ROLLOUT_FILE}").readall())
        except ResourceNotFoundError:
            return None

    @_access_errors
    def rollback(self, domain: str) -> int:
        """Move `current` back to the previous version in the history; returns that version."""
        state = self._update_alias(domain, lambda s: s.rolled_back())
        assert state.current is not None  # rolled_back() never leaves it empty
        return state.current



# ---------------------------------------------------------------- opening


class _RetryWhatCanHeal(ExponentialRetry):
    """Storage's retries (15 s, 18 s, 24 s apart) minus the failures that retrying cannot fix: a credential that
    has no token (no identity, wrong client id) and a certificate that does not verify. Those surface at once
    as RegistryAccessError instead of after a minute; the reconciler's next run is the retry."""

    def increment(self, settings: dict[str, Any], request: Any, response: Any = None, error: AzureError | None = None
                  ) -> bool:
        if isinstance(error, ClientAuthenticationError) or (
                isinstance(error, ServiceRequestError) and "CERTIFICATE_VERIFY_FAILED" in str(error)):
            return False
        return bool(super().increment(settings, request, response, error))


def registry_credential(identity: Identity, client_id: str | None = None) -> TokenCredential:
    """The Entra ID credential of who is calling.

    `operator`: DefaultAzureCredential (az login, environment, workload identity, ...) on a person's or CI's machine.
    `host`: ManagedIdentityCredential of the host's user-assigned identity (`client_id`, the stack output
    identityClientId). azure-identity picks the transport from the environment: IMDS on an Azure VM, the App
    Service protocol (IDENTITY_ENDPOINT + IDENTITY_HEADER) under the local stand-in; the code is the same.
    """
    if identity == "host":
        if client_id is None:
            raise RegistryLocationError(f"the host identity needs its client id (--client-id, ${CLIENT_ID_ENV}, or the "
                                        "stack output identityClientId): a VM may hold several identities")
        from azure.identity import ManagedIdentityCredential

        return ManagedIdentityCredential(client_id=check_client_id(client_id))
    if identity == "operator":
        from azure.identity import DefaultAzureCredential

        return DefaultAzureCredential()
    raise RegistryLocationError(f"identity must be 'operator' or 'host', got {identity!r}")


def open_registry(location: str, container: str = DEFAULT_CONTAINER, *, identity: Identity = "operator",
                  client_id: str | None = None, ca_file: Path | str | None = None,
                  credential: TokenCredential | None = None) -> AdapterRegistry:
    """The one way to open the registry.

    `location`: an account URL (https://<account>.blob.core.windows.net, or https://127.0.0.1:PORT/<account> for
    Azurite over HTTPS), signed in with `credential` or else `identity`'s (see `registry_credential`); or a
    connection string, accepted for a loopback Azurite only (`identity` and `client_id` are then unused).
    `ca_file`: a PEM bundle that replaces the system's CAs for Blob requests (Azurite's self-signed certificate).
    Nothing is contacted here; errors in the arguments raise RegistryLocationError naming what is wrong.
    """
    parsed = parse_location(location)
    check_container(container)
    verify: str | bool = str(check_ca_file(ca_file)) if ca_file is not None else True
    if isinstance(parsed, ConnectionString):
        try:
            client = ContainerClient.from_connection_string(parsed.value, container_name=container,
                                                            connection_verify=verify, retry_policy=_RetryWhatCanHeal())
        except ValueError as exc:
            raise RegistryLocationError(f"connection string refused by azure-storage-blob: {exc}") from None
        return AdapterRegistry(client)
    token = credential if credential is not None else registry_credential(identity, client_id)
    return AdapterRegistry(ContainerClient(account_url=parsed.url, container_name=container, credential=token,
                                           connection_verify=verify, retry_policy=_RetryWhatCanHeal()))

__all__ = [
    "ALIAS_FILE",
    "AdapterRegistry",
    "AliasConflictError",
    "AliasState",
    "CanarySplit",
    "ConcurrencyError",
    "IntegrityError",
    "RegistryAccessError",
    "RegistryError",
    "RegistryLocationError",
    "RegistrySettings",
    "RollbackError",
    "VersionExistsError",
    "VersionNotFoundError",
    "open_registry",
    "registry_credential",
    "resolve_base_config",
]
