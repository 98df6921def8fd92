#!/usr/bin/env bash
# The prepared GPU check: one command, at most 8 minutes on one H100/H200-class GPU.
#
#   scripts/gpu_check.sh OUT_DIR                      # on the GPU machine
#   scripts/gpu_check.sh OUT_DIR --quick --device cpu # the dry run (tiny sizes, < 60 s; CI)
#
# Uses the machine's own python / torch / triton / transformers; sorth and recipes come from
# this checkout (PYTHONPATH, nothing installed). Writes OUT_DIR/gpu_check.json and
# OUT_DIR/gpu_check.md after every row, so a run stopped early still leaves its results.
# Sections: (a) Triton vs torch vs dense accuracy, (b) fused multiply vs copy bandwidth,
# (c) training steps against PEFT LoRA / OFT, (d) a 20-step GSOFT fine-tune + merge
# (recipes/benchmark/gpu_check.py). Extra flags go to it (--sections abd, --deadline 300).
#
# Wheels: (c) and (d) need peft (and transformers, accelerate, ...). On a machine without
# them, carry the wheels in a folder and point WHEELS at it; they are unpacked into a temporary
# folder put on PYTHONPATH (no pip, no network):
#   pip download --no-deps -d build/gpu-wheels peft==0.21.2   # on a networked machine (+ what
#                                   # the JSON's environment.missing lists, e.g. psutil==7.2.2)
#   WHEELS=build/gpu-wheels scripts/gpu_check.sh OUT_DIR
# The JSON's environment.missing / carry_in name what this machine lacked.
# Env: PYTHON (default python3), WHEELS (default build/gpu-wheels when it exists),
# GPU_CHECK_KILL_S (hard limit, default 470 s; the Python side stops itself at 440 s).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
if [ $# -lt 1 ] || [[ "$1" == -* ]]; then
    echo "usage: $0 OUT_DIR [--quick] [--device cpu|cuda] [--sections abcd]" >&2
    exit 2
fi
OUT="$1"; shift
PYTHON="${PYTHON:-python3}"
mkdir -p "$OUT"
DEPS=""
WHEELS="${WHEELS:-$ROOT/build/gpu-wheels}"
if compgen -G "$WHEELS/*.whl" > /dev/null; then
    DEPS="$(mktemp -d "${TMPDIR:-/tmp}/sorth-gpu-deps.XXXXXX")"
    trap 'rm -rf "$DEPS"' EXIT
    for whl in "$WHEELS"/*.whl; do
        "$PYTHON" -m zipfile -e "$whl" "$DEPS"   # a wheel is a zip of an installed tree
    done
    SORTH_GPU_CHECK_WHEELS="$(cd "$WHEELS" && ls -- *.whl | tr '\n' ' ')"
    export SORTH_GPU_CHECK_WHEELS  # recorded in the JSON (environment.carried_in)
    echo "carried-in wheels from $WHEELS: $SORTH_GPU_CHECK_WHEELS"
fi
# the checkout first, then the carried-in wheels, then what the machine has
export PYTHONPATH="$ROOT${DEPS:+:$DEPS}${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
cd "$ROOT"
status=0
timeout --kill-after=10 "${GPU_CHECK_KILL_S:-470}" \
    "$PYTHON" -m recipes.benchmark.gpu_check --out "$OUT" "$@" || status=$?
if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
    echo "gpu_check: killed at the hard limit; $OUT holds the rows written until then" >&2
fi
exit "$status"
