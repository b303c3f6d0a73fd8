"""The policy pack as the Pulumi engine runs it: `python infra/policy/__main__.py` (the pack's own entry point)
serves the Analyzer gRPC protocol on a loopback port it prints; the engine sends one AnalyzeRequest per resource.
This client does the same, so the tests judge exactly what `pulumi preview --policy-pack infra/policy` enforces."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import empty_pb2, json_format, struct_pb2
from pulumi.runtime.proto import analyzer_pb2, analyzer_pb2_grpc

from tests.support.processes import REPO

PACK_MAIN = REPO / "infra" / "policy" / "__main__.py"
START_TIMEOUT_S = 60


@dataclass(frozen=True)
class Diagnostic:
    policy: str
    urn: str
    message: str
    mandatory: bool


class PolicyPackServer:
    """One running pack process; `analyze(urn, type, props)` returns its diagnostics for that resource."""

    def __init__(self) -> None:
        # The engine starts the pack from the pack's directory; __main__.py finds the project package itself.
        self.process = subprocess.Popen([sys.executable, "-u", str(PACK_MAIN)], cwd=PACK_MAIN.parent,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode().strip()
        if not line.isdigit():
            self.close()
            raise RuntimeError(f"policy pack did not print its port (got {line!r}); stderr: "
                               f"{self.process.stderr.read().decode() if self.process.stderr else ''}")
        self.channel = grpc.insecure_channel(f"127.0.0.1:{line}")
        grpc.channel_ready_future(self.channel).result(timeout=START_TIMEOUT_S)
        self.stub = analyzer_pb2_grpc.AnalyzerStub(self.channel)

    def policy_names(self) -> list[str]:
        info = self.stub.GetAnalyzerInfo(empty_pb2.Empty())
        return [p.name for p in info.policies]

    def analyze(self, urn: str, resource_type: str, props: Mapping[str, Any]) -> list[Diagnostic]:
        properties = json_format.ParseDict(dict(props), struct_pb2.Struct())
        request = analyzer_pb2.AnalyzeRequest(type=resource_type, properties=properties, urn=urn,
                                              name=urn.rsplit("::", 1)[-1])
        response = self.stub.Analyze(request)
        return [Diagnostic(d.policyName, d.urn, d.message, d.enforcementLevel == analyzer_pb2.MANDATORY)
                for d in response.diagnostics]

    def analyze_all(self, resources: Iterable[tuple[str, str, Mapping[str, Any]]]) -> list[Diagnostic]:
        return [d for urn, typ, props in resources for d in self.analyze(urn, typ, props)]

    def close(self) -> None:
        if hasattr(self, "channel"):
            self.channel.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
