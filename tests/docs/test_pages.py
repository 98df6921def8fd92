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


def test_nav_lists_every_page() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = {p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md")}
    pages.discard("README.md")
    # generated tables, included into pages with --8<-- (mkdocs.yml excludes them as pages)
    pages -= {p for p in pages if p.startswith("measurements/")}
    missing = [p for p in pages if p not in nav]
    assert not missing, f"pages not in mkdocs.yml nav: {missing}"
    assert "--strict" in (ROOT / "Makefile").read_text()


README_SECTIONS = [
    "## Why sorth, and when not",
    "## Install",
    "## Quick start",
    "## What's inside",
    "## Recipes",
    "## Evidence",
    "## Citing",
    "## License",
]


def test_readme_is_a_short_front_door() -> None:
    """≤ 200 lines; what, why and when not, install and the quick start within the first 60."""
    text = (ROOT / "README.md").read_text()
    lines = text.splitlines()
    assert len(lines) <= 200, f"README has {len(lines)} lines"
    assert not re.search(r"\b(TODO|TBD|XXX|[A-Z]{4,}_[A-Z_]+)\b", text), "a placeholder is left"
    headings = [line for line in lines if line.startswith("## ")]
    assert headings == README_SECTIONS
    start = lines.index("## Quick start")
    end = lines.index("```", lines.index("```python", start) + 1)
    assert end < 60, f"the quick start ends on line {end + 1}"
    why = lines[lines.index(README_SECTIONS[0]) + 1 : lines.index(README_SECTIONS[1])]
    assert len([line for line in why if line.strip()]) <= 15
    assert "when not" in README_SECTIONS[0]
    assert any("Where it is not" in line for line in why)
    install = lines[lines.index("## Install") : start]
    assert sum(line.startswith("pip install") for line in install) == 1


def _readme_links() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return [t for t in re.findall(r"\]\(([^)\s]+)\)", text) if "//" not in t]


def _anchors(page: Path) -> set[str]:
    """The heading anchors a code host (and mkdocs' toc) derives from a Markdown page."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    titles = re.findall(r"^#{1,6} (.+)$", text, re.M)
    return {re.sub(r"[^\w\- ]", "", t.replace("`", "").lower()).replace(" ", "-") for t in titles}


def test_readme_links_resolve_and_read_fine_on_a_code_host() -> None:
    """The README is read on a code host, which shows `--8<--` includes and TeX as raw text: the
    pages it links to have neither (the math pages are read on the built site)."""
    links = _readme_links()
    assert links
    for link in links:
        target, _, anchor = link.partition("#")
        path = ROOT / target
        assert path.is_file(), f"README links {target}, which does not exist"
        assert not anchor or anchor in _anchors(path), f"README links {link}: no such heading"
        if path.suffix != ".md":
            continue
        text = path.read_text()
        assert not re.search(r"^\s*--8<--", text, re.M), f"{target} holds a --8<-- include"
        text = re.sub(r"```.*?```|`[^`\n]*`", "", text, flags=re.S)  # code aside
        raw = re.findall(r"\\[(\[]|\$\$", text)
        assert not raw, f"{target} holds TeX ({raw[:3]}), which a code host shows raw"
    guides = {p.relative_to(ROOT).as_posix() for p in (ROOT / "docs" / "guides").glob("*.md")}
    linked = {link.partition("#")[0] for link in links}
    assert guides <= linked, f"guides the README does not link: {guides - linked}"


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
