"""What the Pulumi CLI does around the program, replayed where the CLI cannot be installed.

- `pulumi up` on a fresh machine: the Python language host reads `Pulumi.yaml`'s runtime options, creates the
  virtualenv, upgrades pip/setuptools/wheel and installs `requirements.txt`, then runs `main` (infra/).
- The program then runs against Pulumi's mock runtime instead of the Azure Resource Manager.
- `pulumi stack output --json` writes one JSON object of the outputs, secrets as "[secret]" unless --show-secrets.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from exaone_lora import PROJECT
from provisioning.outputs import HIDDEN_SECRET

# The program's secret outputs (infra/program.py marks them with pulumi.Output.secret).
SECRET_OUTPUTS = frozenset({"apiKey"})

_RUNNER = """
import json, runpy, sys
from pathlib import Path
import pulumi
root, project, stack, config = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
sys.path.insert(0, root)
from infra.mocks import run_under_mocks
pulumi.runtime.set_all_config(config)
exports = {}
def program():
    pulumi.export = lambda key, value: exports.__setitem__(key, value)
    runpy.run_path(str(Path(root) / "infra" / "__main__.py"), run_name="__main__")
    return exports
run = run_under_mocks(project, stack, program)
print(json.dumps({"outputs": run.outputs, "resources": len(run.resources)}, default=str))
"""


class PulumiReplayError(RuntimeError):
    """A step the Pulumi CLI would have failed at; the message carries its output."""


def runtime_options(project_dir: Path) -> dict[str, Any]:
    document = yaml.safe_load((project_dir / "Pulumi.yaml").read_text())
    runtime = document.get("runtime")
    if not isinstance(runtime, dict) or runtime.get("name") != "python":
        raise PulumiReplayError("Pulumi.yaml: runtime must be python with options (toolchain, virtualenv)")
    return dict(runtime.get("options") or {})


def install_language_host(project_dir: Path, log: Path) -> Path:
    """Create the program's virtualenv as the language host does (toolchain pip); returns its python."""
    options = runtime_options(project_dir)
    if options.get("toolchain", "pip") != "pip":
        raise PulumiReplayError(f"only the pip toolchain is replayed here, Pulumi.yaml has {options.get('toolchain')}")
    venv = project_dir / str(options.get("virtualenv") or "venv")
    requirements = project_dir / "requirements.txt"
    if not requirements.exists():
        raise PulumiReplayError(f"{requirements}: missing; the language host would create an empty venv and the program "
                                "would fail at `import pulumi`")
    python = venv / "bin" / "python"
    steps = [[sys.executable, "-m", "venv", str(venv)],
             [str(python), "-m", "pip", "install", "--upgrade", "pip", "setuptools", "wheel"],
             [str(python), "-m", "pip", "install", "-r", str(requirements)]]
    with log.open("ab") as out:
        for step in steps:
            done = subprocess.run(step, cwd=project_dir, stdout=out, stderr=subprocess.STDOUT, timeout=1800)
            if done.returncode != 0:
                raise PulumiReplayError(f"`{' '.join(step)}` failed ({done.returncode}); see {log}")
    return python


def run_program(python: Path, project_dir: Path, stack: str, config: Mapping[str, str],
                project: str = PROJECT) -> dict[str, Any]:
    """Run the program's entry point (`main` of Pulumi.yaml) with `python` under the mock runtime."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run([str(python), "-c", _RUNNER, str(project_dir), project, stack, json.dumps(dict(config))],
                          cwd=project_dir / "infra", env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise PulumiReplayError(f"the program failed under `pulumi up -s {stack}`:\n{done.stderr[-4000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def config_set(stack_file: Path, values: Mapping[str, Any]) -> None:
    """`pulumi config set KEY VALUE` for each item: the plain value lands in the stack file's `config:`."""
    document = yaml.safe_load(stack_file.read_text()) or {}
    document.setdefault("config", {}).update(values)
    stack_file.write_text(yaml.safe_dump(document, sort_keys=False))


def stack_output_json(outputs: Mapping[str, Any], *, show_secrets: bool = False) -> str:
    """The text of `pulumi stack output --json [--show-secrets]`."""
    shown = {k: (v if show_secrets or k not in SECRET_OUTPUTS else HIDDEN_SECRET) for k, v in outputs.items()}
    return json.dumps(shown, indent=2, sort_keys=True) + "\n"
