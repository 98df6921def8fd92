"""Public text names only what ships: the README, CONTRIBUTING, docs/ and every docstring of
sorth/ and recipes/ cite no file outside the repository and no tracker label; the paper is cited
properly; LICENSE, CITATION.cff and the project URLs are there and agree with pyproject.toml."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import tomllib

import sorth

ROOT = Path(__file__).resolve().parents[2]

# a file of the authors' working notes that is not in the repository, their folder, and the
# labels of this project's tracker ("issue 15", "Issue #6", "issues 11-12"; an upstream issue
# named with its project, "PyTorch issue 162338", is a public reference); "D5"-style tags
FORBIDDEN = re.compile(
    r"paper\.md|shared/|peft_anchors|lipschitz_anchors|diffusion_and_data|"
    r"(?<!pytorch )(?<!torch )\bissues? ?#?\d+|\(D\d+\)|, D\d+\b|§\d+(?:\.\d+)* D\d+",
    re.IGNORECASE,
)


def _public_pages() -> list[Path]:
    pages = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "recipes" / "README.md"]
    pages += sorted((ROOT / "compat").rglob("*.md"))
    return pages + sorted(p for p in (ROOT / "docs").rglob("*") if p.suffix in (".md", ".py"))


def _docstrings(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every module, class and function docstring in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                out.append((node.body[0].lineno, doc))
    return out


def _hits(text: str) -> list[str]:
    return [m.group(0) for m in FORBIDDEN.finditer(text)]


def test_pattern_catches_what_it_should() -> None:
    bad = "see paper.md §1.3, shared/x.md, peft_anchors.md, (issue 15), Issue #6, issues 11, (D5)"
    assert _hits(bad) == [
        "paper.md",
        "shared/",
        "peft_anchors",
        "issue 15",
        "Issue #6",
        "issues 11",
        "(D5)",
    ]
    assert not _hits("Section 6.1 of the paper; Table 3; Note [GS kernel]; arXiv:2406.10019")
    assert not _hits("PyTorch issue 162338 (github.com/pytorch/pytorch/issues/162338)")


@pytest.mark.parametrize("page", _public_pages(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_public_page_cites_only_what_ships(page: Path) -> None:
    hits = _hits(page.read_text())
    assert not hits, f"{page.relative_to(ROOT)} cites {hits}"


def test_docstrings_cite_only_what_ships() -> None:
    problems = []
    for package in ("sorth", "recipes"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for line, doc in _docstrings(path):
                problems += [f"{path.relative_to(ROOT)}:{line}: {h}" for h in _hits(doc)]
    assert not problems, "docstrings cite what does not ship:\n" + "\n".join(problems)


def test_printed_notes_cite_only_what_ships() -> None:
    """Strings a program prints (a benchmark table's notes, an error) are public text too."""
    problems = []
    for package in ("sorth", "recipes"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    hits = _hits(node.value)
                    problems += [f"{path.relative_to(ROOT)}:{node.lineno}: {h}" for h in hits]
    assert not problems, "\n".join(problems)


PAPER = "Group and Shuffle: Efficient Structured Orthogonal Parametrization"
AUTHORS = ("Gorbunov", "Yudin", "Soboleva", "Alanov", "Naumov", "Rakhuba")


def test_readme_cites_the_paper_with_bibtex() -> None:
    readme = (ROOT / "README.md").read_text()
    bibtex = re.search(r"```bibtex\n(.*?)```", readme, re.S)
    assert bibtex, "the README has no BibTeX block"
    entry = " ".join(bibtex.group(1).split())
    assert PAPER in entry
    assert all(name in entry for name in AUTHORS)
    assert "2406.10019" in entry
    assert "2024" in entry
    assert "Neural Information Processing" in entry
    assert "CITATION.cff" in readme
    assert "LICENSE" in readme


def test_citation_cff_describes_this_software() -> None:
    yaml = pytest.importorskip("yaml")
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert cff["cff-version"] == "1.2.0"
    assert cff["type"] == "software"
    assert cff["version"] == sorth.__version__ == project["version"]
    assert cff["license"] == project["license"]
    assert cff["authors"]
    (paper,) = [r for r in cff["references"] if r["title"] == PAPER]
    assert [a["family-names"] for a in paper["authors"]] == list(AUTHORS)
    assert paper["year"] == 2024
    assert {"type": "other", "value": "arXiv:2406.10019"} in paper["identifiers"]


def test_license_is_the_apache_2_text_pyproject_declares() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
    text = (ROOT / "LICENSE").read_text()
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "9. Accepting Warranty or Additional Liability." in text
    assert "END OF TERMS AND CONDITIONS" in text
    assert len(text.splitlines()) == 202  # the full text, with its appendix
    assert project["license-files"] == ["LICENSE"]


def test_project_urls_point_somewhere_real() -> None:
    urls = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]
    assert urls, "[project.urls] is empty"
    assert all(u.startswith("https://") for u in urls.values())
    assert "https://arxiv.org/abs/2406.10019" in urls.values()
