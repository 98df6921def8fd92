#!/usr/bin/env bash
# Lower-bound check (not part of CI's pass/fail): install the OLDEST releases pyproject.toml's
# lower bounds allow into a fresh venv -- no constraints.txt -- run the fast test suite, print
# the versions. pip has no "lowest" resolution, so the script writes a constraints file pinning
# every requirement of the chosen extras that has a lower bound (`>=X` or `==X`) to exactly X;
# requirements without one resolve to the newest release that fits.
#
#   scripts/check_oldest.sh              # fresh venv in build/oldest/venv, install, fast tests
#   scripts/check_oldest.sh --dry-run    # only show the pins and what the resolver would install
#
# Env: PYTHON (default python3), EXTRAS (default all,kernels,test,docs,distributed),
# OLDEST_DIR (build/oldest), TORCH (a torch version to try instead of the declared lower bound,
# e.g. TORCH=2.5.1 to probe below it), PINS (more pins, "name==version ...", e.g. to bisect
# one package; default numpy==2.3.5, see below), PYTEST_ARGS (extra pytest arguments, e.g. a subset of tests).
# Torch comes from pip's index as configured (PIP_INDEX_URL / PIP_EXTRA_INDEX_URL pick a CPU or
# CUDA build; PyPI's Linux wheels are CUDA builds and pull the nvidia-* libraries, several GB).
# Exit status: the fast suite's (or pip's, when the pins cannot be installed together). A red run
# means a lower bound in pyproject.toml claims more than sorth supports: raise it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
EXTRAS="${EXTRAS:-all,kernels,test,docs,distributed}"
DIR="${OLDEST_DIR:-build/oldest}"
TORCH="${TORCH:-}"
# numpy has no lower bound, but the Triton interpreter the kernel tests run in (triton 3.2 and 3.6,
# the ones torch 2.6 and 2.11 pin) fails on numpy >= 2.4 ("only 0-dimensional arrays can be
# converted to Python scalars"): the check pins the last numpy before it; PINS= drops that.
PINS="${PINS-numpy==2.3.5}"
PYTEST_ARGS="${PYTEST_ARGS:-}"

mkdir -p "$DIR"
# The pins: every requirement of the extras (followed through sorth[...]) with a lower bound,
# pinned to it; markers are evaluated for this interpreter and platform.
"$PYTHON" - "$EXTRAS" "$TORCH" "$PINS" > "$DIR/oldest-constraints.txt" <<'PY'
import sys

try:
    import tomllib
except ImportError:  # Python 3.10
    from pip._vendor import tomli as tomllib
from pip._vendor.packaging.requirements import Requirement

extras, torch_override, overrides = sys.argv[1].split(","), sys.argv[2], sys.argv[3].split()
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
optional = project.get("optional-dependencies", {})
reqs, seen, todo = list(project["dependencies"]), set(), [e.strip() for e in extras if e.strip()]
while todo:
    extra = todo.pop()
    if extra in seen:
        continue
    seen.add(extra)
    for text in optional[extra]:
        req = Requirement(text)
        if req.name == project["name"]:
            todo.extend(req.extras)
        else:
            reqs.append(text)
pins = {}
for text in reqs:
    req = Requirement(text)
    if req.marker is not None and not req.marker.evaluate():
        continue
    lows = [s.version for s in req.specifier if s.operator in (">=", "==", "~=")]
    if lows:
        pins[req.name.lower()] = lows[0]
if torch_override:
    pins["torch"] = torch_override
for text in overrides:
    name, _, version = text.partition("==")
    pins[name.lower()] = version
print("# lower bounds of pyproject.toml, pinned (scripts/check_oldest.sh)")
for name in sorted(pins):
    print(f"{name}=={pins[name]}")
PY
TORCH_PIN="$(grep '^torch==' "$DIR/oldest-constraints.txt")"
echo "== pins (the declared lower bounds):"
sed 's/^/  /' "$DIR/oldest-constraints.txt"

if [ "${1:-}" = "--dry-run" ]; then
    "$PYTHON" -m pip install --dry-run --ignore-installed --quiet --report "$DIR.report.json" \
        -c "$DIR/oldest-constraints.txt" "$TORCH_PIN" ".[$EXTRAS]"
    "$PYTHON" - "$DIR.report.json" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
print("== the resolver would install:")
for item in sorted(report["install"], key=lambda i: i["metadata"]["name"].lower()):
    print(f'  {item["metadata"]["name"]}=={item["metadata"]["version"]}')
PY
    exit 0
fi

rm -rf "$DIR/venv"
"$PYTHON" -m venv "$DIR/venv"
PY="$DIR/venv/bin/python"
"$PY" -m pip install -q --upgrade pip
"$PY" -m pip install -q -c "$DIR/oldest-constraints.txt" "$TORCH_PIN"      # the oldest torch first
"$PY" -m pip install -q -c "$DIR/oldest-constraints.txt" ".[$EXTRAS]"      # then the oldest of the rest
{
    echo "# pip freeze of scripts/check_oldest.sh's venv, $(date -u +%Y-%m-%dT%H:%MZ)"
    "$PY" -m pip freeze --exclude sorth
} > "$DIR/constraints.txt"
echo "== oldest versions the ranges allow:"
"$PY" scripts/show_versions.py
echo "== fast suite (pytest -m 'not slow and not browser') against them:"
set +e
# shellcheck disable=SC2086  # PYTEST_ARGS is a list of arguments
OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" "$PY" -m pytest -q -m "not slow and not browser" \
    -p no:cacheprovider $PYTEST_ARGS
status=$?
set -e
if [ "$status" -eq 0 ]; then
    echo "== green: the lower bounds above pass (versions in $DIR/constraints.txt)"
else
    echo "== red (status $status): a lower bound claims more than sorth supports; raise it in pyproject.toml" >&2
fi
exit "$status"
