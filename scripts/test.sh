#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs everything it needs, then lint + pytest.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh tests/exaone_lora/test_spec.py -x`).
set -euo pipefail
cd "$(dirname "$0")/.."
# The venvs, the test host's image and the two test hosts' vLLM venvs need ~15 GB at the peak: say so before a full disk
# makes dozens of tests fail with unrelated-looking errors.
for dir in . "${TMPDIR:-/tmp}"; do
  free_gb=$(df -Pk "$dir" | awk 'NR==2 {print int($4 / 1048576)}')
  [ "$free_gb" -ge 16 ] || echo "WARNING: only $free_gb GB free under $dir; the test suite needs about 16 GB (see README)" >&2
done
bash scripts/bootstrap.sh tool vllm testbed
echo "==> ruff"
.venv/bin/ruff check .
echo "==> import contracts"; .venv/bin/lint-imports
echo "==> pytest"
exec .venv/bin/python -m pytest "$@"
