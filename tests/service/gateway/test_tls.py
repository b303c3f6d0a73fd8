"""A public API is served over TLS only: the gateway's public listener takes the operator's certificate, the unit
of a stack with public exposure passes it, and bootstrap installs a valid pair or refuses before anything starts."""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path

import httpx
import pytest

from exaone_lora.local.processes import free_port
from exaone_lora.local.tls import self_signed_cert
from exaone_lora.spec import load_spec
from provisioning.bootstrap import BootstrapError, check_tls_pair, ensure_tls
from provisioning.units import gateway_unit
from service.gateway import create_gateway
from service.gateway.server import Tls, gateway_in_thread
from service.layout import DEFAULT_LAYOUT
from tests.provisioning.test_quoting import RecordingConnection
from tests.support.gateway_replicas import admin_key
from tests.support.processes import REPO

KEY = "k" * 32


def test_the_public_listener_serves_https_with_the_operators_certificate(tmp_path: Path) -> None:
    cert, key = self_signed_cert(tmp_path)
    apps = create_gateway(["http://127.0.0.1:9"], admin_key=admin_key(), api_key=KEY, require_api_key=True)
    with gateway_in_thread(apps, ("127.0.0.1", free_port()), ("127.0.0.1", free_port()), tls=Tls(cert, key)) as gw:
        assert gw.public_url.startswith("https://")
        with httpx.Client(verify=ssl.create_default_context(cafile=str(cert)), timeout=10) as client:
            assert client.get(f"{gw.public_url}/v1/models").status_code == 401  # TLS, and still the key
            authorized = client.get(f"{gw.public_url}/v1/models", headers={"Authorization": f"Bearer {KEY}"})
            assert authorized.status_code != 401
        with pytest.raises(httpx.HTTPError):  # plain HTTP gets no answer from a TLS listener
            httpx.get(gw.public_url.replace("https://", "http://") + "/v1/models", timeout=5)
        # Untrusted by default: a client without the operator's CA refuses the self-signed certificate.
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{gw.public_url}/v1/models", timeout=5)


def test_a_public_stack_renders_tls_and_a_private_one_does_not() -> None:
    pilot, poc = load_spec("pilot", REPO), load_spec("poc", REPO)
    assert pilot.api.exposure == "public" and poc.api.exposure == "private"
    unit = gateway_unit(pilot)
    assert f"--tls-cert {DEFAULT_LAYOUT.tls_cert} --tls-key {DEFAULT_LAYOUT.tls_key}" in unit
    assert "--require-api-key" in unit and "--tls-cert" not in gateway_unit(poc)


def test_bootstrap_refuses_a_public_stack_without_a_certificate(tmp_path: Path) -> None:
    c = RecordingConnection()
    c.run = lambda command, **_: type("R", (), {"stdout": "", "stderr": "", "exited": 1})()  # type: ignore[method-assign]
    with pytest.raises(BootstrapError, match="exposes its API publicly, over TLS only: pass --tls-cert"):
        ensure_tls(c, load_spec("pilot", REPO), None, None)  # type: ignore[arg-type]
    assert not ensure_tls(c, load_spec("poc", REPO), None, None).changed  # type: ignore[arg-type]


def test_a_pair_that_does_not_belong_together_or_expired_is_refused(tmp_path: Path) -> None:
    cert, key = self_signed_cert(tmp_path / "a")
    other_cert, other_key = self_signed_cert(tmp_path / "b")
    check_tls_pair(cert, key)
    with pytest.raises(BootstrapError, match="does not belong to certificate"):
        check_tls_pair(cert, other_key)
    (tmp_path / "garbage.pem").write_text("not a certificate")
    with pytest.raises(BootstrapError, match="not a PEM certificate chain"):
        check_tls_pair(tmp_path / "garbage.pem", key)
    with pytest.raises(BootstrapError, match="expired on"):
        check_tls_pair(*_expired_pair(tmp_path / "old"))
    assert other_cert.exists()


def _expired_pair(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir()
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "expired.example")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=3))
            .not_valid_after(now - dt.timedelta(days=2)).sign(key, hashes.SHA256()))
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
    return directory / "cert.pem", directory / "key.pem"
