"""mkdocs hook: serve the npm-fetched browser assets (KaTeX, iframe-worker) with the site.

``scripts/get_docs_assets.sh`` (run by ``make docs``) fetches them from the npm registry into
``build/docs-assets/`` (ignored by git); this hook adds every file there to the build under
``javascripts/vendor/``, so ``mkdocs build`` copies them into the site and ``mkdocs serve`` serves
them. Nothing is vendored in the repository and nothing is loaded from a CDN.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

ASSETS = Path("build") / "docs-assets"  # relative to mkdocs.yml
URL = "javascripts/vendor"
NEEDED = ("katex/katex.min.js", "katex/katex.min.css", "iframe-worker/shim.js")


def on_files(files: Files, config: MkDocsConfig) -> Files:
    root = Path(config.config_file_path).parent / ASSETS
    missing = [name for name in NEEDED if not (root / name).is_file()]
    if missing:
        raise PluginError(
            f"the docs' browser assets are missing from {root} ({', '.join(missing)}): "
            "run `make docs`, or scripts/get_docs_assets.sh, to fetch them from npm"
        )
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != "VERSIONS"):
        uri = f"{URL}/{path.relative_to(root).as_posix()}"
        files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files
