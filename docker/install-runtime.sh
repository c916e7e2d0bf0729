#!/bin/sh
# Install edge-tl's device runtime (numpy, pillow, onnxruntime; never torch) into a virtual env.
# The Jetson image runs exactly this step; so does the plain-venv check of the install on a workstation.
#
#   usage: install-runtime.sh VENV SRC [pip requirement ...]
#     VENV  the virtual env to create (with --system-site-packages when EDGE_TL_SYSTEM_SITE=1, so that
#           JetPack's TensorRT Python bindings, which pip cannot install on a Jetson, are visible)
#     SRC   the edge-tl source tree (or a wheel) to install with the [runtime] extra
#     extra requirements/constraints follow (the image adds cuda-python and numpy<2)
set -eu

if [ "$#" -lt 2 ]; then
    echo "usage: $0 VENV SRC [pip requirement ...]" >&2
    exit 2
fi
venv=$1
src=$2
shift 2

if [ "${EDGE_TL_SYSTEM_SITE:-0}" = 1 ]; then
    python3 -m venv --system-site-packages "$venv"
else
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --no-cache-dir --upgrade pip
"$venv/bin/python" -m pip install --no-cache-dir "${src}[runtime]" "$@"

# The runtime must come without torch: fail the build if anything pulled it in.
if "$venv/bin/python" -c 'import importlib.util, sys; sys.exit(0 if importlib.util.find_spec("torch") else 1)'; then
    echo "install-runtime: torch is importable in $venv; the runtime install must not contain it" >&2
    exit 1
fi
"$venv/bin/python" -c 'import edge_tl.runtime, edge_tl.cli'
"$venv/bin/edge-tl" --help >/dev/null
echo "install-runtime: edge-tl runtime installed in $venv (no torch)"
