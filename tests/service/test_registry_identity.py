"""The Azure path's registry access on the test bed: Entra ID tokens from the loopback managed-identity endpoint,
checked by Azurite over HTTPS (`--oauth basic`). The operator publishes (DefaultAzureCredential); the host
downloads with ManagedIdentityCredential, exactly the code that asks IMDS on an Azure VM."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from exaone_lora.local.identity import STORAGE_AUDIENCE, WRONG_AUDIENCE, TokenEndpoint, token_endpoint
from exaone_lora.model_shape import EXAONE_TINY
from service.manifest import manifest_sha256, parse_manifest
from service.registry import RegistryAccessError, RegistryLocationError, open_registry
from service.registry_cli import app
from service.registry_location import RegistrySettings, render_env_file, settings_from_env
from tests.support.processes import REPO, Azurite
from tests.support.registry import HOST_CLIENT_ID, as_operator, host_process_env

pytestmark = pytest.mark.azurite
REVISION = "0" * 40
runner = CliRunner()


def _container() -> str:
    return f"mi-{uuid.uuid4().hex[:12]}"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_operator_publishes_and_the_host_downloads_with_its_managed_identity(
        azurite_oauth: Azurite, operator_identity: TokenEndpoint, host_identity: TokenEndpoint,
        tiny_adapters: dict[str, Path], clean_azure_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    container = _container()
    operator = as_operator(clean_azure_env, operator_identity, azurite_oauth, container)
    manifest = operator.publish("medical", tiny_adapters["medical"], base_model_name=EXAONE_TINY.name,
                                base_model_revision=REVISION, max_rank=8)
    operator.set_alias("medical", manifest.version)
    assert operator_identity.issued and {t.audience for t in operator_identity.issued} == {STORAGE_AUDIENCE}
    assert all(t.client_id is None for t in operator_identity.issued)
    assert host_identity.issued == []

    # The host: another process, whose only credential is its managed identity (IDENTITY_ENDPOINT here, IMDS on Azure).
    dest = tmp_path / "lora" / "medical-v1"
    assert azurite_oauth.ca_file is not None
    # Its settings come from /etc/exaone-lora/registry.env (here also the stand-in's endpoint, which IMDS needs not).
    env_file = tmp_path / "registry.env"
    env_file.write_text(render_env_file(
        RegistrySettings(azurite_oauth.account_url, container, HOST_CLIENT_ID, azurite_oauth.ca_file),
        identity_endpoint=host_identity.url, identity_header=host_identity.header))
    cmd = [sys.executable, "-m", "service.registry_cli", "download", "medical", "1", str(dest), "--identity", "host",
           "--registry-env-file", str(env_file), "--expected-sha256", manifest_sha256(manifest)]
    done = subprocess.run(cmd, env=host_process_env(), capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert host_identity.issued and {t.client_id for t in host_identity.issued} == {HOST_CLIENT_ID}
    assert {t.audience for t in host_identity.issued} == {STORAGE_AUDIENCE}

    stored = parse_manifest((dest / "manifest.json").read_bytes())
    assert stored == manifest
    for name, digest in manifest.files.items():
        assert _sha256(dest / name) == digest.sha256 == _sha256(tiny_adapters["medical"] / name)


def test_a_wrong_audience_token_is_refused(azurite_oauth: Azurite, clean_azure_env: pytest.MonkeyPatch) -> None:
    with token_endpoint(client_id=HOST_CLIENT_ID, audience=WRONG_AUDIENCE) as wrong:
        for key, value in wrong.env().items():
            clean_azure_env.setenv(key, value)
        registry = open_registry(azurite_oauth.account_url, _container(), identity="host", client_id=HOST_CLIENT_ID,
                                 ca_file=azurite_oauth.ca_file)
        with pytest.raises(RegistryAccessError) as refused:
            registry.domains()
        assert wrong.issued and wrong.issued[0].audience == WRONG_AUDIENCE  # a token was issued, and storage refused it
        message = str(refused.value)
        assert message.startswith("[access-denied]") and "Invalid token audience" in message
        assert STORAGE_AUDIENCE in message and "\n" not in message

        result = runner.invoke(app, ["list", "--registry", azurite_oauth.account_url, "--identity", "host",
                                     "--client-id", HOST_CLIENT_ID, "--ca-file", str(azurite_oauth.ca_file)],
                               env={"COLUMNS": "400"})
        assert result.exit_code == 1
        assert "access-denied" in result.output and "Invalid token audience" in result.output


def test_the_host_identity_needs_its_own_client_id(azurite_oauth: Azurite, host_identity: TokenEndpoint,
                                                   clean_azure_env: pytest.MonkeyPatch) -> None:
    for key, value in host_identity.env().items():
        clean_azure_env.setenv(key, value)
    with pytest.raises(RegistryLocationError, match="client id"):
        open_registry(azurite_oauth.account_url, _container(), identity="host", ca_file=azurite_oauth.ca_file)
    other = str(uuid.uuid4())
    registry = open_registry(azurite_oauth.account_url, _container(), identity="host", client_id=other,
                             ca_file=azurite_oauth.ca_file)
    with pytest.raises(RegistryAccessError, match="could not get an Entra ID token") as refused:
        registry.domains()
    assert other in str(refused.value) and host_identity.issued == []


def test_https_without_the_ca_file_says_so(azurite_oauth: Azurite, host_identity: TokenEndpoint,
                                           clean_azure_env: pytest.MonkeyPatch) -> None:
    for key, value in host_identity.env().items():
        clean_azure_env.setenv(key, value)
    registry = open_registry(azurite_oauth.account_url, _container(), identity="host", client_id=HOST_CLIENT_ID)
    with pytest.raises(RegistryAccessError, match=r"CERTIFICATE_VERIFY_FAILED.*--ca-file"):
        registry.domains()


def test_a_connection_string_opens_the_dev_stacks_azurite(azurite_blob: Azurite, tiny_adapters: dict[str, Path],
                                                          clean_azure_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    container = _container()
    settings = settings_from_env({"EXAONE_LORA_REGISTRY": azurite_blob.connection_string,
                                  "EXAONE_LORA_REGISTRY_CONTAINER": container})
    assert settings is not None and settings.container == container
    # The dev stack's host runs the same command as an Azure host: the identity is unused with a connection string.
    registry = settings.open("host")
    registry.ensure_container()
    manifest = registry.publish("legal", tiny_adapters["legal"], base_model_name=EXAONE_TINY.name,
                                base_model_revision=REVISION, max_rank=8)
    dest = registry.download("legal", manifest.version, tmp_path / "legal-v1")
    assert _sha256(dest / "adapter_model.safetensors") == manifest.files["adapter_model.safetensors"].sha256

    clean_azure_env.setenv("EXAONE_LORA_REGISTRY", azurite_blob.connection_string)
    listed = runner.invoke(app, ["list", "--container", container, "--json"])
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.stdout) == [{"domain": "legal", "current": None, "versions": [1]}]


def test_an_outputs_file_drives_the_host_cli(azurite_oauth: Azurite, operator_identity: TokenEndpoint,
                                             host_identity: TokenEndpoint, tiny_adapters: dict[str, Path],
                                             clean_azure_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    container = _container()
    operator = as_operator(clean_azure_env, operator_identity, azurite_oauth, container)
    operator.publish("medical", tiny_adapters["medical"], base_model_name=EXAONE_TINY.name,
                     base_model_revision=REVISION, max_rank=8)
    # What the rehearsal writes: the stack's outputs with the storage URL pointing at the local Azurite.
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps({"storageBlobUrl": azurite_oauth.account_url, "storageContainer": container,
                                   "identityClientId": HOST_CLIENT_ID, "sshUser": "azureuser"}, indent=2))
    for key, value in host_identity.env().items():
        clean_azure_env.setenv(key, value)
    result = runner.invoke(app, ["list", "medical", "--outputs", str(outputs), "--identity", "host", "--ca-file",
                                 str(azurite_oauth.ca_file), "--json"])
    assert result.exit_code == 0, result.output
    assert [v["name"] for v in json.loads(result.stdout)] == ["medical-v1"]
    assert {t.client_id for t in host_identity.issued} == {HOST_CLIENT_ID}


def test_reconcile_refuses_bad_registry_settings_before_touching_a_replica(
        azurite_oauth: Azurite, clean_azure_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from service.cli import app as serve_app

    engine = ["reconcile", "--engine", "http://127.0.0.1:9"]  # never contacted: every case fails before
    keyed = runner.invoke(serve_app, [*engine, "--registry", "AccountName=adapters01;AccountKey=AAAA"],
                          env={"COLUMNS": "400"})
    assert keyed.exit_code == 2 and "loopback" in keyed.output
    no_id = runner.invoke(serve_app, [*engine, "--registry", azurite_oauth.account_url], env={"COLUMNS": "400"})
    assert no_id.exit_code == 2 and "needs its client id" in no_id.output
    env_file = tmp_path / "registry.env"
    env_file.write_text(f"EXAONE_LORA_REGISTRY={azurite_oauth.account_url}\nPATH=/tmp\n")
    bad_file = runner.invoke(serve_app, [*engine, "--registry-env-file", str(env_file)], env={"COLUMNS": "400"})
    assert bad_file.exit_code == 2 and "got 'PATH'" in bad_file.output

    with token_endpoint(client_id=HOST_CLIENT_ID, audience=WRONG_AUDIENCE) as wrong:
        for key, value in wrong.env().items():
            clean_azure_env.setenv(key, value)
        refused = runner.invoke(serve_app, [*engine, "--registry", azurite_oauth.account_url, "--client-id",
                                            HOST_CLIENT_ID, "--ca-file", str(azurite_oauth.ca_file)])
    assert refused.exit_code == 1
    report = json.loads(refused.stdout)
    assert report["ok"] is False and "access-denied" in report["error"] and "Invalid token audience" in report["error"]


def test_one_endpoint_for_operator_and_host_as_the_rehearsal_runs_it(
        azurite_oauth: Azurite, host_identity: TokenEndpoint, tiny_adapters: dict[str, Path],
        clean_azure_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The operator signs in through `credential()` (no environment change); the host process trusts Azurite through
    REQUESTS_CA_BUNDLE instead of --ca-file; another client id is still refused."""
    container = _container()
    operator = open_registry(azurite_oauth.account_url, container, credential=host_identity.credential(),
                             ca_file=azurite_oauth.ca_file)
    operator.ensure_container()
    manifest = operator.publish("legal", tiny_adapters["legal"], base_model_name=EXAONE_TINY.name,
                                base_model_revision=REVISION, max_rank=8)
    assert [t.client_id for t in host_identity.issued] and all(t.client_id is None for t in host_identity.issued)

    env = {**host_process_env(host_identity), "REQUESTS_CA_BUNDLE": str(azurite_oauth.ca_file),
           "EXAONE_LORA_REGISTRY": azurite_oauth.account_url, "EXAONE_LORA_REGISTRY_CONTAINER": container,
           "AZURE_CLIENT_ID": HOST_CLIENT_ID}
    dest = tmp_path / "legal-v1"
    cmd = [sys.executable, "-m", "service.registry_cli", "download", "legal", "1", str(dest), "--identity", "host"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert HOST_CLIENT_ID in {t.client_id for t in host_identity.issued}
    assert _sha256(dest / "adapter_model.safetensors") == manifest.files["adapter_model.safetensors"].sha256

    stranger = open_registry(azurite_oauth.account_url, container, credential=host_identity.credential(str(uuid.uuid4())),
                             ca_file=azurite_oauth.ca_file)
    with pytest.raises(RegistryAccessError, match="no managed identity with client_id"):
        stranger.versions("legal")
