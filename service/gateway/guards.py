"""Start-up and admin-input guards of the gateway: keys, listener addresses, adapter paths, alias domains.

Each check returns or raises with a message that names the offending value, so the CLI, the admin API and
tests show the same reason. Pure functions: no I/O except `os.path.realpath` for the symlink check.
"""

from __future__ import annotations

import ipaddress
import os
import posixpath
from pathlib import PurePosixPath

from service.gateway.names import parse_version_name

ADMIN_KEY_ENV = "EXAONE_GATEWAY_ADMIN_KEY"
API_KEY_ENV = "EXAONE_API_KEY"
ENGINE_KEY_ENV = "VLLM_API_KEY"

# Shortest key the gateway accepts (admin or public): 16 characters is ~96 bits from `token_urlsafe(12)`.
MIN_KEY_CHARS = 16

# Networks the admin listener may bind to: loopback and the private ranges of RFC 1918 / RFC 4193. An explicit
# list on purpose: `ipaddress.is_private` is also true for 0.0.0.0, ::, link-local (169.254.169.254 is the cloud
# metadata service) and documentation ranges.
_ADMIN_NETWORKS = tuple(ipaddress.ip_network(n) for n in (
    "127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "::1/128", "fc00::/7"))


class GuardError(ValueError):
    """A value the gateway refuses; the message names it and says what is accepted."""


def check_key(what: str, key: str | None, *, required: bool) -> None:
    """A key that is set must be long enough; a required one must be set."""
    if not key:
        if required:
            raise GuardError(f"{what} is required here and not set")
        return
    if len(key) < MIN_KEY_CHARS:
        raise GuardError(f"{what} is {len(key)} characters long; at least {MIN_KEY_CHARS} characters are required")



def check_admin_host(host: str) -> None:
    """The admin listener binds to loopback or one private address, never to every interface or a public one."""
    if host == "localhost":
        return
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise GuardError(f"the admin listener address must be an IP address (or localhost), got {host!r}") from None
    if address.is_unspecified:
        raise GuardError(f"the admin listener must not bind to every interface ({host}): give loopback or one "
                         "private address")
    if not any(address in network for network in _ADMIN_NETWORKS):
        raise GuardError(f"the admin listener must bind to loopback or a private address (10/8, 172.16/12, "
                         f"192.168/16, fc00::/7), not {host}")


def adapter_path(root: str | None, name: str, path: str | None) -> str:
    """Where version `name` is loaded from: `<root>/.../<name>`, never outside the gateway's adapter root.

    `path` None means `<root>/<name>`. A path that climbs out (`..`), is relative, ends in another name than the
    version's, or (on the host where it exists) leaves the root through a symlink is refused.
    """
    if root is None:
        raise GuardError("this gateway has no --adapter-root: it loads no versions through its admin API")
    base = PurePosixPath(posixpath.normpath(root))
    if path is None:
        return str(base / name)
    if not path.startswith("/"):
        raise GuardError(f"`path` must be an absolute path under {base}, got {path!r}")
    if ".." in PurePosixPath(path).parts:
        raise GuardError(f"`path` must not contain `..`: {path!r}")
    target = PurePosixPath(posixpath.normpath(path))
    if base not in target.parents:
        raise GuardError(f"`path` must be under the adapter root {base}, got {path!r}")
    if target.name != name:
        raise GuardError(f"`path` must end in the version name `{name}`, got {path!r}")
    if os.path.lexists(target):
        real, real_base = os.path.realpath(target), os.path.realpath(base)
        if os.path.commonpath([real, real_base]) != real_base:
            raise GuardError(f"`path` {path!r} leaves the adapter root through a symlink")
    return str(target)


def check_alias_target(alias: str, name: str) -> int:
    """The version number of `name` when it is a version of `alias`'s own domain (`medical` -> `medical-vN`)."""
    parsed = parse_version_name(name)
    if parsed is None:
        raise GuardError(f"`{name}` is not an immutable version name (`domain-vN`)")
    domain, number = parsed
    if domain != alias:
        raise GuardError(f"alias `{alias}` may only point at a version of its own domain (`{alias}-vN`), not `{name}`")
    return number
