"""recipes/compare: the split, budget matching, and the whole command on a tiny model and corpus."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from recipes.common import RecipeError
from recipes.compare.data import stratified_split
from recipes.compare.methods import COMPARED, count_trainable, match_budget
from recipes.spam import HAM_GROUPS, SPAM_GROUPS
from sorth.integrations import testing
from sorth.integrations.methods import METHODS

TARGETS = ("query", "key", "value", "output.dense", "intermediate.dense")


def _rows(n_ham: int, n_spam: int) -> list[tuple[str, int]]:
    return [(f"ham {i}", 0) for i in range(n_ham)] + [(f"spam {i}", 1) for i in range(n_spam)]


def test_stratified_split_is_disjoint_stratified_fixed_and_capped():
    rows = _rows(300, 100)
    train, val, test = stratified_split(rows, (0.2, 0.2), seed=0)
    assert (len(train), len(val), len(test)) == (240, 80, 80)
    assert sorted(train + val + test) == sorted(rows)  # disjoint and complete
    for split in (train, val, test):
        assert sum(y for _, y in split) / len(split) == pytest.approx(0.25, abs=0.01)
    assert (train, val, test) == stratified_split(rows, (0.2, 0.2), seed=0)
    assert train != stratified_split(rows, (0.2, 0.2), seed=1)[0]
    _, val_c, test_c = stratified_split(rows, (0.2, 0.2), seed=0, caps=(40, 20))
    assert (len(val_c), sum(y for _, y in val_c), len(test_c)) == (40, 10, 20)
    assert set(val_c) <= set(val)
    with pytest.raises(RecipeError, match="fractions"):
        stratified_split(rows, (0.5, 0.5), seed=0)


def test_trainable_count_is_the_structure_count(tiny_roberta_dir):
    """sorth GSOFT stores b(b-1)/2 skew entries per block and factor, plus a scale per output."""
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_roberta_dir, num_labels=2)
    linears = [m for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and n.endswith(TARGETS)]  # fmt: skip
    head = sum(p.numel() for p in model.classifier.parameters())
    b = 8
    expected = sum(m.in_features * (b - 1) + m.out_features for m in linears) + head
    assert count_trainable(str(tiny_roberta_dir), METHODS["gsoft"], b, TARGETS) == expected
    assert count_trainable(str(tiny_roberta_dir), METHODS["peft_road"], 3, TARGETS) is None


def test_match_budget_picks_the_closest_count(tiny_roberta_dir, tmp_path):
    cache = tmp_path / "counts.json"
    picked = match_budget(
        str(tiny_roberta_dir), METHODS["lora"], [6000, 12000], TARGETS, cache, log=lambda _: None
    )
    counts = {int(k.rsplit("|", 1)[1]): v for k, v in json.loads(cache.read_text()).items()}
    for budget, (rank, n) in picked.items():
        assert counts[rank] == n
        assert abs(math.log(n / budget)) == min(abs(math.log(c / budget)) for c in counts.values())
    assert picked[6000][0] < picked[12000][0]


def _fake_corpus(root: Path) -> Path:
    """60 short e-mails: spam ones carry 'great best', ham ones 'bad worst'."""
    rng = random.Random(0)
    for group in (*HAM_GROUPS, *SPAM_GROUPS):
        (root / group).mkdir(parents=True)
        cue = "great best" if group in SPAM_GROUPS else "bad worst"
        for j in range(12):
            words = " ".join(rng.choice(testing.WORDS[:10]) for _ in range(6))
            (root / group / f"{j}.txt").write_bytes(f"Subject: s{j}\n\n{words} {cue}".encode())
    return root


def _args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    """A tiny configuration; later flags in ``extra`` override earlier ones (argparse)."""
    return [
        "--output_dir", str(out), "--model", str(model), "--data_dir", str(data),
        "--parts", "spam", "--methods", "gsoft", "--budgets", "9000", "--seeds", "2",
        "--lrs", "1e-3", "1e-2", "--max_steps", "4", "--eval_steps", "2", "--max_length", "16",
        "--batch_size", "8", *extra,
    ]  # fmt: skip


def test_compare_end_to_end_resumes_and_refuses_mixed_settings(tiny_roberta_dir, tmp_path):
    from recipes.compare.cells import score_adapter
    from recipes.compare.run import main

    data, out = _fake_corpus(tmp_path / "corpus"), tmp_path / "out"
    summary = main(_args(tiny_roberta_dir, data, out))
    assert summary["data"]["corpus"] == 60
    assert summary["machine"]["cores"] >= 1
    (row,) = summary["spam"]
    assert row["method"] == "gsoft"
    assert row["complete"]
    assert row["seeds"] == [0, 1]
    assert len(row["test_accuracy"]) == 2
    assert row["test_accuracy_mean"] == pytest.approx(sum(row["test_accuracy"]) / 2)
    assert row["lr"] in (1e-3, 1e-2)
    assert set(row["lr_sweep"]) == {"0.001", "0.01"}
    assert row["trainable_parameters"] == count_trainable(
        str(tiny_roberta_dir), METHODS["gsoft"], row["sizes"]["block_size"], TARGETS
    )
    assert [h["step"] for h in row["curve"]] == [2, 4]
    assert row["seconds_per_step"] > 0
    assert row["peak_rss_mb"] > 0
    for name in ("summary.json", "table.md", "compare.png", "curves.png"):
        assert (out / name).stat().st_size > 0
    assert "sorth GSOFT" in (out / "table.md").read_text()
    # the reloaded adapter scores the validation split exactly as the training run did
    cells = sorted(out.glob("spam/gsoft/budget-9000/*/cell.json"))
    assert len(cells) == 3  # two lrs on seed 0, the best lr on seed 1
    cell = json.loads(cells[0].read_text())
    acc, n = score_adapter(str(tiny_roberta_dir), cells[0].parent / "run" / "adapter",
                           str(out / "data" / "val.jsonl"), 16)  # fmt: skip
    assert acc == cell["val_accuracy"]
    assert n == summary["data"]["n_val"]
    # a rerun trains nothing (cells are reused); other settings are refused, not mixed in
    stamps = [p.stat().st_mtime_ns for p in cells]
    assert main(_args(tiny_roberta_dir, data, out))["spam"] == summary["spam"]
    assert [p.stat().st_mtime_ns for p in cells] == stamps
    with pytest.raises(SystemExit) as exit_info:
        main(_args(tiny_roberta_dir, data, out, "--batch_size", "4"))
    assert exit_info.value.code == 2
    # a cell interrupted after its run started (run.json, no cell.json) is simply run again
    # (the finetune recipe refused the folder it had claimed, and the whole command stopped)
    cells[-1].unlink()
    again = main(_args(tiny_roberta_dir, data, out))["spam"]
    assert cells[-1].is_file()
    assert again[0]["seeds"] == [0, 1]
    assert [p.stat().st_mtime_ns for p in cells[:-1]] == stamps[:-1]


def test_bad_sizes_fail_before_anything_is_written(tmp_path):
    from recipes.compare.run import main

    for bad in ("gsoft=8", "dora=4,8", "gsoft=8,x"):
        with pytest.raises(SystemExit) as exit_info:
            main(["--output_dir", str(tmp_path / "out"), "--sizes", bad])
        assert exit_info.value.code == 2
    assert not (tmp_path / "out").exists()


# size flags that fit the tiny RoBERTa (hidden 64, MLP 128), pinned: no budget matching
PINNED = ("gsoft=8", "double_gsoft=4", "oft=8", "butterfly=4", "lora=4", "peft_oft=8",
          "peft_boft=4", "peft_hra=4", "peft_road=1", "peft_psoft=8")  # fmt: skip


@pytest.mark.slow
def test_every_method_and_both_lipconvnet_kinds_run(tiny_roberta_dir, tmp_path):
    from recipes.compare.run import main

    data, out = _fake_corpus(tmp_path / "corpus"), tmp_path / "out"
    summary = main(_args(
        tiny_roberta_dir, data, out, "--seeds", "1", "--lrs", "1e-2", "--max_steps", "2",
        "--methods", *COMPARED, "--parts", "spam", "lipschitz", "--lip_variants", "soc", "gs-4",
        "--lip_channels", "4", "--lip_epochs", "1", "--train_samples", "16", "--sizes", *PINNED,
    ))  # fmt: skip
    assert {r["method"] for r in summary["spam"]} == set(COMPARED)
    for row in summary["spam"]:
        name, _, size = next(p for p in PINNED if p.startswith(row["method"] + "=")).partition("=")
        assert row["sizes"][METHODS[name].size_flag] == int(size)
    lip = {r["variant"]: r for r in summary["lipschitz"]}
    assert set(lip) == {"soc", "gs-4"}
    assert lip["gs-4"]["trainable_parameters"] < lip["soc"]["trainable_parameters"]
    for r in lip.values():
        assert r["certified_mean"] <= r["clean_mean"]
    assert (out / "lipschitz.png").stat().st_size > 0


def test_a_size_picked_for_two_budgets_runs_once():
    """RoAd's largest variant is the closest to both budgets: one row, not the same run twice."""
    from recipes.compare.run import _distinct_sizes

    groups = [("peft_road", 150_000), ("peft_road", 600_000), ("gsoft", 150_000),
              ("gsoft", 600_000)]  # fmt: skip
    picked = {"peft_road": {150_000: (4, 83_714), 600_000: (4, 83_714)},
              "gsoft": {150_000: (8, 166_658), 600_000: (32, 664_322)}}  # fmt: skip
    lines: list[str] = []
    kept = _distinct_sizes(groups, picked, log=lines.append)
    assert kept == [("peft_road", 150_000), ("gsoft", 150_000), ("gsoft", 600_000)]
    assert len(lines) == 1
    assert "peft_road" in lines[0]
    assert "600,000" in lines[0]


def test_lipconvnet_cell_interrupted_mid_run_is_run_again(tmp_path, monkeypatch):
    """A LipConvNet cell killed after its run claimed the folder (run.json, no cell.json) is
    redone and the summary rebuilt; before, every rerun stopped at 'already holds a run'."""
    import recipes.lipconvnet.train as lipconvnet
    from recipes.compare.run import main

    args = ["--output_dir", str(tmp_path / "out"), "--parts", "lipschitz", "--lip_variants", "soc",
            "--seeds", "1", "--lip_channels", "4", "--lip_epochs", "1"]  # fmt: skip

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the state a SIGKILL in the first epoch leaves

    with monkeypatch.context() as patch:
        patch.setattr(lipconvnet, "train_steps", killed)
        with pytest.raises(SystemExit) as exit_info:
            main(args)
        assert exit_info.value.code == 130
    cell = tmp_path / "out" / "lipschitz" / "soc" / "seed0"
    assert (cell / "run" / "run.json").is_file()
    assert not (cell / "cell.json").exists()
    summary = main(args)
    (row,) = summary["lipschitz"]
    assert row["variant"] == "soc"
    assert (cell / "cell.json").is_file()
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["lipschitz"] == [row]
