#!/usr/bin/env bash
# CI step: build the wheel, install it into a fresh venv outside the clone with the pinned
# versions (constraints.txt; torch first), then, from an empty temporary folder, run the Python
# blocks of the README and of the guide pages, import every module they name and
# `sorth <cmd> --help` for every command (scripts/test_wheel.py).
# Usage: scripts/test_wheel.sh [python]  (default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"
PY="${1:-.venv/bin/python}"
TORCH="${TORCH:-torch==2.13.0}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/sorth-wheel.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$WORK/dist" "$REPO"
WHEEL="$(ls "$WORK"/dist/sorth-*.whl)"
echo "built $(basename "$WHEEL")"
"$PY" -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
"$VPY" -m pip install -q -c "$REPO/constraints.txt" "$TORCH"
"$VPY" -m pip install -q -c "$REPO/constraints.txt" "sorth[all] @ file://$WHEEL"
mkdir "$WORK/run"
cd "$WORK/run"   # nothing of the clone on sys.path
OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" HF_HUB_OFFLINE=1 "$VPY" -I -u "$REPO/scripts/test_wheel.py" "$REPO/README.md" \
    "$REPO/docs/getting-started.md" "$REPO"/docs/guides/*.md
