"""The Blob-backed registry against the real Azurite: versions, immutability, aliases, rollback, downloads."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from azure.core.exceptions import ResourceExistsError

from exaone_lora.checkpoints import Checkpoint
from exaone_lora.model_shape import EXAONE_TINY
from service.manifest import manifest_sha256
from service.registry import (
    AdapterRegistry,
    AliasConflictError,
    IntegrityError,
    RollbackError,
    VersionExistsError,
    VersionNotFoundError,
    open_registry,
)
from service.validation import AdapterValidationError, BadNameError, validate_adapter
from tests.support.corpus import build_corpus
from tests.support.processes import Azurite

pytestmark = pytest.mark.azurite
REVISION = "0" * 40


def _publish(registry: AdapterRegistry, domain: str, adapter: Path, **kwargs: object):  # type: ignore[no-untyped-def]
    return registry.publish(domain, adapter, base_model_name=EXAONE_TINY.name, base_model_revision=REVISION, max_rank=8,
                            **kwargs)  # type: ignore[arg-type]


def test_publish_list_download_round_trip(registry: AdapterRegistry, tiny_adapters: dict[str, Path],
                                          tiny_checkpoint: Checkpoint, tmp_path: Path) -> None:
    manifest = _publish(registry, "medical", tiny_adapters["medical"], training={"epochs": 1}, metrics={"loss": 1.25})
    _publish(registry, "legal", tiny_adapters["legal"])
    assert manifest.name == "medical-v1" and manifest.version == 1 and manifest.rank == 8
    assert manifest.training == {"epochs": 1} and manifest.metrics == {"loss": 1.25}
    assert registry.domains() == ["legal", "medical"]
    assert registry.versions("medical") == [1]
    stored = registry.manifest("medical", 1)
    assert stored == manifest
    # The pin a stack file carries is the sha256 of the stored bytes, and re-serialising reproduces them.
    assert registry.manifest_digest("medical", 1) == manifest_sha256(stored) == manifest_sha256(manifest)

    dest = registry.download("medical", 1, tmp_path / "lora" / "medical-v1",
                             expected_manifest_sha256=manifest_sha256(manifest), base_config=tiny_checkpoint.path,
                             max_rank=8)
    assert sorted(p.name for p in dest.iterdir()) == ["adapter_config.json", "adapter_model.safetensors", "manifest.json"]
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (dest / name).read_bytes() == (tiny_adapters["medical"] / name).read_bytes()
    assert validate_adapter(dest, base_config=tiny_checkpoint.path, max_rank=8, manifest=stored).rank == 8
    # No temporary directory is left next to the destination; a second download is a no-op.
    assert [p.name for p in dest.parent.iterdir()] == ["medical-v1"]
    assert registry.download("medical", 1, dest) == dest


def test_versions_are_immutable(registry: AdapterRegistry, tiny_adapters: dict[str, Path]) -> None:
    first = _publish(registry, "code", tiny_adapters["code"])
    second = _publish(registry, "code", tiny_adapters["code"])  # the same files again get a new version
    assert (first.version, second.version) == (1, 2)
    assert registry.versions("code") == [1, 2]
    with pytest.raises(VersionExistsError) as caught:
        _publish(registry, "code", tiny_adapters["legal"], version=1)
    assert caught.value.code == "version-exists"
    # Below the registry, the storage itself refuses: version blobs are written with If-None-Match: *.
    with pytest.raises(ResourceExistsError):
        registry.container.upload_blob("code/v1/adapter_model.safetensors", b"evil", overwrite=False)
    assert registry.manifest("code", 1) == first
    assert _publish(registry, "code", tiny_adapters["code"], version=5).version == 5
    assert _publish(registry, "code", tiny_adapters["code"]).version == 6


def test_a_crashed_publish_is_not_listed_and_its_version_is_skipped(registry: AdapterRegistry,
                                                                    tiny_adapters: dict[str, Path]) -> None:
    _publish(registry, "legal", tiny_adapters["legal"])
    # What a publisher that died after its first upload leaves behind: a claimed v2 without a manifest.
    registry.container.upload_blob("legal/v2/adapter_config.json", b"{}", overwrite=False)
    assert registry.versions("legal") == [1]
    with pytest.raises(VersionNotFoundError):
        registry.set_alias("legal", 2)
    assert _publish(registry, "legal", tiny_adapters["legal"]).version == 3


def test_concurrent_publishers_never_share_a_version(azurite_blob: Azurite, container_name: str,
                                                     registry: AdapterRegistry, tiny_adapters: dict[str, Path]) -> None:
    results: list[int] = []
    errors: list[BaseException] = []

    def worker() -> None:
        # A client of its own, as a second machine would have.
        own = open_registry(azurite_blob.connection_string, container_name)
        try:
            for _ in range(2):
                results.append(_publish(own, "medical", tiny_adapters["medical"]).version)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert sorted(results) == list(range(1, 7))
    assert registry.versions("medical") == list(range(1, 7))


def test_alias_switch_rollback_and_history(registry: AdapterRegistry, tiny_adapters: dict[str, Path]) -> None:
    for _ in range(3):
        _publish(registry, "medical", tiny_adapters["medical"])
    assert registry.alias("medical").current is None and registry.current("medical") is None
    with pytest.raises(RollbackError):
        registry.rollback("medical")
    registry.set_alias("medical", 1)
    with pytest.raises(RollbackError):
        registry.rollback("medical")  # nothing before v1
    registry.set_alias("medical", 2)
    state = registry.set_alias("medical", 3)
    assert (state.current, state.history, state.current_name) == (3, [1, 2, 3], "medical-v3")
    assert registry.current("medical") == registry.manifest("medical", 3)
    assert registry.set_alias("medical", 3) == state  # idempotent
    raw = json.loads(registry.container.download_blob("medical/alias.json").readall())
    assert raw == {"domain": "medical", "current": 3, "history": [1, 2, 3]}

    assert registry.rollback("medical") == 2
    assert registry.alias("medical").history == [1, 2]
    assert registry.rollback("medical") == 1
    with pytest.raises(RollbackError) as caught:
        registry.rollback("medical")
    assert caught.value.code == "no-previous-version"
    assert registry.alias("medical").current == 1

    with pytest.raises(VersionNotFoundError):
        registry.set_alias("medical", 9)
    with pytest.raises(AliasConflictError):
        registry.set_alias("medical", 2, expected_current=3)
    assert registry.set_alias("medical", 2, expected_current=1).current == 2


def test_concurrent_alias_updates_are_not_lost(azurite_blob: Azurite, container_name: str, registry: AdapterRegistry,
                                               tiny_adapters: dict[str, Path]) -> None:
    rounds = 5
    for _ in range(2 * rounds):
        _publish(registry, "legal", tiny_adapters["legal"])
    # Two clients (two machines) switch the alias at the same time: one walks the odd versions, one the even.
    # Every call changes the alias, so every call must appear in the history exactly once.
    clients = [open_registry(azurite_blob.connection_string, container_name)
               for _ in range(2)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def switcher(client: AdapterRegistry, versions: list[int]) -> None:
        try:
            barrier.wait(timeout=30)
            for version in versions:
                client.set_alias("legal", version)
        except BaseException as exc:
            errors.append(exc)

    plans = [list(range(1, 2 * rounds + 1, 2)), list(range(2, 2 * rounds + 1, 2))]
    threads = [threading.Thread(target=switcher, args=(client, plan)) for client, plan in zip(clients, plans, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
    assert not errors, errors
    state = registry.alias("legal")
    # A lost update (last writer wins without an ETag condition) would drop versions from the history.
    assert sorted(state.history) == list(range(1, 2 * rounds + 1)), state.history
    for plan in plans:
        assert [v for v in state.history if v in plan] == plan
    assert state.current == state.history[-1]


def test_download_refuses_tampered_blobs_and_leaves_nothing(registry: AdapterRegistry, tiny_adapters: dict[str, Path],
                                                            tmp_path: Path) -> None:
    manifest = _publish(registry, "code", tiny_adapters["code"])
    with pytest.raises(IntegrityError):
        registry.download("code", 1, tmp_path / "pinned", expected_manifest_sha256="f" * 64)
    # Someone with write access replaces the weights behind the registry's back.
    blob = "code/v1/adapter_model.safetensors"
    registry.container.delete_blob(blob)
    registry.container.upload_blob(blob, b"\x00" * manifest.files["adapter_model.safetensors"].size)
    dest = tmp_path / "lora" / "code-v1"
    with pytest.raises(IntegrityError, match=r"adapter_model\.safetensors"):
        registry.download("code", 1, dest)
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []  # no half version, no temporary directory
    registry.container.delete_blob(blob)
    with pytest.raises(IntegrityError, match="missing"):
        registry.download("code", 1, dest)
    assert list(dest.parent.iterdir()) == []


def test_download_refuses_a_different_existing_directory(registry: AdapterRegistry, tiny_adapters: dict[str, Path],
                                                         tmp_path: Path) -> None:
    _publish(registry, "medical", tiny_adapters["medical"])
    dest = tmp_path / "medical-v1"
    dest.mkdir()
    (dest / "adapter_config.json").write_text("{}")
    with pytest.raises(IntegrityError, match="exists"):
        registry.download("medical", 1, dest)
    assert (dest / "adapter_config.json").read_text() == "{}"  # left untouched


def test_publish_validates_first_and_writes_nothing_when_refused(registry: AdapterRegistry, tmp_path: Path) -> None:
    corpus = build_corpus(tmp_path / "corpus", EXAONE_TINY)
    for name in ("wrong_rank", "pickle_file", "nan_weights", "not_lora", "symlink_escape", "extra_vocab"):
        case = corpus[name]
        with pytest.raises(AdapterValidationError) as caught:
            _publish(registry, "medical", case.path)
        assert caught.value.code == case.code
    with pytest.raises(BadNameError):
        _publish(registry, corpus["bad_name"].domain, corpus["bad_name"].path)
    assert list(registry.container.list_blobs()) == []
    assert _publish(registry, "medical", corpus["valid_bf16"].path).version == 1


def _version_blobs(registry: AdapterRegistry, prefix: str) -> dict[str, tuple[bytes, str]]:
    return {b.name: (registry.container.download_blob(b.name).readall(), str(b.etag))
            for b in registry.container.list_blobs(name_starts_with=prefix)}


def test_a_second_publisher_cannot_overwrite_a_published_version(azurite_blob: Azurite, container_name: str,
                                                                 registry: AdapterRegistry,
                                                                 tiny_adapters: dict[str, Path]) -> None:
    """A second machine with write access (a Blob Contributor) publishing the same version again: refused with a
    clear error, and every blob of the first publish keeps its bytes and ETag (it was never rewritten)."""
    first = _publish(registry, "medical", tiny_adapters["medical"])
    before = _version_blobs(registry, "medical/v1/")
    assert sorted(before) == ["medical/v1/adapter_config.json", "medical/v1/adapter_model.safetensors",
                              "medical/v1/manifest.json"]
    contributor = open_registry(azurite_blob.connection_string, container_name)
    with pytest.raises(VersionExistsError, match=r"^\[version-exists\] medical-v1 already exists; versions are immutable$"):
        _publish(contributor, "medical", tiny_adapters["legal"], version=1)
    # The publish path's own writes are conditional creates (If-None-Match: *), each of them refused by the storage.
    for name in before:
        with pytest.raises(ResourceExistsError) as caught:
            contributor.container.upload_blob(name, b"other bytes", overwrite=False)
        assert getattr(caught.value, "error_code", None) == "BlobAlreadyExists"
    assert _version_blobs(registry, "medical/v1/") == before
    assert registry.manifest("medical", 1) == first and contributor.versions("medical") == [1]


def test_what_azurite_enforces_of_the_registry_storage_settings(registry: AdapterRegistry) -> None:
    """Azurite (3.x) enforces conditional create, and nothing of the WORM settings the registry stack renders
    (infra/registry.py: version-level immutability, a container immutability policy, versioning, soft delete).
    On Azure those stop even an unconditional overwrite or a delete by a Blob Contributor; here they cannot be
    shown, so this test pins down the emulator's behaviour (docs/azure.md) and fails if a new Azurite changes it."""
    from datetime import UTC, datetime, timedelta

    from azure.core.exceptions import HttpResponseError
    from azure.storage.blob import ImmutabilityPolicy

    blob = registry.container.get_blob_client("code/v1/adapter_config.json")
    created = blob.upload_blob(b"{}", overwrite=False)
    assert created.get("version_id") is None, "Azurite keeps no blob versions"
    with pytest.raises(ResourceExistsError):
        blob.upload_blob(b"{}", overwrite=False)
    policy = ImmutabilityPolicy(expiry_time=datetime.now(UTC) + timedelta(days=1), policy_mode="Unlocked")
    for call in (lambda: blob.set_immutability_policy(policy), lambda: blob.set_legal_hold(True)):
        with pytest.raises(HttpResponseError) as caught:
            call()
        assert caught.value.status_code == 501 and "not implemented" in str(caught.value)
    # What only Azure's WORM policy stops: an unconditional overwrite and a delete are accepted by the emulator.
    blob.upload_blob(b"rewritten", overwrite=True)
    assert blob.download_blob().readall() == b"rewritten"
    blob.delete_blob()
    assert not blob.exists()
