"""`exaone-lora rehearse --stack poc`: the path a user takes on Azure, run for real on this machine.

The stack's own spec (target vm, not the local `dev` twin) goes through the commands a user runs, against
stand-ins for what cannot exist here. Every place where the rehearsal differs from Azure is one of these lines:

- `pulumi config set` writes the operator's settings into a copy of the stack file (free ports too: the test
  host shares this machine's network; and `maxModelLen` no longer than the tiny stand-in checkpoint's positions);
- `pulumi up` is the program under Pulumi's mock runtime; its outputs are written as `pulumi stack output --json`
  would, then `hostIps` points at the test host and `storageBlobUrl` at Azurite (`_stand_in_outputs`);
- the VM is a booted systemd host over SSH, its admin user made as Azure's VM agent would (`add_admin_user`);
- the VM's managed identity is a token endpoint on loopback that the host reaches through `identity.env`
  (Azure's instance metadata service needs no file); Blob is Azurite over HTTPS accepting Entra ID tokens;
- no GPU: bootstrap and install-service print what they skip, and the CPU build of vLLM stands in.
At the end it measures over SSH what the host serves (`provisioning.evidence.measure_host`) and writes it as the
stack's `rehearsal` evidence (`<workdir>/project/evidence/<stack>/rehearsal-*.json`), marked as a stand-in
(`STAND_IN`): it proves the path, never the GPU stack's vLLM or model pins.
Everything else (`fab ... --stack poc --outputs out.json`, the registry, the reconciler, the gateway with the
stack's API key) is the code and the command lines a user runs.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from rich.console import Console
from rich.table import Table

from exaone_lora.demo.report import DemoReport
from exaone_lora.demo.traffic import BoundedTraffic
from exaone_lora.local.processes import REPO, free_port
from exaone_lora.model_shape import EXAONE_TINY
from exaone_lora.rehearsal.pulumi_cli import config_set, stack_output_json
from exaone_lora.spec import MODEL_LICENSE_ACK, DeploymentSpec, load_spec

if TYPE_CHECKING:  # heavy imports stay inside the steps that use them
    from fabric import Connection

    from service.registry import AdapterRegistry

DOMAINS = ("medical", "legal")
# Routable, never contacted: it only lands in the rendered NSG rule.
OPERATOR_CIDR = "20.41.6.7/32"
# What the rehearsal's evidence says about its server: promotion treats its vLLM and model as a stand-in's.
STAND_IN = "rehearsal: CPU build of vLLM and a tiny EXAONE-shaped checkpoint on a systemd test host"


class RehearsalError(RuntimeError):
    """A rehearsal step whose result is wrong (not a crash): the message says what was expected."""


@dataclass
class RehearsalOptions:
    stack: str = "poc"
    root: Path = REPO
    workdir: Path = REPO / ".cache" / "rehearsal"
    train_steps: int = 4
    samples: int = 16
    traffic_seconds: float = 40.0
    traffic_workers: int = 3
    skipped: list[str] = field(default_factory=list)


def _operator_key(workdir: Path) -> Path:
    """The operator's SSH key; the test host trusts it as Azure's VM trusts `sshPublicKey`."""
    key = workdir / "host" / "id_ed25519"
    key.parent.mkdir(parents=True, exist_ok=True)
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "operator@rehearsal", "-f", str(key)],
                       check=True)
    return key


def configure_stack(options: RehearsalOptions, project: Path) -> DeploymentSpec:
    """`pulumi config set` of the operator's settings, on a copy of the stack file."""
    project.mkdir(parents=True, exist_ok=True)
    # The serving stack reads the adapter registry's stack (StackReference), so its file travels too.
    for name in ("Pulumi.yaml", f"Pulumi.{options.stack}.yaml", "Pulumi.registry.yaml"):
        shutil.copy2(options.root / name, project / name)
    public_key = _operator_key(options.workdir).with_suffix(".pub").read_text().strip()
    config_set(project / f"Pulumi.{options.stack}.yaml", {
        "exaone-lora:operatorCidr": OPERATOR_CIDR,
        "exaone-lora:sshPublicKey": public_key,
        "exaone-lora:acceptModelLicense": MODEL_LICENSE_ACK,
        # The test host shares this machine's network: ports that are free here.
        "exaone-lora:port": free_port(),
        # The stand-in checkpoint (EXAONE's shape, tiny) has fewer positions than the real model's 32k.
        "exaone-lora:maxModelLen": min(load_spec(options.stack, options.root).max_model_len, EXAONE_TINY.max_position_embeddings),
        "exaone-lora:gateway": {"enginePort": free_port(), "adminPort": free_port()},
        "exaone-lora:monitoring": {"prometheusPort": free_port(), "alertmanager": {"port": free_port()}},
    })
    return load_spec(options.stack, project)


def _stand_in_outputs(outputs: dict[str, object], host: str, blob_url: str) -> dict[str, object]:
    """The two outputs that point at Azure resources point at their stand-ins."""
    return outputs | {"hostIps": [host], "storageBlobUrl": blob_url}


def fab(args: list[str], env: dict[str, str], log: Path, console: Console) -> str:
    """One `fab` command line exactly as a user types it (output to the log and the console)."""
    command = [str(Path(sys.executable).parent / "fab"), *args]
    console.print(f"[dim]$ fab {' '.join(args)}[/dim]")
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=3600)
    with log.open("a") as fh:
        fh.write(f"$ fab {' '.join(args)}\n{done.stdout}{done.stderr}\n")
    if done.returncode != 0:
        raise RehearsalError(f"`fab {' '.join(args)}` exited {done.returncode}:\n{(done.stdout + done.stderr)[-3000:]}")
    return done.stdout


def chat(api: str, model: str, api_key: str) -> str:
    from openai import OpenAI

    client = OpenAI(base_url=api, api_key=api_key, max_retries=0)
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hello!"}],
                                          max_tokens=8, temperature=0).model


def skipped_lines(text: str) -> list[str]:
    """The `skipped: ...` details of the tasks' result tables (one row a line: fab runs with a wide terminal)."""
    found = []
    for line in text.splitlines():
        for cell in (part.strip() for part in line.split("│")):
            if "skipped:" in cell:
                found.append(re.sub(r"\s*\[\d+ s\]$", "", cell[cell.index("skipped:"):]))
    return list(dict.fromkeys(found))


def run_rehearsal(options: RehearsalOptions, console: Console, report: DemoReport | None = None) -> DemoReport:
    """Run every step; raises on the first failure (the report says which), stops every stand-in at the end."""
    from exaone_lora.demo.run import DemoOptions, gateway_series, step_train
    from exaone_lora.local.identity import azurite_oauth, token_endpoint
    from exaone_lora.local.testhost import add_admin_user, boot_testhost
    from infra.common import InfraOptions, check_deployable
    from infra.preview import run_program
    from service.registry import open_registry

    report = report or DemoReport(console, title=f"Rehearsal of the Azure path: stack {options.stack}")
    workdir = options.workdir
    shutil.rmtree(workdir / "project", ignore_errors=True)
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    fab_log = workdir / "logs" / "fab.log"
    fab_log.write_text("")
    project = workdir / "project"
    api_key = secrets.token_hex(24)

    with report.step(f"1 pulumi config set + pulumi up -s {options.stack} (mock runtime) -> out.json") as result:
        spec = configure_stack(options, project)
        infra_options = InfraOptions(api_key=api_key)
        check_deployable(spec, infra_options, preview=False)
        run = run_program(spec, infra_options, root=project)
        outputs = dict(run.outputs)
        result.detail = f"{len(run.resources)} resources; outputs {', '.join(sorted(outputs))}"
        options.skipped.append(f"pulumi up -s {options.stack}: needs Azure (the program ran under the mock runtime)")

    with ExitStack() as stack:
        with report.step("2 stand-ins: token endpoint, Azurite over HTTPS (Entra ID), systemd host as the VM") as result:
            # The endpoint holds the stack's identity: a host asking for another client id is refused.
            identity = stack.enter_context(token_endpoint(client_id=str(outputs["identityClientId"])))
            blob = stack.enter_context(azurite_oauth(workdir / "azurite", workdir / "logs" / "azurite.log"))
            host = stack.enter_context(boot_testhost(workdir / "host", workdir / "logs" / "testhost.log"))
            add_admin_user(host, spec.admin_username)
            # The VM's managed identity: Azure serves it from the instance metadata service; here a file
            # points the host's azure-identity at the loopback token endpoint and trusts Azurite's certificate.
            root = host.connection
            root.run("install -d -m 750 /etc/exaone-lora", hide=True)
            root.put(str(blob.ca_file), "/etc/exaone-lora/rehearsal-ca.pem")
            identity_env = "".join(f"{k}={v}\n" for k, v in identity.env().items())
            identity_env += "REQUESTS_CA_BUNDLE=/etc/exaone-lora/rehearsal-ca.pem\n"
            root.run(f"umask 077 && printf %s {_q(identity_env)} > /etc/exaone-lora/identity.env", hide=True)
            out_file = workdir / "out.json"
            out_file.write_text(stack_output_json(_stand_in_outputs(outputs, "127.0.0.1", blob.blob_url)))
            ssh_config = host.ssh_config
            result.detail = f"Blob {blob.blob_url} (OAuth), ssh {spec.admin_username}@127.0.0.1:{host.port}"

        # The operator's shell: the Azure login is the same token endpoint (DefaultAzureCredential finds it).
        env = {**os.environ, **identity.env(), "REQUESTS_CA_BUNDLE": str(blob.ca_file), "EXAONE_LORA_ROOT": str(project),
               "EXAONE_API_KEY": api_key, "COLUMNS": "1000"}
        env.pop("EXAONE_LORA_REGISTRY", None)
        common = ["-S", str(ssh_config)]
        stack_args = ["--stack", options.stack, "--outputs", str(out_file)]

        with report.step("3 train adapters, publish them with the operator's identity") as result:
            registry = open_registry(blob.blob_url, spec.storage.container, credential=identity.credential(),
                                     ca_file=blob.ca_file)
            registry.ensure_container()
            demo = DemoOptions(root=project, stack=options.stack, workdir=workdir, train_steps=options.train_steps,
                               samples=options.samples)
            published = step_train(demo, registry, report, console)
            result.detail = ", ".join(sorted(published))

        with report.step("4 fab bootstrap, install-service, install-monitoring --stack --outputs") as result:
            checkpoint = str(report.facts["checkpoint"])
            text = fab([*common, "bootstrap", *stack_args, "--model-path", checkpoint, "--wheelhouse", host.wheelhouse],
                       env, fab_log, console)
            text += fab([*common, "install-service", *stack_args], env, fab_log, console)
            text += fab([*common, "install-monitoring", *stack_args], env, fab_log, console)
            options.skipped += skipped_lines(text)
            result.detail = f"as {spec.admin_username} with sudo; {len(options.skipped)} GPU/Azure steps skipped"

        api = f"http://127.0.0.1:{spec.port}/v1"
        with report.step("5 fab deploy-adapters: the host pulls with its own identity") as result:
            for domain in DOMAINS:
                fab([*common, "deploy-adapters", *stack_args, "--domain", domain, "--version", "1"], env, fab_log, console)
            result.detail = ", ".join(f"{d} -> {d}-v1" for d in DOMAINS)

        with report.step("6 OpenAI SDK through the gateway, with and without the stack's API key") as result:
            answered = {model: chat(api, model, api_key) for model in (spec.model.served_name, *DOMAINS)}
            if any(answer != model for model, answer in answered.items()):
                raise RehearsalError(f"the gateway answered as another model: {answered}")
            refused = httpx.post(f"{api}/chat/completions", json={"model": "medical", "messages": []}, timeout=10)
            if refused.status_code != 401:
                raise RehearsalError(f"a request without the API key got {refused.status_code}, not 401")
            result.detail = f"{', '.join(answered)} answered; no key -> 401"

        with report.step("7 deploy medical v2 under load, then roll back: zero failed requests") as result:
            models = [spec.model.served_name, *DOMAINS]
            with BoundedTraffic(api, api_key, models, workers=options.traffic_workers, max_requests=2000,
                                max_seconds=options.traffic_seconds) as traffic:
                fab([*common, "deploy-adapters", *stack_args, "--domain", "medical", "--version", "2"], env, fab_log,
                    console)
                time.sleep(2)
                fab([*common, "deploy-adapters", *stack_args, "--domain", "medical", "--rollback"], env, fab_log, console)
                time.sleep(2)
            outcome = traffic.result
            report.facts["traffic"] = {"ok": dict(outcome.ok), "failed": dict(outcome.failed), "errors": outcome.errors,
                                       "served_by": dict(outcome.served_by), "seconds": round(outcome.seconds, 1)}
            result.detail = f"{outcome.total} requests in {outcome.seconds:.0f} s, {outcome.failures} failed"
            if outcome.failures or not outcome.total:
                raise RehearsalError(f"requests failed during the deploy: {outcome.errors[:5]}")
            # What the gateway itself counted, per alias and version: both versions of medical took traffic.
            served = gateway_series(f"http://127.0.0.1:{spec.gateway.admin_port}")
            report.facts["gateway_series"] = {f"{a}@{v}": n for (a, v), n in served.items()}
            if not {("medical", "medical-v1"), ("medical", "medical-v2")} <= {k for k, n in served.items() if n > 0}:
                raise RehearsalError(f"expected traffic on medical-v1 and medical-v2, the gateway counted {served}")
            state = registry.alias("medical")
            if state.current != 1:
                raise RehearsalError(f"after the rollback the registry's medical alias is v{state.current}, not v1")

        with report.step("8 evidence: what the host serves, measured over SSH") as result:
            path = record_served(project, spec, host.connection, registry, report)
            result.detail = f"{path.relative_to(workdir)}"

    report.facts["skipped"] = options.skipped
    return report


def record_served(project: Path, spec: DeploymentSpec, connection: Connection, registry: AdapterRegistry,
                  report: DemoReport) -> Path:
    """Measure every replica of the host over SSH, check it serves the registry's current versions byte for byte,
    and record it as the stack's `rehearsal` evidence (a stand-in's: see STAND_IN)."""
    from exaone_lora.evidence import record_evidence
    from exaone_lora.naming import MANIFEST_FILE, version_name
    from provisioning.evidence import measure_host

    measured = measure_host(connection, spec, stand_in=STAND_IN)
    for replica in measured:
        for domain in DOMAINS:
            current = registry.alias(domain).current
            if current is None:
                raise RehearsalError(f"the registry has no current version of {domain}")
            name = version_name(domain, current)
            digest = replica.adapter_files.get(name, {}).get(MANIFEST_FILE)
            if name not in replica.adapters or digest != registry.manifest_digest(domain, current):
                raise RehearsalError(f"the host serves {replica.adapters} with manifests {replica.adapter_files}; "
                                     f"expected {name} with the registry's manifest sha256")
    report.facts["measured"] = [m.to_dict() for m in measured]
    return record_evidence(project, spec, "rehearsal", True, {"facts": dict(report.facts)}, measured[0])


def skipped_table(lines: list[str]) -> Table:
    table = Table(title="Not run here (needs a GPU or Azure): the exact commands")
    table.add_column("skipped")
    for line in lines:
        table.add_row(line)
    return table


def _q(text: str) -> str:
    import shlex

    return shlex.quote(text)


__all__ = ["RehearsalError", "RehearsalOptions", "run_rehearsal", "skipped_table"]
