#!/usr/bin/env bash
# Drift check (not part of CI's pass/fail): install the NEWEST releases pyproject.toml's ranges
# allow into a fresh venv -- no constraints.txt -- run the fast test suite, print the versions.
#
#   scripts/check_newer.sh              # fresh venv in build/newer/venv, install, fast tests
#   scripts/check_newer.sh --dry-run    # only show what the resolver would install now
#
# Env: PYTHON (default python3), EXTRAS (default all,kernels,test,docs,distributed), NEWER_DIR (build/newer).
# Exit status: the fast suite's. A green run leaves build/newer/constraints.txt (pip freeze of
# that venv): `cp build/newer/constraints.txt constraints.txt && make test` adopts it (README
# "Development"); a red one shows which release broke sorth -- add an upper bound to pyproject.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
EXTRAS="${EXTRAS:-all,kernels,test,docs,distributed}"
DIR="${NEWER_DIR:-build/newer}"

mkdir -p "$(dirname "$DIR")"
if [ "${1:-}" = "--dry-run" ]; then
    "$PYTHON" -m pip install --dry-run --ignore-installed --quiet --report "$DIR.report.json" ".[$EXTRAS]"
    "$PYTHON" - "$DIR.report.json" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
for item in sorted(report["install"], key=lambda i: i["metadata"]["name"].lower()):
    print(f'{item["metadata"]["name"]}=={item["metadata"]["version"]}')
PY
    exit 0
fi

rm -rf "$DIR/venv"
mkdir -p "$DIR"
"$PYTHON" -m venv "$DIR/venv"
PY="$DIR/venv/bin/python"
"$PY" -m pip install -q --upgrade pip
"$PY" -m pip install -q --upgrade torch          # newest torch the index offers
"$PY" -m pip install -q --upgrade ".[$EXTRAS]"   # newest releases the ranges allow
{
    echo "# pip freeze of scripts/check_newer.sh's venv, $(date -u +%Y-%m-%dT%H:%MZ)"
    "$PY" -m pip freeze --exclude sorth
} > "$DIR/constraints.txt"
echo "== newest versions the ranges allow:"
"$PY" scripts/show_versions.py
echo "== fast suite (pytest -m 'not slow') against them:"
set +e
OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" "$PY" -m pytest -q -m "not slow" -p no:cacheprovider
status=$?
set -e
if [ "$status" -eq 0 ]; then
    echo "== green: adopt with  cp $DIR/constraints.txt constraints.txt && make test"
else
    echo "== red (status $status): a newer release breaks sorth; pin it in pyproject.toml" >&2
fi
exit "$status"
