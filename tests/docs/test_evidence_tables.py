"""The comparison's tables in the README and on the Evidence page are what
``recipes.compare.report`` prints from the committed ``docs/measurements/compare_summary.json``:
one home per figure (the JSON), and the text generated from it."""

from __future__ import annotations

import json
import re
from pathlib import Path

from recipes.compare.report import markdown, summary_table

ROOT = Path(__file__).resolve().parents[2]
SUMMARY = json.loads((ROOT / "docs" / "measurements" / "compare_summary.json").read_text())


def _readme_table() -> str:
    readme = (ROOT / "README.md").read_text()
    found = re.search(
        r"<!-- summary_table:[^\n]*-->\n(.*?)<!-- end summary_table -->", readme, re.S
    )
    assert found, "the README has no generated evidence table"
    return found.group(1)


def test_readme_table_is_generated_from_the_committed_summary() -> None:
    expected = summary_table(SUMMARY)
    assert _readme_table() == expected, f"regenerate the README table:\n{expected}"
    rows = expected.strip().splitlines()[2:]
    assert 1 <= len(rows) <= 12


def test_evidence_page_tables_are_generated_from_the_committed_summary() -> None:
    page = (ROOT / "docs" / "evidence.md").read_text()
    spam, lipschitz = markdown(SUMMARY["spam"], SUMMARY["lipschitz"]).split("\n\n")
    assert spam in page, f"regenerate the MiniLM table of docs/evidence.md:\n{spam}"
    assert lipschitz in page, f"regenerate the LipConvNet table of docs/evidence.md:\n{lipschitz}"


def test_summary_table_marks_missing_and_incomplete_rows() -> None:
    first = dict(SUMMARY["spam"][0], method="a", label="A", budget=1, complete=False)
    second = [dict(first, method="b", label="B", budget=b, complete=True) for b in (1, 2)]
    table = summary_table({"config": {"methods": ["b", "a"]}, "spam": [first, *second]})
    header, _, row_b, row_a = table.strip().splitlines()
    assert header.count("trainable") == 2
    assert row_b.startswith("| B |")
    assert "incomplete" not in row_b
    assert row_a.startswith("| A |")
    assert "(incomplete)" in row_a
    assert row_a.endswith("| – | – |")


def test_lipschitz_lm_table_is_generated_from_the_committed_summary() -> None:
    """docs/measurements/lipschitz_lm.md (included into the concept page) is what
    ``recipes.lipschitz_lm.report`` renders from the committed JSON, and no attack found a
    ratio above the certificate."""
    from recipes.lipschitz_lm.report import markdown as lm_markdown

    measured = ROOT / "docs" / "measurements"
    summary = json.loads((measured / "lipschitz_lm.json").read_text())
    assert (measured / "lipschitz_lm.md").read_text() == lm_markdown(summary)
    page = (ROOT / "docs" / "concepts" / "lipschitz-transformers.md").read_text()
    assert '--8<-- "docs/measurements/lipschitz_lm.md"' in page
    assert summary["worst_empirical_over_certified"] <= 1.0
    assert len(summary["runs"]) == 15
    assert {(r["method"], r["target_bound"], r["seeds"]) for r in summary["rows"]} == {
        ("baseline", None, 3), ("spectral", 2, 3), ("spectral", 10, 3), ("gs", 2, 3),
        ("gs", 10, 3),
    }  # fmt: skip
