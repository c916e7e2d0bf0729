#!/usr/bin/env bash
# Set up .venv and run the default test suite (offline; slow real-data checks: add -m slow).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"  # tools the tests call (hadolint, shellcheck, edge-tl)
exec .venv/bin/python -m pytest "$@"
