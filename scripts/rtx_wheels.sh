#!/usr/bin/env bash
# TensorRT for RTX on a GPU machine that reaches no package registry and takes at most 64 MiB of carried
# (git-ignored) files per call: the 95 MB libs wheel travels in two parts, on two consecutive calls, and is put
# back together and checked there (docs/tensorrt.md, "Running on a lent GPU").
#
#   scripts/rtx_wheels.sh fetch            here (PyPI): wheels for the GPU machine's Python into .rtx-wheels/,
#                                          then split into .rtx-wheels/carry-1/ and .rtx-wheels/carry-2/ (< 60 MiB each)
#   scripts/rtx_wheels.sh cpu-built PKG    here: copy a package whose engines were built on this CPU machine into
#                                          .rtx-wheels/cpu-built/ (carried on the first call; gpu_check runs them)
#   scripts/rtx_wheels.sh install [DIR]    there, after both calls carried their folder: reassemble, check the
#                                          sha256 of every wheel, install with pip --target DIR (default /tmp/rtx-site)
#
# Environment: RTX_VERSION (default 1.7.1.116), GPU_PYTHON_VERSION (default 3.12, the GPU image's python3).
set -euo pipefail
cd "$(dirname "$0")/.."
RTX_VERSION="${RTX_VERSION:-1.7.1.116}"
PYVER="${GPU_PYTHON_VERSION:-3.12}"
WHEELS=.rtx-wheels
PART_BYTES=$((46 * 1024 * 1024))  # two parts of the 90.7 MiB libs wheel, each with the 4 MiB tree under 64 MiB

fetch() {
    local python="${PYTHON:-.venv/bin/python}" tmp="$WHEELS/download"
    mkdir -p "$tmp" "$WHEELS/carry-1" "$WHEELS/carry-2"
    "$python" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
        --platform manylinux_2_28_x86_64 -d "$tmp" \
        "tensorrt-rtx-cu13-libs==$RTX_VERSION" "tensorrt-rtx-cu13-bindings==$RTX_VERSION" "rwkv==0.8.32"
    # the top-level package is an sdist on PyPI: build its (pure Python) wheel here, where setuptools can be fetched
    "$python" -m pip wheel -q --no-deps -w "$tmp" "tensorrt-rtx-cu13==$RTX_VERSION"
    local libs
    libs=$(ls "$tmp"/tensorrt_rtx_cu13_libs-*.whl)
    rm -f "$WHEELS"/carry-1/* "$WHEELS"/carry-2/*.part-* "$WHEELS"/carry-2/*.whl
    split -b "$PART_BYTES" -d -a 2 "$libs" "$WHEELS/carry-1/$(basename "$libs").part-"
    mv "$WHEELS/carry-1/$(basename "$libs").part-01" "$WHEELS/carry-2/"
    if ls "$WHEELS/carry-1/"*.part-02 >/dev/null 2>&1; then
        echo "the libs wheel needs more than two parts: raise PART_BYTES" >&2; exit 1
    fi
    find "$tmp" -name '*.whl' ! -name 'tensorrt_rtx_cu13_libs-*' -exec cp {} "$WHEELS/carry-2/" \;
    (cd "$tmp" && sha256sum -- *.whl) > "$WHEELS/carry-2/SHA256SUMS"
    du -sh "$WHEELS/carry-1" "$WHEELS/carry-2"
}

install() {
    local target="${1:-/tmp/rtx-site}" build="$WHEELS/assembled"
    for part in 1 2; do
        [ -d "$WHEELS/carry-$part" ] || { echo "missing $WHEELS/carry-$part: carry it first" >&2; exit 2; }
    done
    mkdir -p "$build"
    local first name
    first=$(ls "$WHEELS"/carry-1/*.part-00)
    name=$(basename "$first" .part-00)
    cat "$first" "$WHEELS/carry-2/$name.part-01" > "$build/$name"
    cp "$WHEELS"/carry-2/*.whl "$build/"
    (cd "$build" && sha256sum -c --quiet "../carry-2/SHA256SUMS")
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$target" "$build"/*.whl
    echo "installed into $target: export PYTHONPATH=$target:\$PYTHONPATH"
}

cpu_built() {
    local package="${1:?usage: scripts/rtx_wheels.sh cpu-built PACKAGE_WITH_ENGINES}"
    [ -f "$package/engines/step.json" ] || { echo "$package: no engines/step.json (run build-engine first)" >&2; exit 2; }
    mkdir -p "$WHEELS/cpu-built"
    rm -rf "$WHEELS/cpu-built/$(basename "$package")"
    cp -r "$package" "$WHEELS/cpu-built/"
    du -sh "$WHEELS/cpu-built"
}

case "${1:-}" in
    fetch) fetch ;;
    cpu-built) shift; cpu_built "$@" ;;
    install) shift; install "$@" ;;
    *) sed -n '2,14p' "$0"; exit 2 ;;
esac
