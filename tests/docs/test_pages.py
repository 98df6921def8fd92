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
