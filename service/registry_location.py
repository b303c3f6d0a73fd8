"""Where the adapter registry is and how to sign in to it: one location string, one variable, one outputs file.

A location is either

* an account URL, `https://<account>.blob.core.windows.net` (Azure; the stack output `storageBlobUrl`) or
  `https://127.0.0.1:<port>/<account>` (Azurite over HTTPS): requests carry an Entra ID bearer token; or
* a connection string (`AccountName=...;AccountKey=...;BlobEndpoint=...`): the local dev stack's Azurite only.

Account keys never reach Azure: a connection string is refused unless its Blob endpoint is on loopback.
Azure stacks turn shared-key access off (`allowSharedKeyAccess: false`), so a key would not work there
anyway; refusing it here means no code path can even try, and no key is ever copied to an operator's
shell history or a host's env file for a real account. The only key this accepts is Azurite's, which is
public.

This module parses and checks; `service.registry.open_registry` builds the client.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

from exaone_lora.cidrs import is_loopback

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

    from service.registry import AdapterRegistry

REGISTRY_ENV = "EXAONE_LORA_REGISTRY"
CONTAINER_ENV = "EXAONE_LORA_REGISTRY_CONTAINER"
CA_FILE_ENV = "EXAONE_LORA_REGISTRY_CA_FILE"
CLIENT_ID_ENV = "AZURE_CLIENT_ID"  # azure-identity's own name for a user-assigned identity's client id
DEFAULT_CONTAINER = "adapters"

# `pulumi stack output --json` keys (infra/program.py exports them).
OUTPUT_URL = "storageBlobUrl"
OUTPUT_CONTAINER = "storageContainer"
OUTPUT_CLIENT_ID = "identityClientId"

# Blob endpoints of Azure's clouds: public, China, US Government.
AZURE_BLOB_SUFFIXES = ("blob.core.windows.net", "blob.core.chinacloudapi.cn", "blob.core.usgovcloudapi.net")
_ACCOUNT = re.compile(r"[a-z0-9]{3,24}")
_CONTAINER = re.compile(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}")
_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_CONN_KEYS = {k.lower(): k for k in ("DefaultEndpointsProtocol", "AccountName", "AccountKey", "BlobEndpoint",
                                     "EndpointSuffix", "SharedAccessSignature", "UseDevelopmentStorage",
                                     "QueueEndpoint", "TableEndpoint", "FileEndpoint")}
AZURITE_DEFAULT_BLOB = "http://127.0.0.1:10000/devstoreaccount1"
LOCATION_HELP = ("an account URL (https://<account>.blob.core.windows.net, the stack output storageBlobUrl; "
                 "https://127.0.0.1:<port>/<account> for Azurite over HTTPS) or, for the local dev stack's Azurite "
                 "only, a connection string (AccountName=...;AccountKey=...;BlobEndpoint=http://127.0.0.1:...)")

Identity = Literal["operator", "host"]


class RegistryLocationError(ValueError):
    """A registry location, container, client id, CA file or outputs file that cannot be used; says which."""


@dataclass(frozen=True)
class AccountUrl:
    url: str  # normalised, no trailing slash
    account: str


@dataclass(frozen=True)
class ConnectionString:
    value: str
    blob_endpoint: str
    account: str | None


Location = AccountUrl | ConnectionString



_SECRET_PARTS = re.compile(r"(?i)(AccountKey|SharedAccessSignature|sig|password)=[^;&]*")


def redact(value: str) -> str:
    """A location as errors may show it: keys, SAS signatures and URL passwords replaced by ***."""
    shown = _SECRET_PARTS.sub(lambda m: f"{m[1]}=***", value)
    shown = re.sub(r"(?<=//)[^/@]*@", "***@", shown)
    return shown if len(shown) <= 160 else shown[:157] + "..."


def _check_text(value: str, what: str) -> str:
    if not isinstance(value, str):
        raise RegistryLocationError(f"{what} must be a string, got {type(value).__name__}")
    value = value.strip()
    if not value:
        raise RegistryLocationError(f"{what} is empty; give {LOCATION_HELP}")
    if any(ch.isspace() or not ch.isprintable() for ch in value):
        raise RegistryLocationError(f"{what} contains whitespace or control characters")
    if not value.isascii():
        raise RegistryLocationError(f"{what} contains non-ASCII characters")
    return value


def _split_url(value: str, what: str) -> tuple[str, str, str, int | None, str]:
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise RegistryLocationError(f"{what} {redact(value)!r} is not a valid URL: {exc}") from None
    if parts.username is not None or parts.password is not None:
        raise RegistryLocationError(f"{what} {redact(value)!r} must not carry a user name or password")
    if parts.query or parts.fragment or value.endswith(("?", "#")):
        raise RegistryLocationError(f"{what} {redact(value)!r} must not carry a query (a SAS token) or a fragment: the registry "
                                    "signs in with Entra ID tokens")
    host = (parts.hostname or "").lower()
    if not host:
        raise RegistryLocationError(f"{what} {redact(value)!r} has no host")
    return parts.scheme.lower(), host, parts.netloc, port, parts.path


def parse_account_url(value: str, what: str = "registry URL") -> AccountUrl:
    value = _check_text(value, what)
    scheme, host, netloc, _port, path = _split_url(value, what)
    if scheme != "https":
        raise RegistryLocationError(f"{what} {redact(value)!r} must use https: bearer tokens are never sent in clear text "
                                    "(Azurite: start it with --cert and --key)")
    if is_loopback(host):
        # Azurite is path-style: https://127.0.0.1:PORT/<account>.
        account = path.strip("/")
        if not _ACCOUNT.fullmatch(account) or path.rstrip("/") != f"/{account}":
            raise RegistryLocationError(f"{what} {redact(value)!r}: a loopback (Azurite) URL names its account as the only path "
                                        "segment, e.g. https://127.0.0.1:10000/devstoreaccount1")
        return AccountUrl(f"https://{netloc.lower()}/{account}", account)
    account, _, suffix = host.partition(".")
    if suffix not in AZURE_BLOB_SUFFIXES:
        raise RegistryLocationError(f"{what} {redact(value)!r}: the host must be <account>.{AZURE_BLOB_SUFFIXES[0]} (or another "
                                    f"Azure cloud's {', '.join(AZURE_BLOB_SUFFIXES[1:])}), or a loopback Azurite address")
    if not _ACCOUNT.fullmatch(account):
        raise RegistryLocationError(f"{what} {redact(value)!r}: storage account names are 3-24 lowercase letters and digits, "
                                    f"got {account!r}")
    if path not in ("", "/"):
        raise RegistryLocationError(f"{what} {redact(value)!r} must be the account URL without a path (the container is given "
                                    "separately)")
    return AccountUrl(f"https://{host}", account)


def parse_connection_string(value: str, what: str = "connection string") -> ConnectionString:
    value = _check_text(value, what)
    fields: dict[str, str] = {}
    for number, part in enumerate(value.split(";"), 1):
        if not part:
            continue
        key, sep, val = part.partition("=")
        canonical = _CONN_KEYS.get(key.lower())
        if not sep or not key or not val:
            # Not echoed: a part without "=" may be a pasted key.
            raise RegistryLocationError(f"{what}: part {number} is not Key=Value")
        if canonical is None:
            raise RegistryLocationError(f"{what}: unknown key {key!r} (known: {', '.join(sorted(_CONN_KEYS.values()))})")
        if canonical in fields:
            raise RegistryLocationError(f"{what}: {canonical} is given twice")
        fields[canonical] = val
    if fields.get("UseDevelopmentStorage", "").lower() == "true":
        endpoint = AZURITE_DEFAULT_BLOB
        fields.setdefault("AccountName", "devstoreaccount1")
    elif "BlobEndpoint" in fields:
        endpoint = fields["BlobEndpoint"]
    elif "AccountName" in fields:
        protocol = fields.get("DefaultEndpointsProtocol", "https").lower()
        endpoint = f"{protocol}://{fields['AccountName']}.blob.{fields.get('EndpointSuffix', 'core.windows.net')}"
    else:
        raise RegistryLocationError(f"{what} has neither BlobEndpoint nor AccountName")
    scheme, host, _netloc, _port, _path = _split_url(endpoint, f"{what}'s Blob endpoint")
    if scheme not in ("http", "https"):
        raise RegistryLocationError(f"{what}'s Blob endpoint {redact(endpoint)!r} must be http or https")
    if not is_loopback(host):
        raise RegistryLocationError(
            f"{what} points at {host}: connection strings carry a storage key (or SAS) and are accepted only for the "
            "local dev stack's Azurite on loopback. An Azure stack's registry is its account URL (the stack output "
            f"{OUTPUT_URL}, e.g. https://<account>.blob.core.windows.net) signed in with Entra ID: set "
            f"{REGISTRY_ENV} to it")
    if "AccountKey" in fields:
        if "AccountName" not in fields:
            raise RegistryLocationError(f"{what}: AccountKey needs AccountName")
        try:
            base64.b64decode(fields["AccountKey"], validate=True)
        except (binascii.Error, ValueError):
            raise RegistryLocationError(f"{what}: AccountKey is not base64") from None
    elif "SharedAccessSignature" not in fields and fields.get("UseDevelopmentStorage", "").lower() != "true":
        raise RegistryLocationError(f"{what} has no AccountKey or SharedAccessSignature; without one, give the account "
                                    "URL instead (signed in with Entra ID)")
    return ConnectionString(value, endpoint, fields.get("AccountName"))


def parse_location(value: str, what: str = "registry location") -> Location:
    """An account URL or a (loopback-only) connection string; anything else is refused with the reason."""
    text = _check_text(value, what)
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", text):
        return parse_account_url(text, what)
    if "=" in text:
        return parse_connection_string(text, what)
    shown = repr(text) if len(text) <= 40 else f"({len(text)} characters, not shown: it may be a key)"
    raise RegistryLocationError(f"{what} {shown} is neither an account URL nor a connection string; give {LOCATION_HELP}")


def check_container(name: str) -> str:
    if not isinstance(name, str) or not _CONTAINER.fullmatch(name):
        raise RegistryLocationError(f"container {name!r}: Blob container names are 3-63 lowercase letters, digits and "
                                    "single hyphens, starting and ending with a letter or digit")
    return name


def check_client_id(value: str, what: str = "client id") -> str:
    if not isinstance(value, str) or not _GUID.fullmatch(value):
        raise RegistryLocationError(f"{what} {value!r} is not a GUID (a user-assigned identity's client id, the stack "
                                    f"output {OUTPUT_CLIENT_ID})")
    return value.lower()


def check_ca_file(path: Path | str) -> Path:
    ca = Path(path)
    if not ca.is_file():
        raise RegistryLocationError(f"CA file {ca} does not exist or is not a file")
    return ca


@dataclass(frozen=True)
class RegistrySettings:
    """Everything needed to open the registry; `.open(identity)` builds the client (service.registry.open_registry)."""

    location: str
    container: str = DEFAULT_CONTAINER
    client_id: str | None = None
    ca_file: Path | None = None

    def __post_init__(self) -> None:
        parse_location(self.location)
        check_container(self.container)
        if self.client_id is not None:
            object.__setattr__(self, "client_id", check_client_id(self.client_id))
        if self.ca_file is not None:
            object.__setattr__(self, "ca_file", check_ca_file(self.ca_file))

    def open(self, identity: Identity = "operator", credential: TokenCredential | None = None) -> AdapterRegistry:
        from service.registry import open_registry

        return open_registry(self.location, self.container, identity=identity, client_id=self.client_id,
                             ca_file=self.ca_file, credential=credential)


def settings_from_outputs(path: Path | str) -> RegistrySettings:
    """The registry of a deployed stack, from the JSON `pulumi stack output --json` writes.

    Uses `storageBlobUrl` (required), `storageContainer` (required) and `identityClientId` (the host's identity).
    """
    source = Path(path)
    try:
        data = json.loads(source.read_text())
    except OSError as exc:
        raise RegistryLocationError(f"cannot read stack outputs {source}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RegistryLocationError(f"stack outputs {source} is not JSON ({exc}); write it with "
                                    "`pulumi stack output --json > FILE`") from None
    if not isinstance(data, dict):
        raise RegistryLocationError(f"stack outputs {source} must hold a JSON object (what `pulumi stack output --json` "
                                    "writes)")

    def text(key: str, required: bool) -> str | None:
        value = data.get(key)
        if value is None:
            if required:
                raise RegistryLocationError(f"stack outputs {source} has no {key!r} output; is it the outputs of a stack "
                                            "with storage (`pulumi stack output --json -s STACK`)?")
            return None
        if not isinstance(value, str) or value == "[secret]":
            raise RegistryLocationError(f"stack outputs {source}: {key!r} must be a plain string, got {str(value)[:80]!r}")
        return value

    url = text(OUTPUT_URL, True)
    container = text(OUTPUT_CONTAINER, True)
    client_id = text(OUTPUT_CLIENT_ID, False)
    assert url is not None and container is not None
    try:
        parse_account_url(url, f"{OUTPUT_URL} in {source}")
        check_container(container)
        if client_id is not None:
            check_client_id(client_id, f"{OUTPUT_CLIENT_ID} in {source}")
    except RegistryLocationError as exc:
        raise RegistryLocationError(f"stack outputs {source}: {exc}") from None
    return RegistrySettings(url, container, client_id)


def settings_from_env(env: Mapping[str, str] | None = None) -> RegistrySettings | None:
    """EXAONE_LORA_REGISTRY (+ EXAONE_LORA_REGISTRY_CONTAINER, AZURE_CLIENT_ID, EXAONE_LORA_REGISTRY_CA_FILE); None
    when EXAONE_LORA_REGISTRY is unset."""
    env = os.environ if env is None else env
    location = env.get(REGISTRY_ENV)
    if not location:
        return None
    try:
        return RegistrySettings(location, env.get(CONTAINER_ENV) or DEFAULT_CONTAINER, env.get(CLIENT_ID_ENV) or None,
                                Path(env[CA_FILE_ENV]) if env.get(CA_FILE_ENV) else None)
    except RegistryLocationError as exc:
        raise RegistryLocationError(f"from the environment ({REGISTRY_ENV}, {CONTAINER_ENV}, {CLIENT_ID_ENV}, "
                                    f"{CA_FILE_ENV}): {exc}") from None


def resolve_settings(*, registry: str | None = None, outputs: Path | str | None = None, container: str | None = None,
                     client_id: str | None = None, ca_file: Path | str | None = None,
                     env: Mapping[str, str] | None = None) -> RegistrySettings:
    """What a command line gives, in order: --registry, else --outputs, else the environment; flags given beside
    override the container, client id and CA file."""
    if registry and outputs:
        raise RegistryLocationError("give --registry or --outputs, not both")
    settings: RegistrySettings | None
    if registry:
        settings = RegistrySettings(registry)
    elif outputs:
        settings = settings_from_outputs(outputs)
    else:
        settings = settings_from_env(env)
    if settings is None:
        raise RegistryLocationError(f"no registry: give --registry ({LOCATION_HELP}), --outputs FILE (from `pulumi stack "
                                    f"output --json`) or set {REGISTRY_ENV}")
    env = os.environ if env is None else env
    if registry:  # a location given by flag still takes the rest of its settings from the environment
        container = container or env.get(CONTAINER_ENV) or None
        client_id = client_id or env.get(CLIENT_ID_ENV) or None
        ca_file = ca_file or env.get(CA_FILE_ENV) or None
    return RegistrySettings(settings.location, container or settings.container, client_id or settings.client_id,
                            Path(ca_file) if ca_file else settings.ca_file)


ENV_FILE_KEYS = (REGISTRY_ENV, CONTAINER_ENV, CLIENT_ID_ENV, CA_FILE_ENV, "IDENTITY_ENDPOINT", "IDENTITY_HEADER")


def read_env_file(path: Path | str) -> dict[str, str]:
    """A systemd EnvironmentFile of registry settings (KEY=VALUE lines, # comments), e.g. /etc/exaone-lora/registry.env.

    Only the registry's keys (ENV_FILE_KEYS) are accepted; values may be shell-quoted (as `set -a; . FILE` reads
    them), and nothing is expanded.
    """
    source = Path(path)
    try:
        lines = source.read_text().split("\n")  # not splitlines(): it also breaks at \x1c-\x1e, \x85, \u2028
    except (OSError, UnicodeDecodeError) as exc:
        raise RegistryLocationError(f"cannot read registry env file {source}: {exc}") from None
    out: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        stripped = line.strip(" \t\r")
        if not stripped or stripped.startswith("#"):
            continue
        key, sep, value = stripped.partition("=")
        if not sep or key not in ENV_FILE_KEYS:
            raise RegistryLocationError(f"{source}:{number}: expected one of {', '.join(ENV_FILE_KEYS)} as KEY=VALUE, "
                                        f"got {key!r}")
        try:
            words = shlex.split(value)  # shell quoting (what render_env_file writes) is removed, nothing expanded
        except ValueError as exc:
            raise RegistryLocationError(f"{source}:{number}: {key}: {exc}") from None
        if len(words) > 1:
            raise RegistryLocationError(f"{source}:{number}: {key} holds several words; quote the value")
        out[key] = words[0] if words else ""
    return out


def render_env_file(settings: RegistrySettings, *, identity_endpoint: str | None = None,
                    identity_header: str | None = None) -> str:
    """The host's /etc/exaone-lora/registry.env (read by `service.cli reconcile --registry-env-file` or systemd's
    EnvironmentFile=). The identity endpoint pair is only for the local stand-in; on Azure IMDS needs none."""
    lines = [f"{REGISTRY_ENV}={settings.location}", f"{CONTAINER_ENV}={settings.container}"]
    if settings.client_id:
        lines.append(f"{CLIENT_ID_ENV}={settings.client_id}")
    if settings.ca_file:
        lines.append(f"{CA_FILE_ENV}={settings.ca_file}")
    if identity_endpoint:
        lines += [f"IDENTITY_ENDPOINT={identity_endpoint}", f"IDENTITY_HEADER={identity_header or ''}"]
    out = []
    for line in lines:
        key, _, value = line.partition("=")
        if "\n" in value or "\r" in value:
            raise RegistryLocationError(f"the registry env file's {key} contains a line break")
        out.append(f"{key}={shlex.quote(value)}")  # readable by `set -a; . FILE`, systemd and read_env_file alike
    return "\n".join(out) + "\n"


__all__ = [
    "CA_FILE_ENV", "CLIENT_ID_ENV", "CONTAINER_ENV", "DEFAULT_CONTAINER", "ENV_FILE_KEYS", "OUTPUT_CLIENT_ID",
    "OUTPUT_CONTAINER", "OUTPUT_URL", "REGISTRY_ENV", "AccountUrl", "ConnectionString", "Identity", "Location",
    "RegistryLocationError", "RegistrySettings", "check_ca_file", "check_client_id", "check_container",
    "parse_account_url", "parse_connection_string", "parse_location", "read_env_file", "render_env_file",
    "resolve_settings", "settings_from_env", "settings_from_outputs",
]
