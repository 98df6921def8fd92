"""sorth tuner layers: one shared base (:class:`SOrthLayer`) does all the math.

For a base weight ``W`` (``d_out × d_in``) and the active adapters ``1 … k`` in order, the
adapted weight is built adapter by adapter (``W_0 = W``)::

    W_j = diag(s_j) · A_out_j · W_{j-1} · A_in_j          (A = I for a side that is off)

For Linear, Conv1D and Embedding the forward never materialises ``W_k`` or any dense ``A``: it
rotates the input activations (``A_in_k`` first, ``A_in_1`` last), runs the frozen layer without
its bias, then applies ``A_out_1, s_1, …, A_out_k, s_k`` and finally adds the bias. Merging
applies the same recursion to the weight (so several active adapters merge in the order they
are applied) and unmerging inverts it with ``Aᵀ`` (the factors are orthogonal; never
``linalg.inv``) and ``1 / s``, or restores the original weight (Note [exact unmerge]).

Weight layouts: a layer names the weight dims holding the in- and out-features
(``_w_in_dim``, ``_w_out_dim``) and the activation dim of its features (``_act_dim``). "Rows"
below are the weight with the rotated dim moved last, so that ``W · A`` is ``rows @ A``.

Conv2d with ``conv_side="filter"`` rotates the flattened ``C/groups·kh·kw`` filter; that
rotation cannot act on activations (patches overlap). A Conv2d therefore builds ``W_k`` inside
the forward with the GS factors (``O(d_out·d·b)``, no dense ``d × d``) by the merge's own
arithmetic — for ``conv_side="channels"`` (input channels, ``groups=1``) too — so its merged
layer gives the same numbers as the adapter. This is exact for any kernel, stride, padding,
dilation, padding_mode and groups.

This module holds the set-up (config → rotations) and the forward; the weight-side arithmetic
(``W_k``, merge, unmerge) is :class:`sorth.tuner.merge.WeightMerge`, a base of
:class:`SOrthLayer`.
"""

from __future__ import annotations

from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from sorth.errors import BlockSizeError, SOrthValueError, divisors
from sorth.gs import GSMatrix
from sorth.parametrizations import GSOrthogonal
from sorth.tuner.merge import NAN_MESSAGE as NAN_MESSAGE  # re-exported: was defined here
from sorth.tuner.merge import WeightMerge
from sorth.tuner.sizes import default_block_size

__all__ = ["SOrthLayer"]


def _rotation(n: int, config: Any, device: torch.device | str | None = None) -> GSOrthogonal:
    """The :class:`GSOrthogonal` of one side (size ``n``) of a layer for ``config``.

    With neither ``block_size`` nor ``nblocks`` given, the block size is
    :func:`~sorth.tuner.sizes.default_block_size` of ``n`` (smallest divisor ``≥ √n``). A rotation
    whose blocks are all ``1 × 1`` (``b = 1``: each block is the constant 1) has no trainable
    parameter and is refused, as is any block size that does not divide ``n``.
    """
    block_size, nblocks = config.block_size, config.nblocks
    if block_size is None and nblocks is None:
        block_size = default_block_size(n)
    rotation = GSOrthogonal(
        n,
        nblocks=nblocks,
        block_size=block_size,
        method=config.method,
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


class _ScaleShift(torch.autograd.Function):
    """``y = h ⊙ s + b`` (``s``, ``b`` broadcast along the feature dim; ``b`` may be ``None``)
    in one pass; backward ``∂h = g ⊙ s``, ``∂s = Σ g ⊙ h``, ``∂b = Σ g`` over the broadcast
    dims. Autograd's ``mul`` + ``add`` take two passes forward; its ``addcmul`` backward takes
    an extra pass to multiply by ``value``."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, s: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(h if ctx.needs_input_grad[1] else None, s)
        ctx.has_bias = b is not None
        return h * s if b is None else torch.addcmul(b, h, s)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        h, s = ctx.saved_tensors
        dims = [i for i in range(g.dim()) if s.shape[i] == 1]

        def reduce(t: torch.Tensor) -> torch.Tensor:
            return t.sum(dims, keepdim=True) if dims else t

        gh = g * s if ctx.needs_input_grad[0] else None
        gs = reduce(g * h) if ctx.needs_input_grad[1] else None
        gb = reduce(g) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gh, gs, gb


class SOrthLayer(WeightMerge, BaseTunerLayer):
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
        # (base weight before the first merge, adapter names of each merge call since)
        self._merge_snapshot: tuple[torch.Tensor, list[list[str]]] | None = None
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
        weight's; a quantized layer's compute dtype, :mod:`sorth.tuner.quantized`)."""
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

    def _along_act(self, v: torch.Tensor, ndim: int) -> torch.Tensor:
        """Reshape a per-feature vector to broadcast along the activation feature dim."""
        shape = [1] * ndim
        shape[self._act_dim] = -1
        return v.view(shape)

    def _rotate_act(self, h: torch.Tensor, A: GSMatrix, layer_input: bool) -> torch.Tensor:
        """``A h`` along the activation feature dim. Under autocast ``h`` goes as it is: the
        dispatch (:func:`sorth.kernels.gs_apply_planned`) casts it and the factors to the
        autocast dtype once, so a bf16 activation is not widened to the adapter's float32 only
        to be cast back; otherwise ``h`` is cast to the adapter's dtype (for the layer's input,
        PEFT's ``cast_input_dtype`` switch applies)."""
        if not (h.is_floating_point() and torch.is_autocast_enabled(h.device.type)):
            h = self._cast_input_dtype(h, A.dtype) if layer_input else h.to(A.dtype)
        return A.apply(h.movedim(self._act_dim, -1)).movedim(-1, self._act_dim)

    def _adapter_dtype(self, name: str) -> torch.dtype:
        for table in (self.sorth_in, self.sorth_out, self.sorth_s):
            if name in table:
                item = table[name]
                return item.dtype if isinstance(item, torch.Tensor) else item.params[0].dtype
        return torch.float32

    # ---------------------------------------------------------------------- forward
    def _sorth_forward(self, x: torch.Tensor, adapters: list[str]) -> torch.Tensor:
        """``s_k ⊙ A_out_k ⋯ s_1 ⊙ A_out_1 · W · A_in_1 ⋯ A_in_k · x + bias``.

        The bias goes into the frozen op when nothing follows it (no output rotation, no
        scale), and into the last scale otherwise (:class:`_ScaleShift`): one pass over the
        output less than a separate add.
        """
        base = self.get_base_layer()
        previous_dtype = x.dtype if x.is_floating_point() else base.weight.dtype  # (Embedding)
        W = base.weight  # not .data: a base weight made trainable still gets its gradient
        # Adapters applied to the weight (Conv2d) come first: they are folded into W whole
        # (A_in, A_out and s) by the merge's own arithmetic, so merged == unmerged.
        folded = 0
        while folded < len(adapters) and (
            self._fold_in_forward or self.sorth_on_weight[adapters[folded]]
        ):
            W = self._apply_to_weight(W, adapters[folded], inverse=False, dropout=True)
            folded += 1
        adapters = adapters[folded:]
        if folded and not adapters:
            bias = getattr(base, "bias", None)
            W = W.to(base.weight.dtype)
            b = None if bias is None else bias.to(W.dtype)
            x = x.to(W.dtype) if x.is_floating_point() else x
            return self._linear(x, W, b).to(previous_dtype)
        for name in reversed(adapters):  # innermost input rotation first
            A = self._matrix(self.sorth_in, name, self._adapter_dtype(name))
            if A is None:
                continue
            if self.sorth_on_weight[name]:
                W = self._from_in_rows(self._in_rows(W, True).to(A.dtype) @ A, W, True)
            else:
                x = self._rotate_act(x, A, layer_input=True)
        op_dtype = self._frozen_dtype(previous_dtype)
        if W is not base.weight:  # rotated on the weight (Conv2d filter side)
            W = W.to(op_dtype)
        bias = getattr(base, "bias", None)
        after = [n for n in adapters if n in self.sorth_out or n in self.sorth_s]
        if x.is_floating_point() and not (
            self._frozen_op_autocasts and torch.is_autocast_enabled(x.device.type)
        ):  # (under autocast the frozen op casts x itself: no widening and casting back)
            x = x.to(op_dtype)
        if not after:  # nothing after the frozen op: its own fused bias
            b = None if bias is None else bias.to(op_dtype)
            return self._linear(x, W, b).to(previous_dtype)
        h = self._linear(x, W, None)
        for name in after:
            dtype = self._adapter_dtype(name)
            A = self._matrix(self.sorth_out, name, dtype)
            if A is not None:
                h = self._rotate_act(h, A, layer_input=False)
            if name in self.sorth_s:
                s = self._along_act(self.sorth_s[name].to(h.dtype), h.dim())
                last = bias is not None and name == after[-1]
                b = self._along_act(bias.to(h.dtype), h.dim()) if last else None
                h, bias = _ScaleShift.apply(h, s, b), None if last else bias
        if bias is not None:
            h = h + self._along_act(bias.to(h.dtype), h.dim())
        return h.to(previous_dtype)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        adapter_names = kwargs.pop("adapter_names", None)
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        if adapter_names is not None:
            return self._mixed_batch_forward(x, *args, adapter_names=adapter_names, **kwargs)
        adapters = self._present(self.active_adapters)
        if self.merged or not adapters:
            return self.base_layer(x, *args, **kwargs)
        return self._sorth_forward(x, adapters)

    def _mixed_batch_forward(
        self, x: torch.Tensor, *args: Any, adapter_names: list[str], **kwargs: Any
    ) -> torch.Tensor:
        """Sample ``i`` of the batch goes through adapter ``adapter_names[i]`` alone
        (``"__base__"`` or an adapter absent from this layer: the base layer)."""
        if self.merged:
            raise SOrthValueError(
                "adapter_names= (mixed-adapter batches) needs unmerged adapters; call "
                "model.unmerge_adapter() first."
            )
        if len(adapter_names) != x.shape[0]:
            raise SOrthValueError(
                f"adapter_names has {len(adapter_names)} entries for a batch of {x.shape[0]}."
            )
        out = None
        for name in dict.fromkeys(adapter_names):
            idx = [i for i, a in enumerate(adapter_names) if a == name]
            sub = x[idx]
            adapters = self._present([name])
            y = self._sorth_forward(sub, adapters) if adapters else self.base_layer(sub, *args)
            if out is None:
                out = y.new_empty((x.shape[0], *y.shape[1:]))
            out[idx] = y.to(out.dtype)
        return out

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"
