"""Local CIFAR loader (both layouts, never downloads) and the digits helper."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

import sorth.nn as snn


def _fake_images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3072), dtype=np.uint8)


def _write_binary(path, images: np.ndarray, labels: list[int], label_bytes: int) -> None:
    rows = [
        bytes([0] * (label_bytes - 1) + [lab]) + img.tobytes()
        for img, lab in zip(images, labels, strict=True)
    ]
    path.write_bytes(b"".join(rows))


@pytest.mark.parametrize("layout", ["bin", "py"])
@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_load_cifar_layouts(tmp_path, layout: str, name: str) -> None:
    folder, train_files, test_files = snn.data._LAYOUTS[(name, layout)]
    base = tmp_path / folder
    base.mkdir()
    expected = []
    for i, fname in enumerate(train_files + test_files):
        imgs, labels = _fake_images(3, i), [i % 10, (i + 1) % 10, 7]
        expected.append((imgs, labels, fname in train_files))
        if layout == "bin":
            _write_binary(base / fname, imgs, labels, 1 if name == "cifar10" else 2)
        else:
            key = "labels" if name == "cifar10" else "fine_labels"
            with (base / fname).open("wb") as f:
                pickle.dump({"data": imgs, key: labels}, f)
    for train in (True, False):
        ds = snn.load_cifar(tmp_path, name, train=train)
        imgs = np.concatenate([e[0] for e in expected if e[2] == train])
        labels = [lab for e in expected if e[2] == train for lab in e[1]]
        x, y = ds.tensors
        assert x.shape == (len(labels), 3, 32, 32)
        assert y.tolist() == labels
        # CIFAR rows are R-plane, G-plane, B-plane, each 32×32 row-major
        assert float(x[0, 1, 2, 3]) == pytest.approx(imgs[0, 1024 + 2 * 32 + 3] / 255.0)
    assert len(snn.load_cifar(base, name)) == len(train_files) * 3  # the folder itself works too


def test_missing_directory_errors_and_never_downloads(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="never downloads"):
        snn.load_cifar(tmp_path / "nope", "cifar100")
    with pytest.raises(FileNotFoundError, match=r"cifar-10-batches-bin/test_batch\.bin"):
        snn.load_cifar(tmp_path, "cifar10", train=False)


def test_digits_dataset() -> None:
    pytest.importorskip("sklearn")
    train, test = snn.load_digits_dataset(32, test_fraction=0.25, seed=0)
    assert len(train) + len(test) == 1797
    x = train.tensors[0]
    assert x.shape[1:] == (1, 32, 32)
    assert float(x.min()) >= 0.0
    assert float(x.max()) <= 1.0
    counts = torch.bincount(test.tensors[1], minlength=10)
    assert counts.min() >= 40  # stratified: ~45 of each class
    x2, _ = snn.load_digits_dataset(32, seed=0)[0].tensors
    torch.testing.assert_close(x, x2)


def test_augment_crop_flip_shapes_and_content() -> None:
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    y = snn.augment_crop_flip(x, padding=0, generator=torch.Generator().manual_seed(0))
    for i in range(2):
        assert torch.equal(y[i], x[i]) or torch.equal(y[i], x[i].flip(-1))
    assert snn.augment_crop_flip(x, padding=2).shape == x.shape
