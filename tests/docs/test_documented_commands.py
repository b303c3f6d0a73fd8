"""Every command the README and docs show must work exactly as written.

- `fab ...` lines: the task exists and takes every flag shown, and the stack is always named (no default stack).
- `pulumi config set` lines: the key is one the spec (`exaone-lora:`) or the program (`ops:`) reads.
- `exaone-lora ...` lines that need neither Azure nor a running stack are run here and must succeed.
The same fab lines run end to end in `tests/exaone_lora/rehearsal/` (as `exaone-lora rehearse --stack poc` runs them).
"""

from __future__ import annotations

import inspect
import os
import re
import shlex
import subprocess
from dataclasses import dataclass

import pytest

import fabfile
from exaone_lora.spec import DeploymentSpec
from infra.registry import RegistryConfig
from tests.support.processes import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"```(?:bash|console|sh)?\n(.*?)```", re.DOTALL)
# exaone-lora commands that read only stack files and run offline: run them as written.
OFFLINE = re.compile(r"^(\.venv/bin/)?exaone-lora (plan|infra (preview|quota|costs)|obs (targets|render)|[a-z]+ --help|"
                     r"--help)\b")


@dataclass(frozen=True)
class Line:
    doc: str
    before: str  # the doc's command blocks up to this line's (what a reader has exported by then)
    text: str


def _lines() -> list[Line]:
    found = []
    for doc in DOCS:
        before = ""
        for block in FENCE.findall(doc.read_text()):
            joined = re.sub(r"\\\n\s*", " ", block)
            before += joined
            for raw in joined.splitlines():
                text = raw.split("  #")[0].strip().removeprefix("$ ")
                if text and not text.startswith("#"):
                    found.append(Line(doc.name, before, text))
    return found


LINES = _lines()


def _tasks() -> dict[str, inspect.Signature]:
    tasks = {}
    for value in vars(fabfile).values():
        body = getattr(value, "body", None)
        if body is not None and hasattr(value, "name"):
            tasks[value.name] = inspect.signature(body)
    return tasks


FAB_LINES = [line for line in LINES if line.text.startswith("fab ")]


def test_the_docs_show_the_fab_path() -> None:
    shown = " ".join(line.text for line in FAB_LINES)
    assert "fab deploy-adapters" in shown and "fab bootstrap" in shown


@pytest.mark.parametrize("line", FAB_LINES, ids=lambda line: f"{line.doc}:{line.text[:60]}")
def test_fab_lines_name_a_task_its_flags_and_the_stack(line: Line) -> None:
    words = shlex.split(line.text)[1:]
    tasks = _tasks()
    if words[:1] == ["--list"]:
        return
    if words[:1] == ["--help"]:
        assert words[1] in tasks, line
        return
    while words[:1] and words[0] in ("-H", "-i", "-S"):
        words = words[2:]
    assert words and words[0] in tasks, f"{line.doc}: `{line.text}`: no task {words[:1]} ({sorted(tasks)})"
    params = tasks[words[0]].parameters
    for word in words[1:]:
        if word.startswith("--"):
            name = word[2:].split("=")[0].replace("-", "_")
            assert name in params, f"{line.doc}: `{line.text}`: {words[0]} has no option --{name.replace('_', '-')}"
    exported = "EXAONE_LORA_STACK=" in line.before
    assert "--stack" in words or exported, f"{line.doc}: `{line.text}` names no stack (no task has a default)"
    # Fabric gives a task's flags to that task alone: several tasks on one line need the stack from the environment.
    several = [w for w in words[1:] if w in tasks]
    assert not several or exported, \
        f"{line.doc}: `{line.text}`: --stack reaches the last task only; {words[0]} would run without it"


CONFIG_LINES = [line for line in LINES if line.text.startswith("pulumi config set")]


@pytest.mark.parametrize("line", CONFIG_LINES, ids=lambda line: f"{line.doc}:{line.text[:70]}")
def test_config_keys_shown_are_read_by_the_spec_or_the_program(line: Line) -> None:
    words, stack = shlex.split(line.text)[3:], None
    if "-s" in words:
        stack = words[words.index("-s") + 1]
        del words[words.index("-s"):words.index("-s") + 2]
    words = [w for w in words if w not in ("--secret", "--path")]
    namespace, _, key = words[0].partition(":")
    key = key.split("[")[0].split(".")[0]  # --path 'exaone-lora:publisherCidrs[0]'
    if namespace == "exaone-lora":
        # The registry stack has its own schema (infra/registry.py); every other stack is a DeploymentSpec.
        model = RegistryConfig if stack == "registry" else DeploymentSpec
        fields = {info.alias or name for name, info in model.model_fields.items()} | set(model.model_fields)
        assert key in fields, f"{line.doc}: exaone-lora:{key} is not a key of {model.__name__}"
    else:
        assert namespace == "ops", line
        program = (REPO / "infra" / "__main__.py").read_text()
        assert f'"{key}"' in program, f"{line.doc}: ops:{key} is not read by infra/__main__.py"


OFFLINE_LINES = sorted({line.text for line in LINES if OFFLINE.match(line.text)})


@pytest.mark.parametrize("command", OFFLINE_LINES)
def test_offline_exaone_lora_commands_run_as_written(command: str) -> None:
    env = {**os.environ, "PATH": f"{REPO / '.venv' / 'bin'}:{os.environ['PATH']}", "COLUMNS": "200"}
    done = subprocess.run(command, shell=True, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"`{command}` exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"


def test_azure_page_says_where_a_subscription_is_needed() -> None:
    text = (REPO / "docs" / "azure.md").read_text()
    before = text.split("**A real subscription is needed from here.**")[0]
    assert before != text, "docs/azure.md must mark where a real subscription is needed"
    # Everything before the mark runs here: only offline exaone-lora commands and `pulumi config set`.
    for block in FENCE.findall(before):
        for raw in block.splitlines():
            text_line = raw.split("  #")[0].strip()
            if text_line and not text_line.startswith("#"):
                assert OFFLINE.match(text_line) or text_line.startswith(("pulumi config set", "pulumi stack select")), \
                    f"`{text_line}` comes before the subscription mark but needs more than this machine"


TEST_PATH = re.compile(r"\btests/[\w/]+\.py\b")


def test_every_test_the_docs_name_exists() -> None:
    """The docs point readers at the test that proves a claim: that file must exist (tests mirror the source tree)."""
    named = {(doc.name, path) for doc in [*DOCS, *sorted((REPO / "benchmarks").glob("*.md"))]
             for path in TEST_PATH.findall(doc.read_text())}
    assert named, "the docs name no test file at all"
    missing = sorted(f"{doc}: {path}" for doc, path in named if not (REPO / path).is_file())
    assert missing == [], missing


GPU_TRAINING = REPO / "benchmarks" / "train_speed_gpu.sh"


def _training_configurations() -> dict[str, list[str] | None]:
    """train_speed_gpu.sh's configuration table: name -> the `benchmarks.train_speed` flags it runs (None for an
    entry that runs something else)."""
    script = GPU_TRAINING.read_text()
    shared = re.search(r'^FLAT="(.*)"$', script, re.MULTILINE)
    assert shared, "train_speed_gpu.sh no longer defines FLAT"
    table: dict[str, list[str] | None] = {}
    for name, body in re.findall(r"^\s+([\w-]+)\) (.*?);;", script, re.MULTILINE | re.DOTALL):
        run = re.match(r"run [\w-]+ \d+ (.*)", body.strip())
        words = shlex.split(run.group(1)) if run else None
        table[name] = None if words is None else [w for word in words
                                                 for w in (shlex.split(shared.group(1)) if word == "$FLAT" else [word])]
    return table


def test_every_gpu_training_configuration_is_a_valid_train_speed_command() -> None:
    """The GPU script cannot run here; what it would pass to `benchmarks.train_speed` is parsed as written."""
    from benchmarks.train_speed import parser

    table = _training_configurations()
    assert {"reference", "mb32-flat-compile", "flat-cdt"} <= set(table)
    for flags in table.values():
        if flags is not None:
            parser().parse_args(["--checkpoint", "model", *flags])  # exits (status 2) on a flag it does not take


def test_documented_gpu_training_runs_name_configurations_the_script_has() -> None:
    table = _training_configurations()
    shown = [(doc.name, line) for doc in [*DOCS, *sorted((REPO / "benchmarks").glob("*.md"))]
             for block in FENCE.findall(doc.read_text()) for line in re.sub(r"\\\n\s*", " ", block).splitlines()
             if "benchmarks/train_speed_gpu.sh" in line]
    assert shown, "no doc shows how to run the GPU training benchmark"
    for doc, line in shown:
        for command in line.split(";"):
            words = shlex.split(command.split("  #")[0])
            if "benchmarks/train_speed_gpu.sh" not in words:
                continue
            names = [n for arg in words[words.index("benchmarks/train_speed_gpu.sh") + 1:] for n in arg.split()]
            unknown = [n for n in names if n not in table]
            assert unknown == [], f"{doc}: `{command.strip()}` names {unknown}, not in train_speed_gpu.sh"
