"""Local image data for LipConvNet: CIFAR-10/100 from a directory (never downloads), digits.

CIFAR layouts read by :func:`load_cifar` (``root`` may be the parent or the folder itself):

==========  ==============================================  ===================================
dataset     torchvision / python layout (pickles)           original binary layout
==========  ==============================================  ===================================
cifar10     ``cifar-10-batches-py/data_batch_{1..5}``,       ``cifar-10-batches-bin/
            ``test_batch``                                   data_batch_{1..5}.bin``,
                                                             ``test_batch.bin`` (1 + 3072 B)
cifar100    ``cifar-100-python/train``, ``test``             ``cifar-100-binary/train.bin``,
            (``fine_labels``)                                ``test.bin`` (2 + 3072 B, fine 2nd)
==========  ==============================================  ===================================

The binary layout is preferred when both exist (the pickles need ``numpy`` and ``pickle``;
only open pickles you trust). Images come back as ``(N, 3, 32, 32)`` floats in ``[0, 1]``;
normalise inside the model (``LipConvNet(mean=CIFAR_MEAN, std=CIFAR_STD)``) so the
certificate accounts for it.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from sorth.errors import check_choice

__all__ = [
    "CIFAR_MEAN",
    "CIFAR_STD",
    "augment_crop_flip",
    "load_cifar",
    "load_digits_dataset",
]

CIFAR_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR_STD: tuple[float, float, float] = (0.2507, 0.2507, 0.2507)  # SOC recipe: one std for all

_LAYOUTS = {
    ("cifar10", "bin"): ("cifar-10-batches-bin", [f"data_batch_{i}.bin" for i in range(1, 6)],
                         ["test_batch.bin"]),
    ("cifar10", "py"): ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)],
                        ["test_batch"]),
    ("cifar100", "bin"): ("cifar-100-binary", ["train.bin"], ["test.bin"]),
    ("cifar100", "py"): ("cifar-100-python", ["train"], ["test"]),
}  # fmt: skip


def _find(root: Path, name: str, train: bool) -> tuple[str, list[Path]] | None:
    for kind in ("bin", "py"):
        folder, train_files, test_files = _LAYOUTS[(name, kind)]
        files = train_files if train else test_files
        for base in (root / folder, root):
            paths = [base / f for f in files]
            if all(p.is_file() for p in paths):
                return kind, paths
    return None


def _read_binary(path: Path, label_bytes: int) -> tuple[torch.Tensor, torch.Tensor]:
    raw = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
    record = label_bytes + 3072
    if raw.numel() % record:
        raise ValueError(f"{path} has {raw.numel()} bytes, not a multiple of {record}: not CIFAR.")
    rows = raw.view(-1, record)  # (N, label_bytes + 3072)
    return rows[:, label_bytes:].reshape(-1, 3, 32, 32), rows[:, label_bytes - 1].long()


def _read_pickle(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    with path.open("rb") as f:
        batch = pickle.load(f, encoding="latin1")  # local, trusted dataset files only
    labels = batch.get("labels", batch.get("fine_labels"))
    data = torch.as_tensor(batch["data"], dtype=torch.uint8)  # (N, 3072)
    return data.reshape(-1, 3, 32, 32), torch.as_tensor(labels, dtype=torch.long)


def load_cifar(
    root: str | Path,
    name: Literal["cifar10", "cifar100"] = "cifar10",
    *,
    train: bool = True,
    dtype: torch.dtype = torch.float32,
) -> TensorDataset:
    """CIFAR-10/100 from a local directory as a ``TensorDataset`` of ``(x, y)``.

    Args:
        root: directory holding one of the layouts in the module table (or that folder).
        name: ``"cifar10"`` or ``"cifar100"`` (fine labels).
        train: the training split (50,000) or the test split (10,000).
        dtype: image dtype; values in ``[0, 1]``.

    Returns:
        ``TensorDataset(x: (N, 3, 32, 32), y: (N,) long)``.

    Raises:
        FileNotFoundError: naming the paths looked for; nothing is ever downloaded.
    """
    check_choice("name", name, ("cifar10", "cifar100"))
    root = Path(root).expanduser()
    found = _find(root, name, train) if root.is_dir() else None
    if found is None:
        expected = [f"{root}/{folder}/{(tr if train else te)[0]}"
                    for (n, _), (folder, tr, te) in _LAYOUTS.items() if n == name]  # fmt: skip
        raise FileNotFoundError(
            f"no {name} {'train' if train else 'test'} split under {root!s}: expected e.g. "
            f"{' or '.join(expected)}. sorth never downloads; copy the dataset there first."
        )
    kind, paths = found
    label_bytes = 1 if name == "cifar10" else 2
    parts = [_read_binary(p, label_bytes) if kind == "bin" else _read_pickle(p) for p in paths]
    x = torch.cat([p[0] for p in parts]).to(dtype) / 255.0
    y = torch.cat([p[1] for p in parts])
    return TensorDataset(x, y)


def augment_crop_flip(
    x: torch.Tensor, padding: int = 4, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Random crop (zero padding ``padding``) and horizontal flip of a batch ``(N, C, H, W)``."""
    N, _, H, W = x.shape
    padded = F.pad(x, (padding,) * 4)  # (N, C, H + 2p, W + 2p)
    dy = torch.randint(0, 2 * padding + 1, (N,), generator=generator).tolist()
    dx = torch.randint(0, 2 * padding + 1, (N,), generator=generator).tolist()
    crops = [
        padded[i, :, a : a + H, b : b + W] for i, (a, b) in enumerate(zip(dy, dx, strict=True))
    ]
    out = torch.stack(crops)  # (N, C, H, W)
    flip = torch.rand(N, generator=generator) < 0.5
    return torch.where(flip.view(N, 1, 1, 1).to(x.device), out.flip(-1), out)


def load_digits_dataset(
    image_size: int = 32, *, test_fraction: float = 0.25, seed: int = 0
) -> tuple[TensorDataset, TensorDataset]:
    """scikit-learn's bundled ``load_digits`` (1,797 real 8×8 images, no download), upscaled.

    Images ``(N, 1, image_size, image_size)`` in ``[0, 1]`` (bilinear upscaling of the 0..16
    grey levels), labels ``(N,)``; a stratified split with ``test_fraction`` of each class in
    the test set. Needs ``scikit-learn`` (imported only here).

    Returns:
        ``(train, test)`` ``TensorDataset``\\ s.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "load_digits_dataset needs scikit-learn: pip install scikit-learn"
        ) from err
    digits = load_digits()
    x = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8)
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    y = torch.as_tensor(digits.target, dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    test_idx = []
    for c in y.unique():
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=gen)]
        test_idx.append(idx[: round(test_fraction * idx.numel())])
    is_test = torch.zeros(y.numel(), dtype=torch.bool)
    is_test[torch.cat(test_idx)] = True
    return TensorDataset(x[~is_test], y[~is_test]), TensorDataset(x[is_test], y[is_test])
