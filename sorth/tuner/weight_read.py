"""sorth on Linear layers whose parent reads their weight instead of calling them
(:class:`WeightReadLinear`, :class:`MultiheadOutProj`).

Note [weight read by the parent]: ``nn.MultiheadAttention`` never calls its ``out_proj``: its
forward (and its fused inference path) reads ``out_proj.weight`` and ``out_proj.bias`` and does
the matmul itself; ``nn.TransformerEncoderLayer``'s fused inference path (eval mode, no grad)
reads ``linear1.weight`` / ``linear2.weight`` the same way. An adapter that acts only in the
forward would have no effect there and get no gradient (PEFT's LoRA has the same limit when
``out_proj`` is targeted alone, which ``"all-linear"`` does), and the merged model would differ
from the unmerged one. So on these layers the *weight* carries the adapters: ``.weight`` is the
adapted weight ``W_k`` (``W_j = diag(s_j)·A_out_j·W_{j-1}·A_in_j`` over the active adapters, the
merge's own arithmetic, differentiable), built each time it is read — a merge on every forward,
as PEFT's MHA layer does, without mutating the base weight. With adapters disabled or merged it
is the base weight. Calling the layer gives the same numbers through the activation path.

Mixed-adapter batches (``adapter_names=``) cannot route samples through a weight: they are
refused on a :class:`MultiheadOutProj` by :class:`sorth.tuner.model.SOrthModel` (an encoder
layer's ``linear1`` / ``linear2`` are called, since the routing hooks turn the fused path off).
"""

from __future__ import annotations

import torch
from torch import nn

from sorth.tuner.layer import Linear

__all__ = ["MultiheadOutProj", "WeightReadLinear", "weight_read_class"]


class WeightReadLinear(Linear):
    """sorth on an ``nn.Linear`` whose parent may read ``.weight`` instead of calling it (see
    Note [weight read by the parent]); ``.weight`` is the adapted ``(out, in)`` weight."""

    @property
    def weight(self) -> torch.Tensor:
        """``W_k`` of the active adapters ``(out, in)`` in the base weight's dtype, or the base
        weight (adapters disabled, merged, or none active here)."""
        base = self.get_base_layer()
        if self.disable_adapters and self.merged:
            self.unmerge()  # as the forward of every sorth layer does
        adapters = self._present(self.active_adapters)
        if self.disable_adapters or self.merged or not adapters:
            return base.weight
        W = base.weight
        for name in adapters:
            W = self._apply_to_weight(W, name, inverse=False, dropout=True)
        return W.to(base.weight.dtype)

    @property
    def bias(self) -> torch.Tensor | None:
        """The base layer's bias (``(out,)`` or ``None``)."""
        return self.get_base_layer().bias


class MultiheadOutProj(WeightReadLinear):
    """sorth on ``nn.MultiheadAttention.out_proj``: only ever read, never called."""


def weight_read_class(parent: nn.Module, child_name: str) -> type[WeightReadLinear] | None:
    """The layer class for a Linear ``parent.<child_name>`` whose weight the parent reads."""
    if isinstance(parent, nn.MultiheadAttention) and child_name == "out_proj":
        return MultiheadOutProj
    if isinstance(parent, nn.TransformerEncoderLayer) and child_name in ("linear1", "linear2"):
        return WeightReadLinear
    return None
