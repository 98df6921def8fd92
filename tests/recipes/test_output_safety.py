"""Issue 14, recipes: one run per output folder, damaged checkpoints, exclusive size flags.

Every refusal is one line on stderr with exit status 2, before anything in the folder changes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from recipes.common import RecipeError
from recipes.dreambooth import train as dreambooth
from recipes.finetune.train import main as finetune
from recipes.lipconvnet.train import main as lipconvnet


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with the hash of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _refused(capsys, entry, argv, *needles: str) -> str:
    with pytest.raises(SystemExit) as info:
        entry(argv)
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2, err
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


def _ft_args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--model", str(model), "--train_file", str(data), "--output_dir", str(out),
        "--batch_size", "8", "--lr", "5e-3", "--no-progress", *extra,
    ]  # fmt: skip


def _damage(kind: str, ckpt: Path) -> None:
    if kind == "truncated_model":
        data = (ckpt / "model.safetensors").read_bytes()
        (ckpt / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif kind == "truncated_optimizer":
        data = (ckpt / "optimizer.pt").read_bytes()
        (ckpt / "optimizer.pt").write_bytes(data[: len(data) // 3])
    elif kind == "bad_state":
        (ckpt / "state.json").write_text("{not json")
    elif kind == "missing_state":
        (ckpt / "state.json").unlink()
    elif kind == "missing_keys":
        from safetensors.torch import load_file, save_file

        tensors = load_file(ckpt / "model.safetensors")
        tensors.pop(sorted(tensors)[0])
        save_file(tensors, ckpt / "model.safetensors")
    elif kind == "other_shape":
        from safetensors.torch import load_file, save_file

        tensors = load_file(ckpt / "model.safetensors")
        key = next(k for k in sorted(tensors) if "sorth_" in k)
        tensors[key] = tensors[key][..., :-1].contiguous()
        save_file(tensors, ckpt / "model.safetensors")


@pytest.fixture(scope="module")
def finished_run(tiny_roberta_dir, sentiment_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    finetune(
        _ft_args(tiny_roberta_dir, sentiment_file, out, "--max_steps", "2",
                 "--checkpointing_steps", "1", "--block_size", "8")
    )  # fmt: skip
    return out


def test_finished_run_is_not_replaced(capsys, tiny_roberta_dir, sentiment_file, finished_run):
    """Regression: a second run silently replaced adapter/, best/, metrics and checkpoints."""
    before = _snapshot(finished_run)
    args = _ft_args(tiny_roberta_dir, sentiment_file, finished_run, "--max_steps", "1")
    _refused(capsys, finetune, args, "already holds a run", "--overwrite_output_dir")
    assert _snapshot(finished_run) == before


def test_resume_with_other_options_is_refused(
    capsys, tiny_roberta_dir, sentiment_file, finished_run
):
    before = _snapshot(finished_run)
    args = _ft_args(tiny_roberta_dir, sentiment_file, finished_run, "--max_steps", "3",
                    "--block_size", "4", "--resume_from_checkpoint", "latest")  # fmt: skip
    _refused(capsys, finetune, args, "other options", "--block_size: 8 then, 4 now")
    assert _snapshot(finished_run) == before


def test_overwrite_never_mixes_checkpoints(tiny_roberta_dir, sentiment_file, tmp_path):
    """Regression: run B pruned its own checkpoints but kept run A's; resume took A's."""
    out = tmp_path / "run"
    a = _ft_args(tiny_roberta_dir, sentiment_file, out, "--checkpointing_steps", "3")
    finetune([*a, "--max_steps", "6"])
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "checkpoint-3",
        "checkpoint-6",
    ]
    b = _ft_args(tiny_roberta_dir, sentiment_file, out, "--checkpointing_steps", "1",
                 "--lr", "1e-3", "--overwrite_output_dir")  # fmt: skip
    finetune([*b, "--max_steps", "2"])
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "checkpoint-1",
        "checkpoint-2",
    ]
    resumed = finetune([*b[:-1], "--max_steps", "3", "--resume_from_checkpoint", "latest"])
    assert [h["step"] for h in resumed["history"]] == [2, 3]  # B's history (A's ended at 6)
    state = json.loads((out / "checkpoints" / "checkpoint-2" / "state.json").read_text())
    assert state["run"] == json.loads((out / "run.json").read_text())["run"]


def test_output_dir_that_is_a_file_is_refused_before_training(
    capsys, tiny_roberta_dir, sentiment_file, tmp_path, monkeypatch
):
    target = tmp_path / "file"
    target.write_text("keep me")
    monkeypatch.setattr(
        "recipes.finetune.train.load_model", lambda *a: pytest.fail("trained before checking")
    )
    args = _ft_args(tiny_roberta_dir, sentiment_file, target, "--max_steps", "1")
    _refused(capsys, finetune, args, "is a file")
    assert target.read_text() == "keep me"
    _refused(capsys, lipconvnet, ["--dataset", "digits", "--output_dir", str(target)], "is a file")


def test_a_folder_claimed_meanwhile_is_not_taken_over(tmp_path):
    """The main process checks the folder again when it commits (commit_output_dir): a run
    started into the same folder after the first check has claimed it by then."""
    from recipes.output_dir import claim_output_dir, commit_output_dir

    @dataclasses.dataclass(frozen=True)
    class Config:
        output_dir: str
        lr: float

    class OneProcess:
        is_main_process = True

        def wait_for_everyone(self) -> None:
            pass

    first, late = Config(str(tmp_path), 1e-3), Config(str(tmp_path), 2e-3)
    claim_output_dir(first, ["adapter"], write=False)
    claim_output_dir(late, ["adapter"], write=False)  # both see an empty folder
    commit_output_dir(first, ["adapter"], OneProcess())
    claimed = (tmp_path / "run.json").read_text()
    with pytest.raises(RecipeError, match="already holds a run"):
        commit_output_dir(late, ["adapter"], OneProcess())
    assert (tmp_path / "run.json").read_text() == claimed


@pytest.mark.parametrize(
    "kind",
    [
        "truncated_model",
        "truncated_optimizer",
        "bad_state",
        "missing_state",
        "missing_keys",
        "other_shape",
    ],
)
def test_damaged_finetune_checkpoint_is_one_line(
    capsys, tiny_roberta_dir, sentiment_file, finished_run, tmp_path, kind
):
    """Regression: a damaged checkpoint ended in a traceback (exit 1)."""
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    _damage(kind, out / "checkpoints" / "checkpoint-2")
    before = _snapshot(out)
    args = _ft_args(tiny_roberta_dir, sentiment_file, out, "--max_steps", "3",
                    "--block_size", "8", "--resume_from_checkpoint", "latest")  # fmt: skip
    _refused(capsys, finetune, args, "cannot resume from checkpoint", "checkpoint-2")
    assert _snapshot(out) == before


def test_damaged_lipconvnet_checkpoint_is_one_line(capsys, tmp_path):
    args = [
        "--dataset", "digits", "--depth", "5", "--init_channels", "4", "--groups", "2",
        "--batch_size", "32", "--train_samples", "64", "--test_samples", "32",
        "--output_dir", str(tmp_path), "--no-progress",
    ]  # fmt: skip
    lipconvnet([*args, "--epochs", "1"])
    _refused(capsys, lipconvnet, [*args, "--epochs", "1"], "already holds a run")
    _damage("truncated_model", tmp_path / "checkpoints" / "checkpoint-2")
    resume = [*args, "--epochs", "2", "--resume_from_checkpoint", "latest"]
    _refused(capsys, lipconvnet, resume, "cannot resume from checkpoint")


@pytest.mark.slow
def test_damaged_dreambooth_checkpoint_is_one_line(capsys, tiny_sd_dir, instance_dir, tmp_path):
    args = [
        "--pretrained_model", str(tiny_sd_dir), "--instance_data_dir", str(instance_dir),
        "--output_dir", str(tmp_path), "--resolution", "32", "--train_batch_size", "2",
        "--nblocks", "4", "--inference_steps", "2", "--no-progress", "--checkpointing_steps", "1",
    ]  # fmt: skip
    dreambooth.main([*args, "--max_train_steps", "1"])
    _damage("bad_state", tmp_path / "checkpoints" / "checkpoint-1")
    resume = [*args, "--max_train_steps", "2", "--resume_from_checkpoint", "latest"]
    _refused(capsys, dreambooth.main, resume, "cannot resume from checkpoint", "state.json")


def test_block_size_with_nblocks_is_refused(
    capsys, tiny_roberta_dir, sentiment_file, tiny_sd_dir, instance_dir, tmp_path
):
    """Regression: finetune used --nblocks, dreambooth --block_size, when both were given."""
    args = _ft_args(tiny_roberta_dir, sentiment_file, tmp_path / "ft", "--max_steps", "1",
                    "--block_size", "8", "--nblocks", "4")  # fmt: skip
    _refused(capsys, finetune, args, "--block_size=8 and --nblocks=4 are exclusive")
    db = [
        "--pretrained_model", str(tiny_sd_dir), "--instance_data_dir", str(instance_dir),
        "--output_dir", str(tmp_path / "db"), "--block_size", "8", "--nblocks", "4",
    ]  # fmt: skip
    _refused(capsys, dreambooth.main, db, "--block_size=8 and --nblocks=4 are exclusive")
    assert not (tmp_path / "ft").exists()
    assert not (tmp_path / "db").exists()


_LIP = ["--dataset", "digits", "--depth", "5", "--init_channels", "4", "--groups", "2",
        "--batch_size", "32", "--train_samples", "64", "--test_samples", "32", "--epochs", "1",
        "--no-progress"]  # fmt: skip


def test_overwrite_unlinks_symlinked_outputs_and_never_follows_them(tmp_path):
    """Regression: with checkpoints/ a link to another disk, --overwrite_output_dir deleted
    run.json, the model and the metrics, then raised 'Cannot call rmtree on a symbolic link'
    (a traceback), and so did every rerun."""
    out, disk = tmp_path / "run", tmp_path / "other-disk"
    args = [*_LIP, "--output_dir", str(out)]
    lipconvnet(args)
    disk.mkdir()
    shutil.move(out / "checkpoints", disk / "checkpoints")
    (out / "checkpoints").symlink_to(disk / "checkpoints")
    shutil.move(out / "metrics.json", disk / "metrics.json")
    (out / "metrics.json").symlink_to(disk / "metrics.json")
    (out / "curves.png").unlink()
    (out / "curves.png").symlink_to(disk / "gone.png")  # a dangling link
    kept = _snapshot(disk)
    for _ in range(2):  # every rerun works
        lipconvnet([*args, "--overwrite_output_dir"])
        assert _snapshot(disk) == kept  # the links' targets are untouched
        assert not any(p.is_symlink() for p in out.iterdir())
        assert (out / "model.safetensors").is_file()
        assert not list(out.glob(".overwritten-*"))


def test_overwrite_into_a_new_folder_runs(tmp_path):
    """Regression: --overwrite_output_dir on a folder that does not exist yet (the usual first
    run of a script that always passes it) failed with "cannot move the old run's
    '.overwritten-<pid>' out of the way": the trash folder was made inside a missing parent."""
    out = tmp_path / "new" / "run"
    lipconvnet([*_LIP, "--output_dir", str(out), "--overwrite_output_dir"])
    assert (out / "model.safetensors").is_file()
    assert not list(out.glob(".overwritten-*"))


def test_overwrite_that_cannot_move_an_output_deletes_nothing(capsys, tmp_path, monkeypatch):
    out = tmp_path / "run"
    args = [*_LIP, "--output_dir", str(out)]
    lipconvnet(args)
    before = _snapshot(out)
    real = os.replace

    def refuse(src, dst):
        if Path(src).name == "model.safetensors":
            raise PermissionError(13, "Permission denied")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", refuse)
    _refused(capsys, lipconvnet, [*args, "--overwrite_output_dir"], "model.safetensors",
             "nothing was deleted")  # fmt: skip
    assert _snapshot(out) == before
    assert not list(out.glob(".overwritten-*"))


def test_tilde_output_dir_is_expanded_everywhere(tmp_path, monkeypatch):
    """Regression: `--output_dir=~/run` (the `=` form: no shell expansion) wrote the run under
    $HOME, but `--resume_from_checkpoint latest` looked in the literal './~/run', found nothing
    and silently started from step 0."""
    from recipes.training import find_checkpoint

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    args = [*_LIP, "--output_dir=~/run"]
    lipconvnet(args)
    out = tmp_path / "home" / "run"
    (latest,) = sorted((out / "checkpoints").glob("checkpoint-*"))[-1:]
    assert find_checkpoint("~/run", "latest") == latest  # (the Python API expands too)
    state = json.loads((latest / "state.json").read_text())
    state["history"][0]["marker"] = "from the checkpoint"
    (latest / "state.json").write_text(json.dumps(state))
    resumed = lipconvnet([*args, "--epochs", "2", "--resume_from_checkpoint", "latest"])
    assert resumed["history"][0].get("marker") == "from the checkpoint"
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    assert not (tmp_path / "~").exists()


def test_resume_from_the_folder_of_checkpoints_names_the_right_argument(capsys, tmp_path):
    """Regression: `--resume_from_checkpoint OUT/checkpoints` said 'delete it' (every
    checkpoint); now it suggests 'latest' and the newest checkpoint-N, and never deleting."""
    out = tmp_path / "run"
    args = [*_LIP, "--output_dir", str(out)]
    lipconvnet(args)
    before = _snapshot(out)
    newest = sorted((out / "checkpoints").glob("checkpoint-*"))[-1]
    for spec in (out / "checkpoints", out):
        resume = [*args, "--epochs", "2", "--resume_from_checkpoint", str(spec)]
        err = _refused(capsys, lipconvnet, resume, "latest", str(newest))
        assert "delete" not in err
    (tmp_path / "empty").mkdir()
    resume = [*args, "--epochs", "2", "--resume_from_checkpoint", str(tmp_path / "empty")]
    err = _refused(capsys, lipconvnet, resume, "not a checkpoint folder", "latest")
    assert "delete" not in err
    assert _snapshot(out) == before
