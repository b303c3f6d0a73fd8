"""Small, idempotent building blocks over a Fabric `Connection`.

Every command goes through `sh`, which adds `sudo -n` for non-root users (the Azure VM's admin user)
and quotes the script once, so callers write plain shell.
"""

from __future__ import annotations

import hashlib
import io
import shlex
import time
import uuid
from pathlib import Path
from typing import Any

from fabric import Connection
from invoke.runners import Result


class RemoteError(RuntimeError):
    """A remote command failed; the message carries the command and its output."""


class GiveUp(RuntimeError):
    """Raised by a `wait_for` predicate when waiting longer cannot help (a unit that keeps crashing)."""


def known_hosts_file(c: Connection) -> Path:
    """Where this host's key is remembered: ssh_config's UserKnownHostsFile for it, else ~/.ssh/known_hosts."""
    configured = c.ssh_config.get("userknownhostsfile")
    path = Path(str(configured).split()[0] if configured else "~/.ssh/known_hosts").expanduser()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    return path


def remember_host_keys(c: Connection) -> Connection:
    """OpenSSH's `StrictHostKeyChecking accept-new` for a Fabric connection (Fabric itself accepts any key, every
    time): a host seen for the first time is written to the known-hosts file, a known host whose key changed is
    refused (paramiko raises BadHostKeyException), so a machine that takes over a VM's address gets no command."""
    c.client.load_host_keys(str(known_hosts_file(c)))
    return c


def sh(c: Connection, script: str, *, check: bool = True, env: dict[str, str] | None = None,
       timeout: float | None = None) -> Result:
    """Run `script` with bash as root on the host; raise RemoteError with its output when it fails."""
    prefix = "" if c.user == "root" else "sudo -n "
    exports = "".join(f"export {k}={shlex.quote(v)}; " for k, v in (env or {}).items())
    command = f"{prefix}bash -c {shlex.quote('set -o pipefail; ' + exports + script)}"
    kwargs: dict[str, Any] = {"hide": True, "warn": True, "in_stream": False}
    if timeout:
        kwargs["timeout"] = timeout
    result: Result = c.run(command, **kwargs)
    if check and result.exited != 0:
        out = (result.stdout + result.stderr).strip()[-3000:]
        raise RemoteError(f"`{script[:200]}` failed on {c.host} (exit {result.exited}):\n{out}")
    return result


def out(c: Connection, script: str, **kwargs: Any) -> str:
    return str(sh(c, script, **kwargs).stdout).strip()


def ok(c: Connection, script: str) -> bool:
    return sh(c, script, check=False).exited == 0


def replace_dir(new: str, final: str) -> str:
    """Shell that puts directory `new` in place of `final` (if there is one) by renames: readers see the old
    directory or the new one, whole, never a mix."""
    new, old, final = shlex.quote(new), shlex.quote(final + ".old"), shlex.quote(final)
    return f"rm -rf {old} && if [ -e {final} ]; then mv {final} {old}; fi && mv {new} {final} && rm -rf {old}"


def sha256_text(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def remote_sha256(c: Connection, path: str) -> str | None:
    res = sh(c, f"sha256sum {shlex.quote(path)} 2>/dev/null | cut -d' ' -f1", check=False)
    value = str(res.stdout).strip()
    return value or None


def put_bytes(c: Connection, data: bytes, path: str, *, mode: str = "0644", owner: str = "root") -> bool:
    """Install `data` at `path` (atomically: temp file + rename) unless it is already there. Returns changed."""
    if remote_sha256(c, path) == sha256_text(data) and ok(c, f"[ \"$(stat -c '%U %a' {shlex.quote(path)})\" = "
                                                          f"'{owner} {int(mode, 8):o}' ]"):
        return False
    tmp = f"/tmp/exaone-put-{uuid.uuid4().hex}"
    c.put(io.BytesIO(data), tmp)
    target = shlex.quote(path)
    sh(c, f"install -D -m {mode} -o {owner} -g {owner} {tmp} {target}.new && mv -f {target}.new {target}; rm -f {tmp}")
    return True


def wait_for(predicate: Any, timeout: float, interval: float = 1.0, what: str = "condition") -> None:
    """Poll `predicate()` until true; TimeoutError naming `what` otherwise (bounded: never loops forever)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except GiveUp:
            raise
        except Exception as err:  # a host rebooting or a server starting refuses connections for a while
            last = err
        time.sleep(interval)
    raise TimeoutError(f"{what} not reached within {timeout:.0f} s" + (f" (last error: {last})" if last else ""))


def http_status(c: Connection, url: str, timeout: float = 5) -> int:
    """Status of GET `url` as seen from the host itself (services listen on the host's loopback)."""
    code = out(c, f"curl -s -o /dev/null -w '%{{http_code}}' --max-time {timeout:g} {shlex.quote(url)} || true")
    return int(code) if code.isdigit() else 0
