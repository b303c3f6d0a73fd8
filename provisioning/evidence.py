"""What each replica of a VM actually serves, measured on the host over SSH (promotion evidence).

The host runs the same measurement as a local run (`service.cli measure`, from the code install-service put there):
its `/v1/models` on loopback, `sha256` of each served version's files in its own adapter folder, the vLLM build of
its own venv and the model marker bootstrap wrote. The operator's commit travels in as $BENCH_GIT_COMMIT (the
host's copy of the code has no .git).
"""

from __future__ import annotations

import json
import shlex

from fabric import Connection

from exaone_lora.evidence import Measured
from exaone_lora.spec import DeploymentSpec
from provisioning.remote import sh
from provisioning.units import gateway_src
from service.layout import DEFAULT_LAYOUT, HostLayout
from service.replicas import replica_endpoints
from service.served import git_commit


class MeasureHostError(RuntimeError):
    """The host's measurement failed or printed something that is not a measurement."""


def measure_command(spec: DeploymentSpec, url: str, layout: HostLayout = DEFAULT_LAYOUT, *,
                    stand_in: str | None = None, commit: str = "unknown") -> str:
    src = gateway_src(layout)
    q = shlex.quote
    argv = (f"{layout.vllm_python} -m service.cli measure --url {q(url)} --adapters-dir {layout.adapters} "
            f"--model-dir {q(spec.model.path)} --engine-python {layout.vllm_python}"
            + (f" --stand-in {q(stand_in)}" if stand_in else ""))
    # The engine's key (if any) comes from the host's environment file, never from this command line.
    return (f"set -a; [ -r {layout.env_file} ] && . {layout.env_file}; set +a; "
            f"cd {src} && BENCH_GIT_COMMIT={q(commit)} PYTHONPATH={src} {argv}")


def measure_host(c: Connection, spec: DeploymentSpec, layout: HostLayout = DEFAULT_LAYOUT, *,
                 stand_in: str | None = None) -> list[Measured]:
    """One measurement per vLLM replica of the host, in replica order."""
    commit = git_commit()
    found = []
    for endpoint in replica_endpoints(spec, layout):
        result = sh(c, measure_command(spec, endpoint.url, layout, stand_in=stand_in, commit=commit), check=False,
                    timeout=300)
        try:
            data = json.loads(str(result.stdout))
            data["host"] = c.host
            found.append(Measured.from_dict(data))
        except ValueError as exc:
            raise MeasureHostError(f"measuring {endpoint.url} on {c.host} failed (exit {result.exited}): {exc}; "
                                   f"{(str(result.stderr) or str(result.stdout))[-800:]}") from None
    return found


__all__ = ["MeasureHostError", "measure_command", "measure_host"]
