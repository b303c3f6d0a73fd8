"""Where the registry is: account URLs, loopback-only connection strings, stack outputs files, env files.

No server here: every check happens before anything is contacted, and every refusal names what is wrong."""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest
from azure.identity import ManagedIdentityCredential
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exaone_lora.spec import load_spec
from infra.preview import run_program
from service.registry import AdapterRegistry, open_registry
from service.registry_location import (
    OUTPUT_CLIENT_ID,
    OUTPUT_CONTAINER,
    OUTPUT_URL,
    AccountUrl,
    ConnectionString,
    RegistryLocationError,
    RegistrySettings,
    check_container,
    parse_location,
    read_env_file,
    render_env_file,
    resolve_settings,
    settings_from_outputs,
)
from tests.support.processes import AZURITE_KEY, REPO
from tests.support.registry import HOST_CLIENT_ID

BOUNDED = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# Not contacted: constructing a client does no I/O.
CREDENTIAL = ManagedIdentityCredential(client_id=HOST_CLIENT_ID)
AZURITE_CONN = (f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};"
                "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;")


def test_account_urls_of_azure_and_of_azurite() -> None:
    assert parse_location("https://adaptersprod01.blob.core.windows.net/") == AccountUrl(
        "https://adaptersprod01.blob.core.windows.net", "adaptersprod01")
    assert parse_location("https://127.0.0.1:10443/devstoreaccount1") == AccountUrl(
        "https://127.0.0.1:10443/devstoreaccount1", "devstoreaccount1")
    conn = parse_location(AZURITE_CONN)
    assert isinstance(conn, ConnectionString) and conn.blob_endpoint == "http://127.0.0.1:10000/devstoreaccount1"
    registry = open_registry("https://adaptersprod01.blob.core.windows.net", "adapters", credential=CREDENTIAL)
    assert registry.container.url == "https://adaptersprod01.blob.core.windows.net/adapters"


@pytest.mark.parametrize(("location", "says"), [
    ("http://adapters01.blob.core.windows.net", "must use https"),
    ("https://adapters01.blob.core.windows.net/?sv=2024&sig=abc", "SAS"),
    ("https://user:pw@adapters01.blob.core.windows.net", "user name or password"),
    ("https://adapters01.blob.core.windows.net/adapters", "without a path"),
    ("https://evil.example.com", "<account>.blob.core.windows.net"),
    ("https://Ab.blob.core.windows.net", "3-24 lowercase"),
    ("https://127.0.0.1:10000", "only path segment"),
    ("https://127.0.0.1:99999/devstoreaccount1", "not a valid URL"),
    ("adapters01", "neither an account URL nor a connection string"),
    ("", "is empty"),
    ("https://adapters01.blob.core.windows.net/$(id)", "without a path"),
    ("https://adapters01.blob.core.windows.net\n", None),  # stripped: env files end lines
])
def test_malformed_urls_are_refused_saying_why(location: str, says: str | None) -> None:
    if says is None:
        assert isinstance(parse_location(location), AccountUrl)
        return
    with pytest.raises(RegistryLocationError, match=says.replace("$", r"\$").replace("?", r"\?")):
        parse_location(location)


@pytest.mark.parametrize("conn", [
    f"DefaultEndpointsProtocol=https;AccountName=adapters01;AccountKey={AZURITE_KEY};EndpointSuffix=core.windows.net",
    f"AccountName=adapters01;AccountKey={AZURITE_KEY}",
    "BlobEndpoint=https://adapters01.blob.core.windows.net;SharedAccessSignature=sv=2024&sig=abc",
    f"AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};BlobEndpoint=http://10.0.0.4:10000/devstoreaccount1",
])
def test_no_account_key_or_sas_ever_goes_to_a_non_loopback_endpoint(conn: str) -> None:
    with pytest.raises(RegistryLocationError, match="only for the local dev stack's Azurite on loopback") as refused:
        open_registry(conn)
    assert "storageBlobUrl" in str(refused.value) and AZURITE_KEY not in str(refused.value)


def test_connection_string_parts_are_checked() -> None:
    for conn, says in [("AccountName=devstoreaccount1;AccountKey=not base64!;BlobEndpoint=http://127.0.0.1:1/x", "whitespace"),
                       ("AccountName=devstoreaccount1;AccountKey=%%%%;BlobEndpoint=http://127.0.0.1:1/x", "not base64"),
                       ("AccountName=a;AccountName=b;BlobEndpoint=http://127.0.0.1:1/x", "given twice"),
                       ("Password=x;BlobEndpoint=http://127.0.0.1:1/x", "unknown key 'Password'"),
                       ("BlobEndpoint=http://127.0.0.1:1/x", "no AccountKey or SharedAccessSignature"),
                       ("AccountKey=AAAA;BlobEndpoint=http://127.0.0.1:1/x", "AccountKey needs AccountName"),
                       ("BlobEndpoint=ftp://127.0.0.1:1/x;SharedAccessSignature=sig=1", "must use https|http or https")]:
        with pytest.raises(RegistryLocationError, match=says):
            parse_location(conn)


def test_the_host_identity_needs_a_guid_client_id() -> None:
    url = "https://adapters01.blob.core.windows.net"
    with pytest.raises(RegistryLocationError, match="needs its client id"):
        open_registry(url, identity="host")
    with pytest.raises(RegistryLocationError, match="is not a GUID"):
        open_registry(url, identity="host", client_id="adapters-reader")
    with pytest.raises(RegistryLocationError, match="identity must be 'operator' or 'host'"):
        open_registry(url, identity="root")  # type: ignore[arg-type]
    with pytest.raises(RegistryLocationError, match=r"CA file .* does not exist"):
        open_registry(url, ca_file="/nonexistent/ca.pem", credential=CREDENTIAL)
    with pytest.raises(RegistryLocationError, match="container 'Adapters'"):
        open_registry(url, "Adapters", credential=CREDENTIAL)


# ------------------------------------------------------------ generated hostile input

HOSTILE = st.sampled_from([";", "$(id)", "`id`", " ", "\t", "\n", "\x00", "'", '"', "?sig=x", "#", "@", "%2F", "../",
                           "\u00e9", "\u202e", "//", ":", "=", "AccountKey=", "http://", "https://", "\\", "*"])


@st.composite
def mangled(draw: st.DrawFn) -> str:
    base = draw(st.sampled_from(["https://adapters01.blob.core.windows.net", "https://127.0.0.1:10443/devstoreaccount1",
                                 AZURITE_CONN]))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(base)))
        base = base[:at] + draw(HOSTILE) + base[at:]
    return base


def _check_accepted(location: str) -> None:
    """An accepted location is one of the two safe shapes; anything else must have been refused."""
    parsed = parse_location(location)
    if isinstance(parsed, AccountUrl):
        assert parsed.url.startswith("https://") and "?" not in parsed.url and "@" not in parsed.url
        assert all(ch in string.ascii_letters + string.digits + ":/.-" for ch in parsed.url), parsed.url
    else:
        host = parsed.blob_endpoint.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)[0].strip("[]")
        assert host in ("127.0.0.1", "localhost", "::1") or host.startswith("127."), parsed.blob_endpoint


@BOUNDED
@given(st.one_of(st.text(max_size=80), mangled()))
def test_any_location_is_accepted_safely_or_refused_clearly(location: str) -> None:
    try:
        _check_accepted(location)
        registry = open_registry(location, "adapters", credential=CREDENTIAL)
    except RegistryLocationError as exc:
        message = str(exc)
        assert message and "\n" not in message
        assert AZURITE_KEY not in message and "sig=x" not in message  # a refused key or SAS is never echoed
        return
    assert isinstance(registry, AdapterRegistry)


@BOUNDED
@given(st.text(max_size=70))
def test_any_container_name_is_valid_or_refused_naming_it(name: str) -> None:
    try:
        check_container(name)
    except RegistryLocationError as exc:
        assert str(exc).startswith(f"container {name!r}")
        return
    assert 3 <= len(name) <= 63 and "--" not in name and name == name.lower() and name[0] != "-" != name[-1]


@BOUNDED
@given(account=st.from_regex(r"[a-z0-9]{3,24}", fullmatch=True), key=st.binary(min_size=1, max_size=64),
       suffix=st.sampled_from(["core.windows.net", "core.chinacloudapi.cn", "example.com"]))
def test_generated_azure_connection_strings_are_all_refused(account: str, key: bytes, suffix: str) -> None:
    import base64

    conn = f"DefaultEndpointsProtocol=https;AccountName={account};AccountKey={base64.b64encode(key).decode()};" \
           f"EndpointSuffix={suffix}"
    with pytest.raises(RegistryLocationError, match="loopback"):
        parse_location(conn)


# ------------------------------------------------------------ stack outputs


@pytest.fixture(scope="module")
def poc_outputs() -> dict[str, object]:
    """What `pulumi stack output --json -s poc` prints, from the real program under Pulumi's mock runtime."""
    return dict(run_program(load_spec("poc", REPO)).outputs)


def test_the_poc_programs_outputs_name_the_registry(poc_outputs: dict[str, object], tmp_path: Path) -> None:
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps(poc_outputs, indent=2) + "\n")
    found = settings_from_outputs(path)
    assert found == RegistrySettings(str(poc_outputs[OUTPUT_URL]), str(poc_outputs[OUTPUT_CONTAINER]),
                                     str(poc_outputs[OUTPUT_CLIENT_ID]))
    assert found.location.endswith(".blob.core.windows.net") and found.client_id is not None
    registry = found.open("host")
    assert registry.container.url == f"{poc_outputs[OUTPUT_URL]}/{poc_outputs[OUTPUT_CONTAINER]}"
    # A flag given beside the file overrides only what it names.
    assert resolve_settings(outputs=path, container="other-adapters", env={}).container == "other-adapters"
    with pytest.raises(RegistryLocationError, match="not both"):
        resolve_settings(registry=found.location, outputs=path, env={})


@pytest.mark.parametrize("key", [OUTPUT_URL, OUTPUT_CONTAINER])
def test_an_outputs_file_without_the_registry_names_the_missing_key(poc_outputs: dict[str, object], tmp_path: Path,
                                                                    key: str) -> None:
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps({k: v for k, v in poc_outputs.items() if k != key}))
    with pytest.raises(RegistryLocationError, match=f"has no '{key}' output"):
        settings_from_outputs(path)


@pytest.mark.parametrize(("content", "says"), [
    ("not json", "is not JSON"), ("[1, 2]", "must hold a JSON object"),
    (json.dumps({OUTPUT_URL: "[secret]", OUTPUT_CONTAINER: "adapters"}), "must be a plain string"),
    (json.dumps({OUTPUT_URL: "https://a.example.com", OUTPUT_CONTAINER: "adapters"}), "storageBlobUrl in"),
    (json.dumps({OUTPUT_URL: "https://adapters01.blob.core.windows.net", OUTPUT_CONTAINER: "adapters",
                 OUTPUT_CLIENT_ID: "me"}), "identityClientId in .* is not a GUID"),
])
def test_broken_outputs_files_are_refused_clearly(tmp_path: Path, content: str, says: str) -> None:
    path = tmp_path / "outputs.json"
    path.write_text(content)
    with pytest.raises(RegistryLocationError, match=says):
        settings_from_outputs(path)
    with pytest.raises(RegistryLocationError, match="cannot read stack outputs"):
        settings_from_outputs(tmp_path / "missing.json")


@BOUNDED
@given(st.dictionaries(st.sampled_from([OUTPUT_CONTAINER, OUTPUT_CLIENT_ID, "sshUser", "hostIps", "storageAccount"]),
                       st.one_of(st.text(max_size=20), st.integers(), st.none(), st.lists(st.text(max_size=5)))))
def test_generated_outputs_without_the_url_always_name_it(tmp_path_factory: pytest.TempPathFactory,
                                                          outputs: dict[str, object]) -> None:
    path = tmp_path_factory.mktemp("outputs") / "outputs.json"
    path.write_text(json.dumps(outputs))
    with pytest.raises(RegistryLocationError, match=OUTPUT_URL):
        settings_from_outputs(path)


# ------------------------------------------------------------ the host's env file


def test_the_host_env_file_round_trips(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    wanted = RegistrySettings("https://127.0.0.1:10443/devstoreaccount1", "adapters", HOST_CLIENT_ID, ca)
    path = tmp_path / "registry.env"
    path.write_text(render_env_file(wanted, identity_endpoint="http://127.0.0.1:5/msi/token", identity_header="h"))
    env = read_env_file(path)
    assert env["IDENTITY_ENDPOINT"] == "http://127.0.0.1:5/msi/token" and env["AZURE_CLIENT_ID"] == HOST_CLIENT_ID
    assert resolve_settings(env=env) == wanted
    path.write_text("EXAONE_LORA_REGISTRY=https://adapters01.blob.core.windows.net\nLD_PRELOAD=/tmp/x.so\n")
    with pytest.raises(RegistryLocationError, match=r"registry.env:2: expected one of .* got 'LD_PRELOAD'"):
        read_env_file(path)
    with pytest.raises(RegistryLocationError, match="no registry: give --registry"):
        resolve_settings(env={})


@BOUNDED
@given(header=st.text(alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\r\n\x00"), max_size=40))
def test_env_file_values_survive_the_shell_and_the_reader(tmp_path_factory: pytest.TempPathFactory, header: str) -> None:
    """Whatever the identity header holds, `. FILE` in a shell and read_env_file agree on it (quoted, never run)."""
    import subprocess

    settings_ = RegistrySettings(AZURITE_CONN, "adapters")
    path = tmp_path_factory.mktemp("envfile") / "registry.env"
    path.write_text(render_env_file(settings_, identity_endpoint="http://127.0.0.1:5/msi/token", identity_header=header))
    read = read_env_file(path)
    assert read["IDENTITY_HEADER"] == header and read["EXAONE_LORA_REGISTRY"] == AZURITE_CONN
    shell = subprocess.run(["sh", "-c", '. "$1" && printf %s "$IDENTITY_HEADER"', "sh", str(path)], capture_output=True,
                           timeout=30, env={"PATH": "/usr/bin:/bin"})
    assert shell.returncode == 0 and shell.stdout.decode("utf-8", "surrogateescape") == header
