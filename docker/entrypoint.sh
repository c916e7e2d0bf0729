#!/bin/sh
# Entrypoint of the edge-tl Jetson image.
#
# 1. When a bundle is mounted at $EDGE_TL_BUNDLE (default /bundle): verify every file's sha256, open
#    the model -- a TensorRT bundle builds its engine from model.onnx here on the first start and
#    caches it in $EDGE_TL_ENGINE_CACHE (keep that on a volume) -- and check the golden images. A
#    changed bundle or a device that does not reproduce the golden outputs stops the container (exit 2).
# 2. Run the command:
#      predict BUNDLE IMAGE_OR_DIR... [--json]     classify files
#      watch BUNDLE DIR [--log F] [--move-to D]    classify a camera's drop folder, exactly once each
#      bench BUNDLE [--iterations N]               time the bundle's runtime on this device
#      bench RUN --target T                        the run-directory benchmark (edge-tl bench)
#      prepare [BUNDLE]                            step 1 only
#      anything else                               passed to edge-tl
set -eu

bundle=${EDGE_TL_BUNDLE:-/bundle}
cmd=${1:-help}

case "$cmd" in
    help | -h | --help)
        exec edge-tl --help
        ;;
    prepare)
        shift
        exec python -m edge_tl.runtime prepare "${1:-$bundle}"
        ;;
esac

if [ -f "$bundle/bundle.json" ]; then
    echo "edge-tl: preparing $bundle (a TensorRT bundle builds its engine on the first start: minutes)" >&2
    # stdout stays clean for predict --json: the summary goes to the log stream.
    python -m edge_tl.runtime prepare "$bundle" >&2
fi

case "$cmd" in
    bench)
        shift
        if [ "$#" -gt 0 ] && [ -f "$1/bundle.json" ]; then
            exec python -m edge_tl.runtime bench "$@"
        fi
        exec edge-tl bench "$@"
        ;;
    *)
        # exec: edge-tl gets the container's signals (watch finishes its batch on SIGTERM).
        exec edge-tl "$@"
        ;;
esac
