"""Every remote command quotes what it interpolates: stack values that slipped past the spec loader (built here
with `model_construct`, which skips validation) and odd SSH user names reach the root shell only as quoted words.

A recording connection keeps each command the tasks send; a small POSIX quoting scanner then checks that every
character of the hostile value sits inside single quotes (or is a quote character that shlex.quote wraps in
double quotes), so no `;`, `$(...)`, space or backtick of it can act as shell syntax.
"""

from __future__ import annotations

import contextlib
import io
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exaone_lora.spec import MODEL_LICENSE_ACK, MergedReplicaSpec, load_spec
from provisioning import adapters, bootstrap, patches
from provisioning.remote import replace_dir
from tests.support.processes import REPO

HOSTILE = st.text(alphabet=st.sampled_from(list("ab/._- ;|&$`'\"\\()<>*?!{}#~\n")), min_size=1, max_size=16)


@dataclass
class Result:
    stdout: str = ""
    stderr: str = ""
    exited: int = 0


@dataclass
class RecordingConnection:
    user: str = "azureuser"
    host: str = "recorded"
    commands: list[str] = field(default_factory=list)

    def run(self, command: str, **_: Any) -> Result:
        self.commands.append(command)
        return Result()

    def put(self, local: Any, remote: str) -> None:
        self.commands.append(f"#put {remote}")

    def get(self, remote: str, local: Any) -> None:
        if isinstance(local, io.BytesIO):
            local.write(b"{}")


def inner_scripts(commands: list[str]) -> list[str]:
    """The script each `sudo -n bash -c '...'` runs (what the remote root shell parses)."""
    scripts = []
    for command in commands:
        if command.startswith("#put"):
            continue
        words = shlex.split(command)
        scripts.append(words[words.index("-c") + 1] if "-c" in words else command)
    return scripts


def dequote(script: str) -> list[tuple[str, bool]]:
    """The script's characters as the shell reads them, quote marks removed, each with whether it is literal
    (inside '...', escaped, or inside "..." and neither `$` nor a backtick)."""
    chars: list[tuple[str, bool]] = []
    state, i = "plain", 0
    while i < len(script):
        ch = script[i]
        if state == "single":
            if ch == "'":
                state = "plain"
            else:
                chars.append((ch, True))
        elif ch == "\\" and i + 1 < len(script) and (state == "plain" or script[i + 1] in '$`"\\'):
            chars.append((script[i + 1], True))
            i += 1
        elif state == "double":
            if ch == '"':
                state = "plain"
            else:
                chars.append((ch, ch not in "$`"))
        elif ch in "'\"":
            state = "single" if ch == "'" else "double"
        else:
            chars.append((ch, False))
        i += 1
    return chars


def assert_quoted(scripts: list[str], value: str) -> int:
    """Every occurrence of `value` in what the shell reads is literal; returns how many were found."""
    found = 0
    for script in scripts:
        chars = dequote(script)
        text = "".join(ch for ch, _ in chars)
        start = text.find(value)
        while start != -1:
            found += 1
            loose = [ch for ch, literal in chars[start:start + len(value)] if not literal and not (ch.isalnum() or ch in "/._-")]
            assert not loose, f"{value!r} reaches the shell with {loose} unquoted in: {script}"
            start = text.find(value, start + 1)
    return found


def hostile_spec(path: str) -> Any:
    spec = load_spec("poc", REPO)
    model = spec.model.model_construct(**(spec.model.model_dump() | {"path": path}))
    return spec.model_construct(**(dict(spec) | {"model": model, "accept_model_license": MODEL_LICENSE_ACK}))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=HOSTILE)
def test_model_paths_reach_the_root_shell_quoted(tmp_path_factory: Any, value: str) -> None:
    value = f"mk{value}km"  # markers: only the interpolated places match, never the script's own `;`
    path = "/data/models/" + value
    spec = hostile_spec(path)
    c = RecordingConnection()
    local = tmp_path_factory.mktemp("ckpt")
    (local / "config.json").write_text("{}")
    for step in (lambda: bootstrap.ensure_model(c, spec, local_path=local),  # type: ignore[arg-type]
                 lambda: bootstrap.ensure_model(c, spec, hub=True),  # type: ignore[arg-type]
                 lambda: patches.patch_model(c, path, "/opt/py"),  # type: ignore[arg-type]
                 lambda: adapters.ensure_merged(c, spec, MergedReplicaSpec(alias="medical"), "medical-v1",  # type: ignore[arg-type]
                                                report=lambda _: None, health_timeout=0)):
        with contextlib.suppress(Exception):  # canned answers end some flows early; what was sent counts
            step()
    c.commands.append(adapters.reconcile_command(spec))
    c.commands.append(replace_dir(path + ".new", path))
    assert assert_quoted(inner_scripts(c.commands), value) >= 5, "the value must reach the commands it is meant to"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(user=HOSTILE)
def test_ssh_user_names_reach_the_root_shell_quoted(tmp_path_factory: Any, user: str) -> None:
    user = f"mk{user}km"
    spec = load_spec("poc", REPO)
    c = RecordingConnection(user=user)
    local = tmp_path_factory.mktemp("ckpt")
    (local / "sub").mkdir()
    (local / "sub" / "config.json").write_text("{}")
    with contextlib.suppress(Exception):
        bootstrap.ensure_model(c, spec, local_path=local)  # type: ignore[arg-type]
    assert assert_quoted(inner_scripts(c.commands), user) >= 2


def test_the_scanner_catches_an_unquoted_value() -> None:
    value = "x;touch /tmp/p"
    assert_quoted([f"cat {shlex.quote(value)}/y"], value)
    try:
        assert_quoted([f"cat {value}/y"], value)
    except AssertionError:
        return
    raise AssertionError("an unquoted value passed the check")


def test_local_paths_never_leave_the_machine(tmp_path: Path) -> None:
    """Sanity: the recorder sees the sudo wrapper the tasks really use."""
    c = RecordingConnection()
    bootstrap.ensure_model(c, hostile_spec("/data/models/m"), hub=True)  # type: ignore[arg-type]
    assert c.commands and all(cmd.startswith(("sudo -n bash -c", "#put")) for cmd in c.commands)
