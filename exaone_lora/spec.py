"""The typed deployment spec: one `Pulumi.<stack>.yaml` in, one `DeploymentSpec` out.

Pure Python (pydantic + PyYAML): no Pulumi import and no Pulumi CLI, so the Fabric tasks, the
serving code, the tests and the demo read a stack exactly as the Pulumi program does.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from exaone_lora import PROJECT
from exaone_lora.canary import CanarySplit
from exaone_lora.cidrs import too_broad
from exaone_lora.naming import version_name
from exaone_lora.tiers import SKUS, TIER_DEFAULTS, GpuSku, Tier

STACKS: tuple[str, ...] = ("dev", "poc", "pilot", "prod")
VLLM_LORA_RANKS: tuple[int, ...] = (1, 8, 16, 32, 64, 128, 256, 320, 512)
ALIAS_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
REVISION_PATTERN = re.compile(r"^[0-9a-f]{40}$")
# vLLM releases are pinned exactly: `0.26.0`, never a range.
VERSION_PIN_PATTERN = re.compile(r"^\d+\.\d+\.\d+(\.post\d+)?$")
BROADEST_SSH_PREFIX = {4: 16, 6: 48}
# How the gateway picks among the replicas serving a request (service.gateway.scoring says what each does).
RoutingPolicy = Literal["scored", "least-outstanding"]
VLLM_ENV_PATTERN = re.compile(r"^VLLM_[A-Z0-9_]+$")
# vLLM environment variables the deployment sets itself (caches, offline mode, runtime LoRA loading, where a
# server computes, the API key, the tuned LoRA kernel folder): `serverEnv` may not override them.
MANAGED_VLLM_ENV = frozenset({"VLLM_CACHE_ROOT", "VLLM_NO_USAGE_STATS", "VLLM_ALLOW_RUNTIME_LORA_UPDATING",
                              "VLLM_CPU_KVCACHE_SPACE", "VLLM_CPU_OMP_THREADS_BIND", "VLLM_API_KEY",
                              "VLLM_TUNED_CONFIG_FOLDER"})
# The broadest client range the API may be opened to, per family (the policy pack enforces the same on pilot/prod).
API_BROADEST_SOURCES = (8, 32)
SECRET_HINTS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "CREDENTIAL")
# Values that reach a root shell on the host (paths, names): a closed character set, so no quoting mistake
# anywhere downstream can turn a stack value into a command. Remote commands quote them as well.
HOST_PATH_PATTERN = re.compile(r"^(/[A-Za-z0-9._-]+)+$")
SERVED_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
HUB_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")
# Linux user names that Azure accepts as adminUsername; `root` and other reserved names are refused by Azure itself.
USER_NAME_PATTERN = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
RESERVED_USER_NAMES = frozenset({"root", "admin", "administrator", "vllm", "daemon", "bin", "sys", "nobody"})
SSH_KEY_TYPES = ("ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521")
# The model's licence (EXAONE AI Model License 1.1 - NC, non-commercial): a stack acknowledges it before
# `pulumi up` or a bootstrap fetches the weights.
MODEL_LICENSE = "EXAONE AI Model License 1.1 - NC"
MODEL_LICENSE_URL = "https://huggingface.co/LGAI-EXAONE/EXAONE-3.5-2.4B-Instruct/blob/main/LICENSE"
MODEL_LICENSE_ACK = "exaone-3.5-nc"
# Options whose code path asserts a CUDA device when enabled: the local target's CPU build of vLLM would die at start.
CUDA_ONLY_VLLM_ENV = frozenset({"VLLM_LORA_ENABLE_DUAL_STREAM"})


class SpecError(ValueError):
    """A stack file that cannot become a DeploymentSpec; the message names the file and the key."""


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class ModelSpec(_Model):
    name: str = "LGAI-EXAONE/EXAONE-3.5-2.4B-Instruct"
    revision: str = Field(description="the Hugging Face commit (40 hex digits) the deployment is pinned to")
    path: str = "/data/models/EXAONE-3.5-2.4B-Instruct"
    served_name: str = "exaone"

    @field_validator("revision")
    @classmethod
    def _pinned(cls, value: str) -> str:
        if not REVISION_PATTERN.fullmatch(value):
            raise ValueError("must be a full 40-hex-digit commit id (branches and tags move)")
        return value

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        return host_path(value)

    @field_validator("served_name")
    @classmethod
    def _served(cls, value: str) -> str:
        if not SERVED_NAME_PATTERN.fullmatch(value):
            raise ValueError("must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
        return value

    @field_validator("name")
    @classmethod
    def _hub_name(cls, value: str) -> str:
        if not HUB_NAME_PATTERN.fullmatch(value):
            raise ValueError("must be a model id such as LGAI-EXAONE/EXAONE-3.5-2.4B-Instruct (letters, digits, . _ -)")
        return value


def host_path(value: str) -> str:
    """An absolute host path of plain components (letters, digits, '.', '_', '-'), never `.` or `..`."""
    if not HOST_PATH_PATTERN.fullmatch(value):
        raise ValueError("must be an absolute path of letters, digits, '.', '_', '-' and '/' (no spaces, quotes or "
                         "shell characters)")
    if any(part in (".", "..") for part in value.split("/")):
        raise ValueError("must not contain '.' or '..' components")
    return value


def ssh_key_problem(value: str) -> str | None:
    """Why `value` is not one OpenSSH public key line (`type base64 [comment]`), or None when it is."""
    parts = value.split()
    if len(parts) < 2 or parts[0] not in SSH_KEY_TYPES:
        return f"must be one OpenSSH public key line starting with one of {', '.join(SSH_KEY_TYPES)}"
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        return "the key's second field is not valid base64 (an example key? paste your own ~/.ssh/id_ed25519.pub)"
    # The blob starts with the key type again, length-prefixed: a key pasted under the wrong type fails here.
    kind_len = int.from_bytes(blob[:4], "big") if len(blob) >= 4 else -1
    if blob[4:4 + kind_len].decode("ascii", "replace") != parts[0]:
        return "the key's data does not match its type (truncated or not a real key)"
    return None


def operator_cidr_problem(value: str) -> str | None:
    """Why `value` cannot be the operator's real source network on Azure, or None (the syntax is checked on load)."""
    net = ipaddress.ip_network(value, strict=False)
    if net.is_global:
        return None
    documentation = [ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")]
    if any(net.version == doc.version and net.subnet_of(doc) for doc in documentation):  # type: ignore[arg-type]
        return f"{value} is a documentation range (RFC 5737/3849), an example: set your own public IP"
    if net.is_loopback or net.is_link_local or net.is_multicast or net.is_reserved or net.is_unspecified:
        return f"{value} is not a routable operator address (loopback, link-local, multicast or reserved)"
    # Private ranges: a VPN or peered network that reaches the VNet, the operator's call.
    return None


class AdapterPin(_Model):
    """One adapter version the stack serves: `alias` is the only name clients use."""

    alias: str
    version: int = Field(ge=1)
    blob_path: str
    sha256: str = Field(description="sha256 of the version's manifest.json in the registry")
    rank: int = 32

    @field_validator("alias")
    @classmethod
    def _alias(cls, value: str) -> str:
        if not ALIAS_PATTERN.fullmatch(value):
            raise ValueError("must be lower-case letters, digits or '_', starting with a letter (at most 40)")
        return value

    @field_validator("sha256")
    @classmethod
    def _sha(cls, value: str) -> str:
        if not SHA256_PATTERN.fullmatch(value):
            raise ValueError("must be 64 lower-case hex digits")
        return value

    @field_validator("blob_path")
    @classmethod
    def _blob_path(cls, value: str) -> str:
        if value.startswith("/") or ".." in value.split("/"):
            raise ValueError("must be a relative blob prefix without '..'")
        return value

    @property
    def name(self) -> str:
        """The immutable served name of this version, e.g. `medical-v3`."""
        return version_name(self.alias, self.version)


class ApiSpec(_Model):
    exposure: Literal["private", "public"] = "private"
    allowed_cidrs: tuple[str, ...] = ()

    @field_validator("allowed_cidrs")
    @classmethod
    def _cidrs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for cidr in value:
            net = _network(cidr)
            if net.prefixlen == 0:
                raise ValueError(f"{cidr} opens the API to the whole Internet; list the client networks")
        # Judged by what the list admits together: 0.0.0.0/1 + 128.0.0.0/1 is the whole Internet too.
        if problem := too_broad(value, API_BROADEST_SOURCES):
            raise ValueError(f"{problem}; list the client networks")
        return value

    @model_validator(mode="after")
    def _public_needs_sources(self) -> ApiSpec:
        if self.exposure == "public" and not self.allowed_cidrs:
            raise ValueError("exposure 'public' needs allowedCidrs: the API port is only opened to listed networks")
        return self


class StorageSpec(_Model):
    account_name: str | None = None
    container: str = "adapters"
    shared_key_access: bool = False

    @field_validator("account_name")
    @classmethod
    def _account(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[a-z0-9]{3,24}", value):
            raise ValueError("must be 3-24 lower-case letters and digits (Azure's rule for storage accounts)")
        return value


class RegistryRef(_Model):
    """Where the serving stack finds the one long-lived adapter registry: the outputs of the Pulumi stack that owns it
    (`infra/registry.py`), read with a StackReference; `privateEndpoint` reaches it from this stack's VNet."""

    stack: str = "registry"
    private_endpoint: bool = True

    @field_validator("stack")
    @classmethod
    def _stack(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+)?", value):
            raise ValueError("must be a stack name such as registry, or <org>/<project>/<stack>")
        return value


class GatewaySpec(_Model):
    enabled: bool = True
    engine_port: int = Field(default=8081, ge=1024, le=65535)
    admin_port: int = Field(default=8082, ge=1024, le=65535)
    routing: RoutingPolicy = Field(default="scored", description="replica choice: `scored` (queue, KV cache, LoRA "
                                   "affinity from vLLM's metrics) or `least-outstanding` (the gateway's own count)")


class MergedReplicaSpec(_Model):
    """A dedicated vLLM replica serving one alias's current version with the adapter folded into the weights.

    It runs at base-model speed (no LoRA kernels in the decode step, docs/benchmarks.md); the gateway sends
    the alias's traffic to it while it serves the alias's current version, and to the LoRA replicas otherwise
    (during a deploy, until it is rebuilt), so it is purely a fast path and never a single point of failure.
    """

    alias: str
    gpu: int = Field(default=0, ge=0, description="which GPU of the node it shares")
    gpu_memory_utilization: float = Field(default=0.3, gt=0, le=0.9)
    port: int = Field(default=8071, ge=1024, le=65535)
    max_num_seqs: int = Field(default=64, ge=1)


EMAIL_PATTERN = re.compile(r"^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$")
SMARTHOST_PATTERN = re.compile(r"^[A-Za-z0-9.-]+:\d{1,5}$")


class AlertEmailSpec(_Model):
    """Alertmanager's e-mail receiver. The SMTP password never sits here: with `authUsername` set, Alertmanager
    reads it from the host file `service.observability.alertmanager.SMTP_PASSWORD_FILE` (mode 0600)."""

    to: str
    from_: str = Field(alias="from")
    smarthost: str = Field(description="SMTP server as host:port, e.g. smtp.office365.com:587")
    auth_username: str | None = None
    require_tls: bool = True

    @field_validator("to", "from_")
    @classmethod
    def _address(cls, value: str) -> str:
        if not EMAIL_PATTERN.fullmatch(value):
            raise ValueError(f"{value!r} is not one e-mail address (name@domain, no spaces or line breaks)")
        return value

    @field_validator("smarthost")
    @classmethod
    def _smarthost(cls, value: str) -> str:
        if not SMARTHOST_PATTERN.fullmatch(value) or not 0 < int(value.rsplit(":", 1)[1]) < 65536:
            raise ValueError(f"{value!r} must be host:port, e.g. smtp.example.com:587")
        return value


class AlertmanagerSpec(_Model):
    """Where Alertmanager on the serving host sends alerts (it listens on loopback only)."""

    port: int = Field(default=9093, ge=1024, le=65535)
    webhook_url: str | None = None
    webhook_bearer_token: bool = Field(default=False, description="send `Authorization: Bearer` with the token from "
                                       "the host file `service.observability.alertmanager.WEBHOOK_TOKEN_FILE`")
    email: AlertEmailSpec | None = None
    group_wait_seconds: int = Field(default=30, ge=1, le=600)
    repeat_interval_hours: int = Field(default=4, ge=1, le=168)

    @field_validator("webhook_url")
    @classmethod
    def _webhook(cls, value: str | None) -> str | None:
        if value is None:
            return value
        url = urlsplit(value)
        if url.scheme not in ("http", "https") or not url.hostname or any(c in value for c in " \t\r\n"):
            raise ValueError(f"{value!r} must be an http(s) URL")
        if url.username is not None or url.password is not None:
            raise ValueError("must not hold credentials (user:password@); set webhookBearerToken and put the token "
                             "in the host's secrets file")
        if any(hint in name.upper() for name, _ in parse_qsl(url.query, keep_blank_values=True) for hint in SECRET_HINTS):
            raise ValueError("its query holds a secret; stack files hold no secrets (set webhookBearerToken instead)")
        loopback = url.hostname in ("localhost", "127.0.0.1", "::1")
        if url.scheme == "http" and not loopback:
            raise ValueError("must be https (plain http only to a receiver on the host itself)")
        return value

    @model_validator(mode="after")
    def _token_needs_webhook(self) -> AlertmanagerSpec:
        if self.webhook_bearer_token and self.webhook_url is None:
            raise ValueError("webhookBearerToken: needs webhookUrl")
        return self


class MonitoringSpec(_Model):
    prometheus_port: int = Field(default=9090, ge=1024, le=65535)
    scrape_interval_seconds: int = Field(default=15, ge=5, le=300)
    alertmanager: AlertmanagerSpec = AlertmanagerSpec()

    @model_validator(mode="before")
    @classmethod
    def _removed_keys(cls, values: Any) -> Any:
        if isinstance(values, dict) and ({"azureMonitor", "azure_monitor"} & set(values)):
            raise ValueError("the key azureMonitor was removed (it created billed Azure Monitor resources that received "
                             "no metrics); alerts go through Alertmanager on the host (monitoring.alertmanager), "
                             "see docs/observability.md")
        return values

    @model_validator(mode="after")
    def _ports(self) -> MonitoringSpec:
        if self.alertmanager.port == self.prometheus_port:
            raise ValueError("alertmanager.port: must differ from prometheusPort")
        return self


# AKS images are pinned: our tools image by digest (it runs the validator), the extension's EPP by exact tag or digest.
DIGEST_PIN_PATTERN = re.compile(r"^[a-z0-9][a-z0-9./_-]*(:[A-Za-z0-9._-]+)?@sha256:[0-9a-f]{64}$")
TAG_OR_DIGEST_PIN_PATTERN = re.compile(r"^[a-z0-9][a-z0-9./_-]*(:v\d+\.\d+\.\d+)?(@sha256:[0-9a-f]{64})?$")
K8S_NAME_PATTERN = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
UUID_PATTERN = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class CanaryPin(AdapterPin):
    """A second version of a pinned alias taking `weight` percent of the alias's traffic (AKS: the alias's
    InferenceModelRewrite splits `medical` between `medical-v3` and `medical-v4`). Pods serve both versions
    whatever the weight, so 0 (warm, no traffic) and 100 (all traffic, the pin still served) are the safe first and
    last steps of a deploy (docs/aks.md)."""

    weight: int = Field(ge=0, le=100)

    @property
    def split(self) -> CanarySplit:
        """The canary in the model the registry's alias and the gateway use (no shadow or sticky key on AKS: the
        Inference Extension splits by weight only)."""
        return CanarySplit(version=self.version, weight=self.weight)


class AksAutoscaling(_Model):
    """KEDA scales the vLLM Deployment on vLLM's own queue (`vllm:num_requests_waiting`, summed over the pods)."""

    min_replicas: int | None = Field(default=None, ge=1, description="default: the GPU pool's GPUs")
    max_replicas: int | None = Field(default=None, ge=1, description="default: min_replicas (no autoscaling)")
    queue_target: int = Field(default=8, ge=1, description="waiting requests per replica that add a replica")
    prometheus_url: str = "http://prometheus-operated.monitoring.svc.cluster.local:9090"


class AksSpec(_Model):
    """Settings of the AKS path only (ignored by the VM and local targets)."""

    private_cluster: bool = Field(default=False, description="API server on a private endpoint (then operatorCidr may be unset)")
    admin_group_object_ids: tuple[str, ...] = Field(default=(), description="Entra ID groups that administer the cluster")
    tools_image: str | None = Field(default=None, description="this project's image (python -m service.registry_cli), "
                                    "pinned by digest; its init containers validate every adapter before vLLM sees it")
    epp_image: str = "registry.k8s.io/gateway-api-inference-extension/epp:v1.2.1"
    gateway_class: str = "istio"
    monitoring_namespace: str = "monitoring"
    epp_scorer_weights: dict[str, int] = Field(default_factory=lambda: {
        "queue-scorer": 2, "kv-cache-utilization-scorer": 2, "prefix-cache-scorer": 3, "lora-affinity-scorer": 3})
    autoscaling: AksAutoscaling = AksAutoscaling()
    canaries: tuple[CanaryPin, ...] = ()

    @field_validator("tools_image")
    @classmethod
    def _tools_image(cls, value: str | None) -> str | None:
        if value is not None and not DIGEST_PIN_PATTERN.match(value):
            raise ValueError("must be pinned by digest, e.g. myregistry.azurecr.io/exaone-lora:0.1.0@sha256:<64 hex>")
        return value

    @field_validator("epp_image")
    @classmethod
    def _epp_image(cls, value: str) -> str:
        if not TAG_OR_DIGEST_PIN_PATTERN.match(value) or not ("@sha256:" in value or ":v" in value):
            raise ValueError("must be pinned by an exact release tag (:v1.2.1) or a digest (@sha256:...)")
        return value

    @field_validator("gateway_class", "monitoring_namespace")
    @classmethod
    def _k8s_name(cls, value: str) -> str:
        if not K8S_NAME_PATTERN.match(value):
            raise ValueError("must be a Kubernetes name (lower-case letters, digits, '-', at most 63)")
        return value

    @field_validator("admin_group_object_ids")
    @classmethod
    def _groups(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for group in value:
            if not UUID_PATTERN.match(group):
                raise ValueError(f"{group!r} is not an Entra ID object id (a lower-case UUID)")
        return value


class DeploymentSpec(_Model):
    """Everything that describes one deployment; every other part of the project renders from this."""

    project: str = PROJECT
    stack: str
    tier: Tier
    target: Literal["vm", "aks", "local"] = "vm"
    region: str = "koreacentral"
    vm_sku: str
    gpus_per_node: int = Field(ge=1)
    node_count: int = Field(ge=1)
    gpu_memory_utilization: float
    max_loras: int = Field(ge=1)
    max_cpu_loras: int = Field(ge=1)
    max_lora_rank: int = 32
    max_model_len: int = Field(default=4096, ge=128)
    max_num_seqs: int = Field(ge=1)
    port: int = Field(default=8080, ge=1024, le=65535)
    model: ModelSpec
    vllm_version: str
    lora_mode: Literal["dynamic", "static"] = "dynamic"
    server_args: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="extra vLLM flags (tuning), flag name without dashes -> value"
    )
    server_env: dict[str, str] = Field(
        default_factory=dict,
        description="vLLM options that exist only as environment variables (tuning), e.g. VLLM_LORA_ENABLE_DUAL_STREAM",
    )
    adapters: tuple[AdapterPin, ...] = ()
    merged_replicas: tuple[MergedReplicaSpec, ...] = ()
    operator_cidr: str | None = None
    api: ApiSpec = ApiSpec()
    admin_username: str = "azureuser"
    ssh_public_key: str | None = None
    accept_model_license: str | None = Field(
        default=None, description=f"'{MODEL_LICENSE_ACK}' acknowledges the model's licence ({MODEL_LICENSE})")
    storage: StorageSpec = StorageSpec()
    registry: RegistryRef = RegistryRef()
    gateway: GatewaySpec = GatewaySpec()
    monitoring: MonitoringSpec = MonitoringSpec()
    aks: AksSpec = AksSpec()
    os_disk_gb: int = Field(default=256, ge=64, le=4095)
    data_disk_gb: int = Field(default=256, ge=32, le=32767, description="managed data disk mounted at /data")
    tags: dict[str, str] = Field(default_factory=dict)

    @field_validator("gpu_memory_utilization")
    @classmethod
    def _util(cls, value: float) -> float:
        if not 0 < value <= 0.95:
            raise ValueError("must be in (0, 0.95]")
        return value

    @field_validator("max_lora_rank")
    @classmethod
    def _rank(cls, value: int) -> int:
        if value not in VLLM_LORA_RANKS:
            raise ValueError(f"must be one of vLLM's LoRA ranks {VLLM_LORA_RANKS}")
        return value

    @field_validator("vllm_version")
    @classmethod
    def _vllm_pin(cls, value: str) -> str:
        if not VERSION_PIN_PATTERN.fullmatch(value):
            raise ValueError("must be an exact release such as 0.26.0")
        return value

    @field_validator("server_env")
    @classmethod
    def _server_env(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not VLLM_ENV_PATTERN.fullmatch(name):
                raise ValueError(f"{name!r} is not a vLLM environment option (VLLM_ followed by capitals, digits, _)")
            if name in MANAGED_VLLM_ENV:
                raise ValueError(f"{name} is set by the deployment itself and cannot be overridden")
            if any(hint in name for hint in SECRET_HINTS):
                raise ValueError(f"{name} looks like a secret; secrets never go in stack files (use Key Vault or "
                                 "`pulumi config set --secret`)")
        return value

    @field_validator("admin_username")
    @classmethod
    def _admin_user(cls, value: str) -> str:
        if not USER_NAME_PATTERN.fullmatch(value):
            raise ValueError("must be a Linux user name: lower-case letters, digits, '_' or '-', starting with a letter "
                             "or '_', at most 32")
        if value in RESERVED_USER_NAMES:
            raise ValueError(f"{value!r} is reserved (Azure refuses it, or the service runs as it)")
        return value

    @field_validator("operator_cidr")
    @classmethod
    def _operator(cls, value: str | None) -> str | None:
        if value is None:
            return value
        net = _network(value)
        if net.prefixlen == 0:
            raise ValueError(f"{value} would open SSH to the whole Internet; give the operator's IP, e.g. 203.0.113.7/32")
        if net.prefixlen < BROADEST_SSH_PREFIX[net.version]:
            raise ValueError(
                f"{value} is broader than /{BROADEST_SSH_PREFIX[net.version]}; SSH is allowed only from the operator's network"
            )
        return value

    def server_env_on(self, name: str) -> bool:
        """Whether `serverEnv` switches option `name` on (set, and neither empty nor "0")."""
        return self.server_env.get(name, "").strip() not in ("", "0")

    @model_validator(mode="after")
    def _consistent(self) -> DeploymentSpec:
        defaults = TIER_DEFAULTS[self.tier]
        if self.target != "local" and self.vm_sku not in defaults.allowed_skus:
            raise ValueError(f"vmSku: {self.vm_sku} is not allowed for tier {self.tier} ({', '.join(defaults.allowed_skus)})")
        if self.target == "vm" and not self.gateway.enabled:
            raise ValueError("gateway.enabled: Azure VM stacks serve through the gateway (API key, admin surface on "
                             "loopback); without it vLLM's API and runtime LoRA loading would face the network")
        enabled = {name for name in self.server_env if self.server_env_on(name)}
        if self.target == "local" and (cuda_only := sorted(CUDA_ONLY_VLLM_ENV & enabled)):
            raise ValueError(f"serverEnv: {', '.join(cuda_only)} needs a CUDA GPU; target 'local' runs the CPU build "
                             "of vLLM, which would fail at start")
        if TIER_DEFAULTS[self.tier].registry_private_only and not self.registry.private_endpoint:
            raise ValueError(f"registry.privateEndpoint: tier {self.tier} reaches the registry only from its VNet")
        if self.max_cpu_loras < self.max_loras:
            raise ValueError(f"maxCpuLoras: must be >= maxLoras ({self.max_loras}); vLLM refuses to start otherwise")
        if self.gateway.enabled and len({self.port, self.gateway.engine_port, self.gateway.admin_port}) != 3:
            raise ValueError("gateway: port, enginePort and adminPort must differ")
        seen: set[str] = set()
        for i, pin in enumerate(self.adapters):
            if pin.rank > self.max_lora_rank:
                raise ValueError(f"adapters[{i}].rank: {pin.rank} is above maxLoraRank {self.max_lora_rank}")
            if pin.alias in seen:
                raise ValueError(f"adapters[{i}].alias: {pin.alias} is pinned twice")
            seen.add(pin.alias)
        self._check_merged(seen)
        return self

    def _check_merged(self, pinned: set[str]) -> None:
        if not self.merged_replicas:
            return
        if not self.gateway.enabled or self.target not in ("vm", "local"):
            raise ValueError("mergedReplicas: need target 'vm' (or 'local') with the gateway enabled (the gateway "
                             "routes to them)")
        used = {self.port, self.gateway.engine_port, self.gateway.admin_port, self.monitoring.prometheus_port}
        used |= {self.replica_port(gpu) for gpu in range(self.gpus_per_node)}
        share = dict.fromkeys(range(self.gpus_per_node), self.gpu_memory_utilization)
        for i, merged in enumerate(self.merged_replicas):
            key = f"mergedReplicas[{i}]"
            if merged.alias not in pinned:
                raise ValueError(f"{key}.alias: {merged.alias} is not one of the pinned adapters ({', '.join(sorted(pinned))})")
            if merged.gpu >= self.gpus_per_node:
                raise ValueError(f"{key}.gpu: {merged.gpu} but the node has {self.gpus_per_node} GPU(s)")
            if merged.port in used:
                raise ValueError(f"{key}.port: {merged.port} is already used by another listener")
            used.add(merged.port)
            share[merged.gpu] += merged.gpu_memory_utilization
            if share[merged.gpu] > 0.95:
                raise ValueError(f"{key}.gpuMemoryUtilization: GPU {merged.gpu} would be {share[merged.gpu]:.2f} "
                                 "committed (LoRA replica + merged replicas); keep the sum <= 0.95")
        if len({m.alias for m in self.merged_replicas}) != len(self.merged_replicas):
            raise ValueError("mergedReplicas: an alias is listed twice")

    @property
    def sku(self) -> GpuSku:
        return SKUS[self.vm_sku]

    @property
    def total_gpus(self) -> int:
        return self.gpus_per_node * self.node_count

    def replica_port(self, replica: int) -> int:
        """The port of vLLM replica `replica` (one per GPU) on its host: the engine port behind the gateway (the
        public port without it), 10 apart per replica. The one place this rule lives (topology: service.replicas)."""
        return (self.gateway.engine_port if self.gateway.enabled else self.port) + 10 * replica

    def deploy_blockers(self) -> list[str]:
        """What stops `pulumi up` (and a bootstrap) of an Azure stack: operator settings left unset or as
        examples, and an unacknowledged model licence. The loader accepts these so that previews and plans
        work before the operator has set them; the Pulumi program refuses to create anything while any remain."""
        if self.target == "local":
            return []
        problems: list[str] = []
        fix = f"pulumi config set -s {self.stack}"
        if self.target == "vm" or self.operator_cidr is not None:
            if self.operator_cidr is None:
                problems.append(f"exaone-lora:operatorCidr: not set; SSH is opened only to it: "
                                f"`{fix} exaone-lora:operatorCidr \"$(curl -s https://ifconfig.me)/32\"`")
            elif problem := operator_cidr_problem(self.operator_cidr):
                problems.append(f"exaone-lora:operatorCidr: {problem}: `{fix} exaone-lora:operatorCidr <your-ip>/32`")
        if self.target == "vm":
            if self.ssh_public_key is None:
                problems.append(f"exaone-lora:sshPublicKey: not set: "
                                f"`{fix} exaone-lora:sshPublicKey \"$(cat ~/.ssh/id_ed25519.pub)\"`")
            elif problem := ssh_key_problem(self.ssh_public_key):
                problems.append(f"exaone-lora:sshPublicKey: {problem}")
        if self.accept_model_license != MODEL_LICENSE_ACK:
            problems.append(f"exaone-lora:acceptModelLicense: {self.model.name} is licensed under the {MODEL_LICENSE} "
                            f"(non-commercial); read {MODEL_LICENSE_URL}, confirm your use with LG AI Research, then "
                            f"`{fix} exaone-lora:acceptModelLicense {MODEL_LICENSE_ACK}`")
        return problems

    def resource_tags(self) -> dict[str, str]:
        """Tags every Azure resource gets: the stack's own plus the ones the policy pack requires."""
        return {"project": self.project, "stack": self.stack, "tier": self.tier, **self.tags}


def _network(cidr: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        raise ValueError(f"{cidr!r} is not a CIDR such as 203.0.113.7/32") from None


def stack_file(stack: str, root: Path | str = ".") -> Path:
    return Path(root) / f"Pulumi.{stack}.yaml"


def read_config(path: Path) -> dict[str, Any]:
    """The `exaone-lora:*` keys of a stack file, without the namespace."""
    try:
        document = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SpecError(f"{path}: no such stack file") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{path.name}: not valid YAML: {exc}") from None
    config = (document or {}).get("config")
    if not isinstance(config, dict):
        raise SpecError(f"{path.name}: has no 'config' mapping")
    prefix = f"{PROJECT}:"
    values: dict[str, Any] = {}
    for key, value in config.items():
        if not key.startswith(prefix):
            # Keys of providers (azure-native:location, ...) belong to Pulumi, not to the spec.
            if ":" in key:
                continue
            raise SpecError(f"{path.name}: {key}: config keys are namespaced, e.g. {prefix}{key}")
        if isinstance(value, dict) and "secure" in value:
            raise SpecError(f"{path.name}: {key}: secrets do not belong in the deployment spec")
        values[key[len(prefix):]] = value
    return values


def build_spec(stack: str, values: dict[str, Any], source: str) -> DeploymentSpec:
    """Fill tier defaults, then validate; errors read `<source>: exaone-lora:<key>: <reason>`."""
    values = dict(values)
    tier = values.get("tier")
    if tier not in TIER_DEFAULTS:
        raise SpecError(f"{source}: {PROJECT}:tier: must be one of {', '.join(TIER_DEFAULTS)} (got {tier!r})")
    defaults = TIER_DEFAULTS[tier]
    values.setdefault("vmSku", defaults.vm_sku)
    sku = SKUS.get(values["vmSku"])
    values.setdefault("gpusPerNode", sku.gpus if sku else 1)
    values.setdefault("nodeCount", defaults.node_count)
    values.setdefault("gpuMemoryUtilization", defaults.gpu_memory_utilization)
    values.setdefault("maxLoras", defaults.max_loras)
    values.setdefault("maxCpuLoras", max(defaults.max_cpu_loras, values["maxLoras"]))
    values.setdefault("maxNumSeqs", defaults.max_num_seqs)
    values.setdefault("dataDiskGb", defaults.data_disk_gb)
    try:
        return DeploymentSpec.model_validate({"stack": stack, **values})
    except ValidationError as exc:
        raise SpecError("\n".join(_describe(source, err) for err in exc.errors())) from None


def _describe(source: str, err: Any) -> str:
    key = ""
    for part in err["loc"]:
        key += f"[{part}]" if isinstance(part, int) else ("." if key else "") + str(part)
    message = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        message = "unknown key (typo?)"
    if key:
        return f"{source}: {PROJECT}:{key}: {message}"
    # Model-level checks put their own key at the front of the message.
    return f"{source}: {PROJECT}:{message}"


def load_spec(stack: str, root: Path | str = ".") -> DeploymentSpec:
    """Load `Pulumi.<stack>.yaml` from `root` into a validated DeploymentSpec."""
    path = stack_file(stack, root)
    return build_spec(stack, read_config(path), path.name)
