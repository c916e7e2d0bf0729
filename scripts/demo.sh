#!/usr/bin/env bash
# The demo: solar-cell defects (elpv) -> mobilenet_v2 from ImageNet -> ONNX Runtime + OpenVINO -> report.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
[ -d data/elpv ] || edge-tl dataset elpv --out data/elpv
edge-tl run examples/elpv-demo.toml
echo "reports: runs/elpv/reports/ (open runs/elpv/reports/index.html)"
