"""The docs' code blocks run, and the pages link what the issue asks for."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONCEPTS = sorted((ROOT / "docs" / "concepts").glob("*.md"))


@pytest.mark.parametrize("page", CONCEPTS, ids=lambda p: p.stem)
def test_concept_page_code_runs(page: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), re.S)
    assert blocks, f"{page.name} has no example"
    for i, block in enumerate(blocks):
        exec(compile(block, f"{page.name}[{i}]", "exec"), {})


def test_nav_lists_every_page_and_the_readme_links_the_docs() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = {p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md")}
    pages.discard("README.md")
    missing = [p for p in pages if p not in nav]
    assert not missing, f"pages not in mkdocs.yml nav: {missing}"
    assert "--strict" in (ROOT / "Makefile").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "## Documentation and the sorth command" in readme
    for target in ("docs/cli.md", "docs/tutorials/index.md", "docs/concepts/gs-matrices.md"):
        assert target in readme


def test_site_config_loads_nothing_from_a_cdn() -> None:
    """The cheap half of tests/docs/test_browser.py, for machines without Chromium."""
    import yaml

    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    scripts = [*config.get("extra_javascript", []), *config.get("extra_css", [])]
    scripts += config.get("extra", {}).get("polyfills", [])
    remote = [s for s in scripts if "//" in str(s)]
    assert not remote, f"mkdocs.yml loads {remote} from the network: fetch them with npm"
    assert config["theme"].get("font") is False, "theme.font loads Google Fonts"
    assert config.get("use_directory_urls") is False, "directory links do not open from disk"
    assert "offline" in config["plugins"], "the search needs the offline plugin on file://"
    for script in scripts:
        local = ROOT / "docs" / script
        vendored = script.startswith("javascripts/vendor/")
        assert vendored or local.is_file(), f"{script} is neither in docs/ nor fetched from npm"
    fetched = (ROOT / "docs" / "hooks" / "offline_assets.py").read_text()
    assert "javascripts/vendor" in fetched
    assert "scripts/get_docs_assets.sh" in (ROOT / "Makefile").read_text()
