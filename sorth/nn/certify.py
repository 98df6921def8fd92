"""Certified radii and certified accuracy of Lipschitz networks.

* :func:`certified_radius`: ``(f_y − max_{j≠y} f_j) / (√2·L)`` for the predicted class ``y``.
  A prediction is certified at ``ε`` (ℓ2) when the radius exceeds ``ε`` (Li et al. 2019;
  Singla & Feizi 2021: the margin of an ``L``-Lipschitz ``f`` shrinks by at most ``√2·L·ε``).
* :func:`certified_accuracy`: fraction of points that are correct **and** certified at ``eps``.
  Without ``lipschitz=`` it uses the strict :func:`~sorth.nn.lipschitz_bound` of the model at
  the loader's input size, and refuses models that bound does not cover.

The Lipschitz bounds and estimates live in :mod:`sorth.nn.lipschitz`, the exact spectra in
:mod:`sorth.nn.spectra`; both are re-exported here for backward compatibility.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from sorth.errors import ShapeError, SOrthValueError
from sorth.nn.lipschitz import (
    layer_lipschitz_bounds,
    layer_lipschitz_estimates,
    lipschitz_bound,
    lipschitz_estimate,
)
from sorth.nn.spectra import exact_conv_singular_values, layer_singular_values

__all__ = [
    "CertifiedAccuracy",
    "certified_accuracy",
    "certified_radius",
    "exact_conv_singular_values",
    "layer_lipschitz_bounds",
    "layer_lipschitz_estimates",
    "layer_singular_values",
    "lipschitz_bound",
    "lipschitz_estimate",
]


def _check_lipschitz(lipschitz: object) -> float:
    try:
        value = float(lipschitz)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        value = float("nan")
    if not (math.isfinite(value) and value > 0):
        raise SOrthValueError(
            f"lipschitz={lipschitz!r} must be a finite number > 0 (an upper bound on the "
            "network's Lipschitz constant, e.g. sorth.nn.lipschitz_bound(model, input_shape))."
        )
    return value


def certified_radius(logits: torch.Tensor, lipschitz: float = 1.0) -> torch.Tensor:
    """ℓ2 radius certified for the predicted class: ``(N, classes) -> (N,)``.

    ``r = (top1 − top2) / (√2 · lipschitz)``: no input within ``r`` changes the prediction,
    provided ``lipschitz`` is an upper bound on the network's Lipschitz constant.
    """
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise ShapeError(f"logits must be (N, classes >= 2), got {tuple(logits.shape)}.")
    top2 = logits.topk(2, dim=1).values  # (N, 2)
    return (top2[:, 0] - top2[:, 1]) / (math.sqrt(2.0) * _check_lipschitz(lipschitz))


@dataclass(frozen=True)
class CertifiedAccuracy:
    """Result of :func:`certified_accuracy` (accuracies are fractions in [0, 1]).

    ``lipschitz`` is the constant the radii were divided by (the strict bound by default).
    """

    clean: float
    certified: dict[float, float] = field(default_factory=dict)
    mean_radius: float = 0.0  # over correctly classified points
    num_samples: int = 0
    lipschitz: float = 1.0

    def at(self, eps: float) -> float:
        """Certified accuracy at ``eps`` (one of the values that were evaluated)."""
        return self.certified[float(eps)]


def _default_lipschitz(model: nn.Module, input_shape: Sequence[int]) -> float:
    try:
        return lipschitz_bound(model, input_shape)
    except TypeError as err:
        raise TypeError(
            f"certified_accuracy(lipschitz=None) certifies with a strict upper bound on the "
            f"model's Lipschitz constant, and cannot compute one for this model: {err} (Only "
            f"pass lipschitz= explicitly if that value is proven; an estimate over-certifies.)"
        ) from err


@torch.no_grad()
def certified_accuracy(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    eps: float | Sequence[float] = 36 / 255,
    *,
    lipschitz: float | None = None,
    device: torch.device | str | None = None,
) -> CertifiedAccuracy:
    """Clean and certified accuracy of ``model`` over ``loader`` (run in eval mode).

    Args:
        model: maps ``(N, ...)`` inputs to ``(N, classes)`` logits.
        loader: yields ``(x, y)`` batches (e.g. a ``DataLoader``).
        eps: one radius or several; a point counts when it is correct and its
            :func:`certified_radius` is ``> eps``.
        lipschitz: an upper bound on the network's Lipschitz constant. ``None`` (default)
            computes :func:`~sorth.nn.lipschitz_bound` at the first batch's input shape (a
            strict bound, ``TypeError`` for layers it does not cover: build the model from
            ``sorth.nn`` layers, ``nn.Linear``/``nn.Conv2d``, ReLU, or pass a proven bound).
        device: where to run (default: the model's parameters' device).

    Returns:
        :class:`CertifiedAccuracy` with ``clean``, ``certified[eps]``, ``mean_radius`` and the
        ``lipschitz`` constant used.
    """
    eps_list = [float(eps)] if isinstance(eps, (int, float)) else [float(e) for e in eps]
    L = None if lipschitz is None else _check_lipschitz(lipschitz)
    batches = iter(loader)
    first = next(batches, None)
    if first is None:
        raise ShapeError("certified_accuracy got an empty loader.")
    if L is None:
        L = _default_lipschitz(model, tuple(first[0].shape[1:]))
    if device is None:
        device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    n = correct = 0
    radius_sum = 0.0
    cert = dict.fromkeys(eps_list, 0)
    try:
        for x, y in itertools.chain([first], batches):
            x, y = x.to(device), y.to(device)
            logits = model(x)
            ok = logits.argmax(1) == y
            low = logits.dtype in (torch.float16, torch.bfloat16)
            r = certified_radius(logits.float() if low else logits, L)
            n += y.numel()
            correct += int(ok.sum())
            radius_sum += float(r[ok].sum())
            for e in eps_list:
                cert[e] += int((ok & (r > e)).sum())
    finally:
        model.train(was_training)
    return CertifiedAccuracy(
        clean=correct / n,
        certified={e: c / n for e, c in cert.items()},
        mean_radius=radius_sum / max(correct, 1),
        num_samples=n,
        lipschitz=L,
    )
