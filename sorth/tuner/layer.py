"""sorth tuner layers: the shared base :class:`SOrthLayer`, the per-type layers and
:func:`dispatch_default`.

One adapter on a base weight ``W`` (``d_out × d_in``) is ``W' = diag(s) · A_out · W · A_in``
(``A = I`` for a side that is off; several active adapters apply in order). The base holds the
set-up (config → rotations); its forward on the activations is
:class:`sorth.tuner.forward.ActivationForward` and the weight-side arithmetic (``W_k``, merge,
unmerge; Note [exact unmerge]) :class:`sorth.tuner.merge.WeightMerge`, both bases of
:class:`SOrthLayer`. Each per-type layer only names its weight layout and its frozen op:

===============  ========================  ==================  ============================
layer            weight                    activations         notes
===============  ========================  ==================  ============================
``Linear``       ``(out, in)``             ``(..., in)``
``Conv1D`` (HF)  ``(in, out)``             ``(..., in)``       GPT-2, ``fan_in_fan_out``
``Conv2d``       ``(out, in/g, kh, kw)``   ``([N,] C, H, W)``  ``conv_side``
``Embedding``    ``(num, dim)``            token indices       ``side="output"`` only
===============  ========================  ==================  ============================

Weight layouts: a layer names the weight dims holding the in- and out-features
(``_w_in_dim``, ``_w_out_dim``) and the activation dim of its features (``_act_dim``). "Rows"
are the weight with the rotated dim moved last, so that ``W · A`` is ``rows @ A``.

Conv2d with ``conv_side="filter"`` rotates the flattened ``C/groups·kh·kw`` filter; that
rotation cannot act on activations (patches overlap). A Conv2d therefore builds ``W_k`` inside
the forward with the GS factors (``O(d_out·d·b)``, no dense ``d × d``) by the merge's own
arithmetic — for ``conv_side="channels"`` (input channels, ``groups=1``) too — so its merged
layer gives the same numbers as the adapter. This is exact for any kernel, stride, padding,
dilation, padding_mode and groups.

Layering (as PEFT's ``oft/layer.py``): ``config → layer → bnb → model``; this module gets the
config as an argument and imports neither it nor anything above it. :mod:`sorth.tuner.bnb`
imports it (never the reverse) and :mod:`sorth.tuner.model` owns the order of the dispatchers.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from transformers.pytorch_utils import Conv1D as HFConv1D

from sorth.errors import BlockSizeError, SOrthValueError, divisors
from sorth.gs import GSMatrix
from sorth.parametrizations import GSOrthogonal
from sorth.sizing import default_block_size
from sorth.tuner.forward import ActivationForward
from sorth.tuner.merge import WeightMerge
from sorth.tuner.sharding import global_shape

__all__ = ["Conv1D", "Conv2d", "Embedding", "Linear", "SOrthLayer", "dispatch_default"]


def _rotation(n: int, config: Any, device: torch.device | str | None = None) -> GSOrthogonal:
    """The :class:`GSOrthogonal` of one side (size ``n``) of a layer for ``config``.

    With neither ``block_size`` nor ``nblocks`` given, the block size is
    :func:`~sorth.sizing.default_block_size` of ``n`` (smallest divisor ``≥ √n``). A rotation
    whose blocks are all ``1 × 1`` (``b = 1``: each block is the constant 1) has no trainable
    parameter and is refused, as is any block size that does not divide ``n``.
    """
    block_size, nblocks = config.block_size, config.nblocks
    if block_size is None and nblocks is None:
        block_size = default_block_size(n)
        if not getattr(config, "inference_mode", False):
            _check_default_budget(n, block_size)
    rotation = GSOrthogonal(
        n,
        nblocks=nblocks,
        block_size=block_size,
        orthogonal_map=config.orthogonal_map,
        structure=config.structure,
        n_factors=config.n_factors,
        neumann_terms=config.neumann_terms,
        storage=config.storage,
        block_dropout=config.module_dropout,
        device=device,
    )
    if all(bb == 1 for _, bb in rotation._shapes):
        hint = (
            "this side has a single feature, so there is nothing to rotate: use the other side "
            "or leave the module out of target_modules"
            if n == 1
            else f"use a block size > 1 that divides {n} ({[d for d in divisors(n) if d > 1]})"
        )
        raise BlockSizeError(
            f"block_size=1 on a side of size n={n}: every orthogonal block is 1 × 1, i.e. the "
            f"constant 1, so this rotation has no trainable parameter; {hint}."
        )
    return rotation


# Note [default size budget]: the default rule aims at b ≈ √n (``(b − 1) · n`` parameters per
# factor pair). A size with no divisor near √n (a prime such as 1031, or 2 · 1031) gets one or two
# dense blocks instead: 33× the parameters of n = 1024 and a much slower step. Such a default is
# refused (when the adapter is created; a saved adapter still loads for inference) once its
# blocks are over SLACK times the √n block and n is at least MIN_N (below that a dense block is
# cheap); an explicit block_size / nblocks is always kept.
_DEFAULT_BUDGET_SLACK = 4
_DEFAULT_BUDGET_MIN_N = 256


def _check_default_budget(n: int, block_size: int) -> None:
    """Refuse the default ``block_size`` of a side of size ``n`` far above ``√n``
    (Note [default size budget])."""
    root = math.isqrt(n - 1) + 1  # ⌈√n⌉
    if n < _DEFAULT_BUDGET_MIN_N or block_size - 1 <= _DEFAULT_BUDGET_SLACK * (root - 1):
        return
    raise BlockSizeError(
        f"the default block size of a side of size n={n} is b={block_size} ({n} has no divisor "
        f"near √n ≈ {root}: blocks of {block_size} × {block_size}, about "
        f"{(block_size - 1) // (root - 1)}× the parameters of the rule's √n blocks); leave this "
        "module out (exclude_modules), adapt only its other side (side='input' / 'output'), "
        f"or pass block_size / nblocks explicitly (block_size={block_size} keeps the dense block)."
    )


class SOrthLayer(ActivationForward, WeightMerge, BaseTunerLayer):
    """Shared base of the sorth layers (PEFT ``BaseTunerLayer`` contract).

    Per adapter name: ``sorth_in[name]`` / ``sorth_out[name]`` (:class:`sorth.GSOrthogonal` on
    the in- / out-features, present according to ``side``), ``sorth_s[name]`` (``(d_out,)``
    scale, if ``scale``) and ``sorth_on_weight[name]`` (input rotation applied to the weight).
    """

    adapter_layer_names: tuple[str, ...] = ("sorth_in", "sorth_out", "sorth_s")
    other_param_names: tuple[str, ...] = ("sorth_on_weight",)
    _w_in_dim: int = 1
    _w_out_dim: int = 0
    _act_dim: int = -1
    # apply every adapter to the weight inside the forward (the merge's own arithmetic, so the
    # merged layer gives the same numbers); Conv2d, whose weight is small next to its activations
    _fold_in_forward: bool = False
    # the frozen op is an autocast op (linear, addmm, conv2d): under autocast it gets x as is
    _frozen_op_autocasts: bool = True

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        self.base_layer = base_layer
        self.sorth_in = nn.ModuleDict()
        self.sorth_out = nn.ModuleDict()
        self.sorth_s = nn.ParameterDict()
        self.sorth_on_weight: dict[str, bool] = {}
        self._disable_adapters = False
        self.merged_adapters = []
        # with exact_unmerge: (base weight before the first merge, adapter names of each merge
        # call since); Note [exact unmerge]
        self.exact_unmerge: bool | None = None
        self._merge_snapshot: tuple[torch.Tensor, list[list[str]]] | None = None
        # the base weight is tied to another module's (set by the tuner; Note [tied weights])
        self.shares_weight = False
        self._shared_weight: nn.Parameter | None = None  # the tied parameter, while merged
        self.in_features, self.out_features = self._feature_sizes(base_layer)

    # ----------------------------------------------------------------- per-type hooks
    @staticmethod
    def _feature_sizes(base: nn.Module) -> tuple[int, int]:
        return base.in_features, base.out_features

    def _input_rotation_size(self, config: Any) -> tuple[int, bool]:
        """``(d, on_weight)``: size of the input rotation and whether it acts on the weight."""
        return self.in_features, False

    def _linear(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        """The frozen op with ``weight`` in the base layout and ``bias`` (or none), both in
        ``x``'s dtype."""
        raise NotImplementedError

    def _frozen_dtype(self, x_dtype: torch.dtype) -> torch.dtype:
        """The dtype the frozen op runs in, for a layer input of ``x_dtype`` (the base
        weight's; a quantized layer's compute dtype, :mod:`sorth.tuner.bnb`)."""
        return self.get_base_layer().weight.dtype

    def _in_rows(self, W: torch.Tensor, on_weight: bool) -> torch.Tensor:
        return W.movedim(self._w_in_dim, -1)

    def _from_in_rows(self, T: torch.Tensor, like: torch.Tensor, on_weight: bool) -> torch.Tensor:
        return T.movedim(-1, self._w_in_dim)

    def _check_layer(self, config: Any) -> None:
        """Raise for layer/config combinations whose math does not hold (default: none)."""

    # ------------------------------------------------------------------------ set-up
    def update_layer(
        self, adapter_name: str, config: Any, inference_mode: bool = False, **_
    ) -> None:
        """Create adapter ``adapter_name`` from a :class:`SOrthConfig` (checked first)."""
        rot_in, rot_out, on_weight = self.build_rotations(config)
        if rot_in is not None:
            self.sorth_in[adapter_name] = rot_in
        if rot_out is not None:
            self.sorth_out[adapter_name] = rot_out
        if config.scale:
            self.sorth_s[adapter_name] = nn.Parameter(torch.ones(self.out_features))
        self.sorth_on_weight[adapter_name] = on_weight
        if config.exact_unmerge is not None and self.exact_unmerge is not True:
            self.exact_unmerge = config.exact_unmerge  # an explicit True wins over False
        if not config.init_weights:
            self._random_init(adapter_name, config.init_std)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)

    def build_rotations(
        self, config: Any, device: torch.device | str | None = None
    ) -> tuple[GSOrthogonal | None, GSOrthogonal | None, bool]:
        """``(A_in, A_out, on_weight)`` for ``config``; raises a :class:`SOrthValueError`."""
        self._check_layer(config)
        d_in, on_weight = self._input_rotation_size(config)
        rot_in = _rotation(d_in, config, device) if config.side in ("input", "both") else None
        rot_out = (
            _rotation(self.out_features, config, device)
            if config.side in ("output", "both")
            else None
        )
        return rot_in, rot_out, on_weight

    @torch.no_grad()
    def _random_init(self, adapter_name: str, std: float) -> None:
        for rotations in (self.sorth_in, self.sorth_out):
            if adapter_name in rotations:
                rotations[adapter_name].reset_parameters("random", std=std)
        if adapter_name in self.sorth_s:
            s = self.sorth_s[adapter_name]
            s.add_(torch.randn_like(s) * std)

    # ---------------------------------------------------------------------- helpers
    def _present(self, adapters: list[str]) -> list[str]:
        return [a for a in adapters if a in self.sorth_on_weight]

    def _matrix(
        self, table: nn.ModuleDict, name: str, dtype: torch.dtype, dropout: bool = True
    ) -> GSMatrix | None:
        """The adapter's GS matrix; ``dropout=False`` (merging) never drops blocks, even in
        training mode, so merge and unmerge use the same matrix."""
        if name not in table:
            return None
        rotation = table[name]
        training = rotation.training
        rotation.train(training and dropout)
        try:
            return rotation.matrix(dtype=dtype)
        finally:
            rotation.train(training)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


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


def dispatch_default(base: nn.Module) -> type[SOrthLayer] | None:
    """The sorth layer class for a plain (not quantized) base module, or ``None``.

    Checked last by :func:`sorth.tuner.model.dispatch_layer_class`: quantized layers (many
    subclass ``nn.Linear``) are dispatched or refused before this sees them.
    """
    if isinstance(base, HFConv1D):
        return Conv1D
    if isinstance(base, nn.Linear):
        return Linear
    if isinstance(base, nn.Conv2d):
        return Conv2d
    if isinstance(base, nn.Embedding):
        return Embedding
    return None
