"""Where things live on a serving host: one definition shared by provisioning, systemd and Kubernetes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

# Written by `fab bootstrap` next to the model's files (name, revision, sha256 per file); read back by the
# evidence measurement (service.served) to report which revision a host serves.
MODEL_MARKER = ".exaone-model.json"


@dataclass(frozen=True)
class HostLayout:
    data: PurePosixPath = PurePosixPath("/data")
    app: PurePosixPath = PurePosixPath("/opt/exaone-lora")
    config: PurePosixPath = PurePosixPath("/etc/exaone-lora")
    cache: PurePosixPath = PurePosixPath("/var/cache/exaone-lora")
    service_user: str = "vllm"
    # False on a host without an NVIDIA GPU (the rehearsal's test host): vLLM's CPU build stands in for the CUDA
    # build there, so the renderers leave out what only CUDA understands. Detected by provisioning, never configured.
    cuda: bool = True

    @property
    def models(self) -> PurePosixPath:
        return self.data / "models"

    @property
    def adapters(self) -> PurePosixPath:
        return self.data / "lora-adapters"

    @property
    def vllm_venv(self) -> PurePosixPath:
        return self.app / "vllm-venv"

    @property
    def vllm_python(self) -> PurePosixPath:
        return self.vllm_venv / "bin" / "python"

    @property
    def env_file(self) -> PurePosixPath:
        """Secrets (VLLM_API_KEY, the gateway admin key) as systemd EnvironmentFile, mode 0600."""
        return self.config / "secrets.env"

    @property
    def tls_cert(self) -> PurePosixPath:
        """The public listener's certificate chain (stacks with public exposure), from `fab bootstrap --tls-cert`."""
        return self.config / "tls" / "cert.pem"

    @property
    def tls_key(self) -> PurePosixPath:
        """Its private key: root-owned, readable by the service user's group only."""
        return self.config / "tls" / "key.pem"

    @property
    def lora_kernels(self) -> PurePosixPath:
        """Tuned LoRA kernel tiles per GPU (`fab tune-lora-kernels`), read by vLLM at start."""
        return self.cache / "lora-kernels"

    def adapter_dir(self, name: str) -> PurePosixPath:
        return self.adapters / name


DEFAULT_LAYOUT = HostLayout()
