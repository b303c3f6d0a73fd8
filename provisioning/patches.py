"""`patch-model`: the reference design's two compatibility patches for EXAONE's remote code.

1. configuration_exaone.py: `RopeParameters` import falls back to `typing.Any` (older transformers lack it).
2. modeling_exaone.py: `check_model_inputs` and `maybe_autocast` imports fall back to transformers'
   `utils.generic` (where transformers 5 keeps them) and then to no-op stubs.

A patch is applied only when the file's import fails under the host's installed transformers; the original
is kept as `<file>.orig`, and the patched files must import afterwards, otherwise the original is restored.
"""

from __future__ import annotations

import json
import re
import shlex
import uuid
from dataclasses import dataclass

from fabric import Connection

from provisioning.remote import out, put_bytes, sh
from provisioning.results import Change
from service.layout import DEFAULT_LAYOUT

MARK = "# exaone-lora compat patch"
CONFIG_FILE = "configuration_exaone.py"
MODELING_FILE = "modeling_exaone.py"
_IMPORT = re.compile(r"^from (transformers[\w.]*) import (\([\w,\s]+?\)|[\w, ]+?)[ \t]*$", re.MULTILINE)

ROPE_FALLBACK = f"""{MARK}: RopeParameters
try:
    from transformers.modeling_rope_utils import RopeParameters
except ImportError:
    from typing import Any as RopeParameters  # type: ignore[assignment]
"""

CHECK_INPUTS_FALLBACK = f"""{MARK}: check_model_inputs
try:
    from {{module}} import check_model_inputs
except ImportError:
    try:
        from transformers.utils.generic import check_model_inputs
    except ImportError:
        def check_model_inputs(func=None, **_kwargs):  # type: ignore[no-redef]
            return func if func is not None else (lambda f: f)
"""

AUTOCAST_FALLBACK = f"""{MARK}: maybe_autocast
try:
    from {{module}} import maybe_autocast
except ImportError:
    try:
        from transformers.utils.generic import maybe_autocast
    except ImportError:
        from contextlib import contextmanager

        @contextmanager  # type: ignore[no-redef]
        def maybe_autocast(device_type=None, *args, **kwargs):
            yield
"""

FALLBACKS = {"RopeParameters": ROPE_FALLBACK, "check_model_inputs": CHECK_INPUTS_FALLBACK,
             "maybe_autocast": AUTOCAST_FALLBACK}
PATCHED_NAMES = {CONFIG_FILE: ("RopeParameters",), MODELING_FILE: ("check_model_inputs", "maybe_autocast")}

# Imports the file the way transformers' dynamic module loader does: as a module of a package (so that the
# modeling file's relative `from .configuration_exaone import ...` resolves), under the host's python.
IMPORT_CHECK = r"""
import importlib, json, pathlib, shutil, sys, tempfile
src, modules = pathlib.Path(sys.argv[1]), sys.argv[2:]
root = pathlib.Path(tempfile.mkdtemp())
pkg = root / "exaone_remote_check"
pkg.mkdir()
(pkg / "__init__.py").write_text("")
for f in src.glob("*.py"):
    shutil.copy(f, pkg / f.name)
sys.path.insert(0, str(root))
results = {}
for module in modules:
    try:
        importlib.import_module("exaone_remote_check." + module)
        results[module] = "ok"
    except ImportError as err:
        results[module] = f"ImportError: {err}"
shutil.rmtree(root)
print(json.dumps(results))
"""


@dataclass(frozen=True)
class ImportCheck:
    ok: bool
    message: str


def patch_source(text: str, names: tuple[str, ...]) -> str:
    """Rewrite each plain `from transformers... import X` of `names` into a guarded import (pure; idempotent:
    a guarded import sits inside `try:`, indented, so the pattern anchored at column 0 no longer matches)."""
    for match in reversed(list(_IMPORT.finditer(text))):
        module = match.group(1)
        imported = [n.strip() for n in match.group(2).strip("()").replace("\n", " ").split(",") if n.strip()]
        wanted = [n for n in imported if n in names]
        if not wanted:
            continue
        kept = [n for n in imported if n not in names]
        block = f"from {module} import {', '.join(kept)}\n" if kept else ""
        block += "".join(FALLBACKS[n].replace("{module}", module) for n in wanted)
        text = text[: match.start()] + block.rstrip("\n") + text[match.end():]
    return text


def import_checks(c: Connection, model_dir: str, modules: list[str], python: str,
                  as_user: str = DEFAULT_LAYOUT.service_user) -> dict[str, ImportCheck]:
    """Import each module of `model_dir` under `python` (one process: torch and transformers load once), as the
    service user: the model's remote code is what vLLM runs as that user, and root never runs it."""
    script = f"/tmp/exaone-import-check-{uuid.uuid4().hex[:8]}.py"
    put_bytes(c, IMPORT_CHECK.encode(), script)
    env = f"PYTHONDONTWRITEBYTECODE=1 HF_HUB_OFFLINE=1 HF_HOME={DEFAULT_LAYOUT.cache / 'hf'}"
    res = sh(c, f"{env} runuser -u {shlex.quote(as_user)} -- {shlex.quote(python)} {script} "
                f"{shlex.quote(model_dir)} {' '.join(modules)}; rc=$?; rm -f {script}; exit $rc", check=False, timeout=600)
    try:
        results = json.loads(str(res.stdout).strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise RuntimeError(f"import check under {python} failed to run: {str(res.stderr).strip()[-800:]}") from None
    return {m: ImportCheck(v == "ok", v) for m, v in results.items()}


def import_check(c: Connection, model_dir: str, module: str, python: str) -> ImportCheck:
    return import_checks(c, model_dir, [module], python)[module]


def patch_model(c: Connection, model_dir: str, python: str, owner: str = "root") -> list[Change]:
    """Patch what fails to import in `model_dir`; verify that the patched modules import afterwards."""
    changes: list[Change] = []
    present = [f for f in PATCHED_NAMES if out(c, f"test -f {shlex.quote(model_dir)}/{f} && echo yes || echo no") == "yes"]
    changes += [Change(f"patch {f}", False, "file not present") for f in PATCHED_NAMES if f not in present]
    before = import_checks(c, model_dir, [f.removesuffix(".py") for f in present], python) if present else {}
    patched_files: list[str] = []
    for filename in present:
        names, check = PATCHED_NAMES[filename], before[filename.removesuffix(".py")]
        if check.ok:
            changes.append(Change(f"patch {filename}", False, "imports under the installed transformers: not needed"))
            continue
        if not any(name in check.message for name in names):
            raise RuntimeError(f"{filename} fails to import for a reason these patches do not cover: {check.message}")
        path = f"{model_dir}/{filename}"
        text = out(c, f"cat {shlex.quote(path)}") + "\n"
        patched = patch_source(text, names)
        if patched == text:
            raise RuntimeError(f"{filename}: import fails ({check.message}) but no matching import line was found")
        quoted, backup = shlex.quote(path), shlex.quote(f"{path}.orig")
        sh(c, f"test -e {backup} || cp -p {quoted} {backup}")
        put_bytes(c, patched.encode(), path, owner=owner)
        patched_files.append(filename)
        changes.append(Change(f"patch {filename}", True, f"fixed: {check.message}; backup {filename}.orig"))
    if patched_files:
        after = import_checks(c, model_dir, [f.removesuffix(".py") for f in present], python)
        failed = {m: r.message for m, r in after.items() if not r.ok}
        if failed:
            for filename in patched_files:
                sh(c, f"cp -p {shlex.quote(f'{model_dir}/{filename}.orig')} {shlex.quote(f'{model_dir}/{filename}')}")
            raise RuntimeError(f"still failing after patching ({failed}); originals restored")
    return changes
