"""A managed identity without Azure: a loopback token endpoint and a TLS certificate for Azurite.

On an Azure VM, azure-identity's `ManagedIdentityCredential` asks IMDS (169.254.169.254) for a token. When
`IDENTITY_ENDPOINT` and `IDENTITY_HEADER` are set it asks that endpoint instead, in App Service's protocol
(`GET ?api-version=2019-08-01&resource=...&client_id=...` with header `X-IDENTITY-HEADER`). The endpoint here
speaks that protocol, so the host-side code is the same on Azure and in tests; only the environment differs.

It issues JWTs shaped like Entra ID's (`aud` = the requested resource, `iss` https://sts.windows.net/<tenant>/,
`nbf`/`exp`), which Azurite started with `--oauth basic` checks (it does not check signatures or roles: who may
write is the role assignment's job, checked under Pulumi's mock runtime). It can be told to issue a wrong
audience, to prove a token meant for another service is refused.

Azurite only accepts bearer tokens over HTTPS, so `self_signed_cert` makes a certificate for 127.0.0.1; its PEM
is also the CA file clients pass (`ca_file`).
"""

from __future__ import annotations

import json
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from exaone_lora.local.processes import Azurite, azurite
from exaone_lora.local.tls import self_signed_cert

if TYPE_CHECKING:
    from azure.core.credentials import AccessToken

STORAGE_AUDIENCE = "https://storage.azure.com"
WRONG_AUDIENCE = "https://management.azure.com"  # a real Entra audience, just not Storage's
TOKEN_PATH = "/msi/token"
API_VERSION = "2019-08-01"


@dataclass(frozen=True)
class TokenRequest:
    resource: str
    client_id: str | None
    audience: str  # what the issued token said


@dataclass
class TokenEndpoint:
    """A running endpoint; `env` is what a process needs for ManagedIdentityCredential to use it."""

    url: str
    header: str
    client_id: str | None
    tenant_id: str
    principal_id: str
    issued: list[TokenRequest] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        """What a process needs for azure-identity's ManagedIdentityCredential (and DefaultAzureCredential) to use it."""
        return {"IDENTITY_ENDPOINT": self.url, "IDENTITY_HEADER": self.header}

    def credential(self, client_id: str | None = None) -> StandInCredential:
        """A credential for this process that asks the endpoint directly, without touching os.environ: the operator's
        `az login` in the rehearsal. Hosts use azure-identity's ManagedIdentityCredential through `env()` instead."""
        return StandInCredential(self.url, self.header, client_id)


class StandInCredential:
    """azure-core's TokenCredential protocol over the stand-in endpoint (App Service protocol, like azure-identity)."""

    def __init__(self, url: str, header: str, client_id: str | None = None) -> None:
        self._url, self._header, self._client_id = url, header, client_id

    def get_token(self, *scopes: str, claims: str | None = None, tenant_id: str | None = None,
                  enable_cae: bool = False, **kwargs: Any) -> AccessToken:
        import httpx
        from azure.core.credentials import AccessToken
        from azure.core.exceptions import ClientAuthenticationError

        if len(scopes) != 1:
            raise ValueError(f"one scope per token, got {scopes}")
        params = {"api-version": API_VERSION, "resource": scopes[0].removesuffix("/.default")}
        if self._client_id:
            params["client_id"] = self._client_id
        response = httpx.get(self._url, params=params, headers={"X-IDENTITY-HEADER": self._header}, timeout=30)
        body = response.json()
        if response.status_code != 200:
            raise ClientAuthenticationError(f"the stand-in token endpoint refused: {body.get('message', body)}")
        return AccessToken(str(body["access_token"]), int(body["expires_on"]))


def _jwt(claims: dict[str, Any], key: Any) -> str:
    import jwt  # PyJWT (msal's dependency)

    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": "exaone-lora-stand-in"})


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        return None  # requests are recorded in TokenEndpoint.issued / .refused instead

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _refuse(self, status: int, message: str) -> None:
        self.server.endpoint.refused.append(message)
        self._reply(status, {"statusCode": status, "message": message})

    def do_GET(self) -> None:
        endpoint = self.server.endpoint
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        if parts.path != TOKEN_PATH:
            return self._refuse(404, f"no such path {parts.path}")
        if not secrets.compare_digest(self.headers.get("X-IDENTITY-HEADER", ""), endpoint.header):
            return self._refuse(401, "X-IDENTITY-HEADER is missing or wrong")
        if query.get("api-version") != API_VERSION:
            return self._refuse(400, f"api-version must be {API_VERSION}")
        resource = query.get("resource", "").removesuffix("/.default")
        if not resource:
            return self._refuse(400, "resource is required")
        asked = query.get("client_id")
        if asked and endpoint.client_id is not None and asked.lower() != endpoint.client_id:
            # A VM answers for the identities assigned to it only: its user-assigned one (by client id) and its
            # system-assigned one (no client id asked). Without a configured client id, any is answered.
            return self._refuse(400, f"no managed identity with client_id {asked!r} is assigned to this host")
        now = int(time.time())
        audience = self.server.audience or resource
        claims = {"aud": audience, "iss": f"https://sts.windows.net/{endpoint.tenant_id}/", "iat": now, "nbf": now - 60,
                  "exp": now + self.server.lifetime_s, "oid": endpoint.principal_id, "sub": endpoint.principal_id,
                  "tid": endpoint.tenant_id, "appid": endpoint.client_id or endpoint.principal_id, "idtyp": "app",
                  "ver": "1.0"}
        endpoint.issued.append(TokenRequest(resource, asked, audience))
        self._reply(200, {"access_token": _jwt(claims, self.server.key), "expires_on": str(claims["exp"]),
                          "resource": resource, "token_type": "Bearer", "client_id": endpoint.client_id or ""})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    endpoint: TokenEndpoint
    key: Any
    audience: str | None
    lifetime_s: int


@contextmanager
def token_endpoint(*, client_id: str | None = None, tenant_id: str | None = None, audience: str | None = None,
                   lifetime_s: int = 3600, port: int = 0) -> Iterator[TokenEndpoint]:
    """An App Service-protocol managed identity endpoint on 127.0.0.1 (a thread of this process).

    `client_id`: the user-assigned identity it holds (a stack's `identityClientId`): a request naming another client
    id is refused, as IMDS refuses an identity not assigned to the VM. Requests naming none get the system-assigned
    identity (the operator's sign-in in tests and the rehearsal). None: every client id is answered.
    `audience`: issue this `aud` whatever was asked (e.g. WRONG_AUDIENCE); None: the requested resource.
    """
    from cryptography.hazmat.primitives.asymmetric import rsa

    server = _Server(("127.0.0.1", port), _Handler)
    server.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    server.audience = audience
    server.lifetime_s = lifetime_s
    server.endpoint = TokenEndpoint(
        url=f"http://127.0.0.1:{server.server_address[1]}{TOKEN_PATH}", header=secrets.token_urlsafe(24),
        client_id=client_id.lower() if client_id else None, tenant_id=tenant_id or str(uuid.uuid4()),
        principal_id=str(uuid.uuid4()))
    thread = threading.Thread(target=server.serve_forever, name="identity-endpoint", daemon=True)
    thread.start()
    try:
        yield server.endpoint
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@contextmanager
def azurite_oauth(workdir: Path, log: Path) -> Iterator[Azurite]:
    """Azurite over HTTPS with `--oauth basic` (Entra ID bearer tokens); `.account_url` and `.ca_file` for clients."""
    with azurite(workdir, log, https_oauth=True) as service:
        yield service


__all__ = ["STORAGE_AUDIENCE", "TOKEN_PATH", "WRONG_AUDIENCE", "StandInCredential", "TokenEndpoint", "TokenRequest",
           "azurite_oauth", "self_signed_cert", "token_endpoint"]
