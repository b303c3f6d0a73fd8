#!/usr/bin/env bash
# The main job on the embedded local default (no Azure account, no GPU): installs what it needs, then runs
# the local end-to-end demo of the `dev` stack. Extra arguments go to `exaone-lora demo` (e.g. --keep, --down).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh tool vllm testbed
exec .venv/bin/exaone-lora demo "$@"
