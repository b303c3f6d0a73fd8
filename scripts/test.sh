#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs everything it needs, then lint + pytest.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh tests/foundation -x`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh tool vllm testbed
echo "==> ruff"
.venv/bin/ruff check .
echo "==> pytest"
exec .venv/bin/python -m pytest "$@"
