"""The concrete sorth layers: each only names its weight layout and its frozen op; all the
math (forward, merge, unmerge, mixed batches) is in :class:`sorth.tuner.layer.SOrthLayer`.

===============  ========================  ==================  ============================
layer            weight                    activations         notes
===============  ========================  ==================  ============================
``Linear``       ``(out, in)``             ``(..., in)``
``Conv1D`` (HF)  ``(in, out)``             ``(..., in)``       GPT-2, ``fan_in_fan_out``
``Conv2d``       ``(out, in/g, kh, kw)``   ``([N,] C, H, W)``  ``conv_side``
``Embedding``    ``(num, dim)``            token indices       ``side="output"`` only
===============  ========================  ==================  ============================
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D as HFConv1D

from sorth.errors import SOrthValueError
from sorth.tuner.layer import SOrthLayer
from sorth.tuner.sharding import global_shape

__all__ = ["Conv1D", "Conv2d", "Embedding", "Linear", "dispatch_layer_class"]


class Linear(nn.Module, SOrthLayer):
    """sorth on ``torch.nn.Linear``: weight ``(out, in)``, features on the last dim."""

    forward = SOrthLayer.forward  # nn.Module's placeholders come first in the MRO
    extra_repr = SOrthLayer.extra_repr

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: Any, **kwargs: Any):
        super().__init__()
        SOrthLayer.__init__(self, base_layer, **kwargs)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config)

    def _linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        return F.linear(x, weight, bias)


class Conv1D(Linear):
    """sorth on transformers' ``Conv1D`` (GPT-2): weight ``(in, out)`` (``fan_in_fan_out``)."""

    _w_in_dim, _w_out_dim = 0, 1

    @staticmethod
    def _feature_sizes(base: nn.Module) -> tuple[int, int]:
        shape = global_shape(base.weight)  # (a ZeRO-3 partition is empty: its ds_shape)
        return shape[0], shape[1]

    def _linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        if bias is None:
            return x @ weight
        out = torch.addmm(bias, x.reshape(-1, x.shape[-1]), weight)
        return out.view(*x.shape[:-1], weight.shape[-1])


class Conv2d(Linear):
    """sorth on ``torch.nn.Conv2d``; weight ``(out, in/groups, kh, kw)``; activations
    ``(N, C, H, W)`` or unbatched ``(C, H, W)``, so the channels are dim ``-3``."""

    _act_dim = -3
    _fold_in_forward = True  # merged == unmerged for any kernel/stride/groups (see SOrthLayer)

    @staticmethod
    def _feature_sizes(base: nn.Module) -> tuple[int, int]:
        return base.in_channels, base.out_channels

    def _check_layer(self, config: Any) -> None:
        groups = self.get_base_layer().groups
        if groups == 1:
            return
        if config.conv_side == "channels" and config.side in ("input", "both"):
            raise SOrthValueError(
                f"conv_side='channels' needs groups=1 (got groups={groups}): rotating input "
                "channels would mix groups; use conv_side='filter'."
            )
        if config.side in ("output", "both"):
            raise SOrthValueError(
                f"side={config.side!r} rotates output channels, which mixes the groups of a "
                f"grouped conv (groups={groups}); use side='input'."
            )

    def _input_rotation_size(self, config: Any) -> tuple[int, bool]:
        if config.conv_side == "filter":  # C/groups·kh·kw (from the shape: W may be a shard)
            return math.prod(global_shape(self.get_base_layer().weight)[1:]), True
        return self.in_features, False

    def _in_rows(self, W: torch.Tensor, on_weight: bool) -> torch.Tensor:
        return W.flatten(1) if on_weight else W.movedim(1, -1)

    def _from_in_rows(self, T: torch.Tensor, like: torch.Tensor, on_weight: bool) -> torch.Tensor:
        return T.view(like.shape) if on_weight else T.movedim(-1, 1)

    def _linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        return self.get_base_layer()._conv_forward(x, weight, bias)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_features}, out_channels={self.out_features}"


class Embedding(Linear):
    """sorth on ``torch.nn.Embedding`` (weight ``(num_embeddings, dim)``), ``side="output"``
    only: the embedding vectors are the layer's outputs, ``y = s ⊙ A_out · E[idx]``."""

    _w_in_dim, _w_out_dim = 0, 1

    @staticmethod
    def _feature_sizes(base: nn.Module) -> tuple[int, int]:
        return base.num_embeddings, base.embedding_dim

    def _check_layer(self, config: Any) -> None:
        if config.side != "output":
            raise SOrthValueError(
                f"side={config.side!r} on nn.Embedding: its input is a token index, there are no "
                "input features to rotate; use side='output' (rotates the embedding vectors)."
            )
        max_norm = self.get_base_layer().max_norm
        if max_norm is not None and config.scale:
            # Note [max_norm]: F.embedding renormalises the rows it looks up to norm <= max_norm
            # (in place). A rotation keeps row norms, so renormalising commutes with it and the
            # merged layer is exact; the per-feature scale s changes the norms, so it does not.
            raise SOrthValueError(
                f"nn.Embedding(max_norm={max_norm}) with scale=True: the embedding renormalises "
                "each looked-up row to norm <= max_norm, and the scale s changes row norms, so "
                "the merged layer would differ from the adapter; use scale=False (the rotation "
                "alone keeps the norms and merges exactly) or an Embedding without max_norm."
            )

    def _linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        e = self.get_base_layer()  # nn.Embedding has no bias
        return F.embedding(
            x, weight, e.padding_idx, e.max_norm, e.norm_type, e.scale_grad_by_freq, e.sparse
        )

    def extra_repr(self) -> str:
        return f"num_embeddings={self.in_features}, embedding_dim={self.out_features}"


def dispatch_layer_class(base: nn.Module) -> type[SOrthLayer] | None:
    """The sorth layer class for a base module, or ``None`` if unsupported (quantized layers
    first: many subclass ``nn.Linear``, see :mod:`sorth.tuner.quantized`)."""
    from sorth.tuner.quantized import quantized_layer_class

    is_quantized, layer_cls = quantized_layer_class(base)
    if is_quantized:
        return layer_cls
    if isinstance(base, HFConv1D):
        return Conv1D
    if isinstance(base, nn.Linear):
        return Linear
    if isinstance(base, nn.Conv2d):
        return Conv2d
    if isinstance(base, nn.Embedding):
        return Embedding
    return None
