"""recipes/lipconvnet end to end on the bundled digits with a tiny GS-LipConvNet."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from recipes.lipconvnet.train import main
from sorth.nn import LipConvNet


def test_digits_train_certify_save_resume(tmp_path):
    args = [
        "--dataset", "digits", "--depth", "5", "--init_channels", "4", "--groups", "2",
        "--batch_size", "32", "--train_samples", "96", "--test_samples", "64",
        "--output_dir", str(tmp_path), "--no-progress",
    ]  # fmt: skip
    first = main([*args, "--epochs", "1"])
    hist = first["history"]
    assert [h["epoch"] for h in hist] == [1]
    assert 0.0 <= hist[0]["certified_accuracy"] <= hist[0]["accuracy"] <= 1.0
    assert (tmp_path / "curves.png").stat().st_size > 0
    resumed = main([*args, "--epochs", "2", "--resume_from_checkpoint", "latest"])
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    assert resumed["history"][0] == hist[0]
    # the saved model rebuilds from its config and reproduces the logits
    kwargs = json.loads((tmp_path / "model_config.json").read_text())
    net = LipConvNet(**{**kwargs, "groups": tuple(kwargs["groups"])})
    net.load_state_dict(load_file(tmp_path / "model.safetensors"))
    x = torch.rand(2, 1, 32, 32)
    assert net.eval()(x).shape == (2, 10)


def test_bad_input(capsys, tmp_path):
    cases = [
        (["--dataset", "cifar10"], "needs --data_dir"),
        (["--dataset", "cifar10", "--data_dir", str(tmp_path)], "no cifar10 train split"),
        (["--dataset", "digits", "--depth", "7"], "depth"),
        (["--dataset", "digits", "--lr", "0"], "out of range"),
    ]
    for extra, message in cases:
        with pytest.raises(SystemExit) as info:
            main([*extra, "--output_dir", str(tmp_path / "out")])
        assert info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert message in err
        assert len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()
