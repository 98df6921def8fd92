"""The forward of a sorth layer on its activations (:class:`ActivationForward`).

For a base weight ``W`` (``d_out × d_in``) and the active adapters ``1 … k`` in order, the
adapted layer computes ``y = W_k x + bias`` with (``W_0 = W``)::

    W_j = diag(s_j) · A_out_j · W_{j-1} · A_in_j          (A = I for a side that is off)

For Linear, Conv1D and Embedding the forward never materialises ``W_k`` or any dense ``A``: it
rotates the input activations (``A_in_k`` first, ``A_in_1`` last), runs the frozen layer without
its bias, then applies ``A_out_1, s_1, …, A_out_k, s_k`` and finally adds the bias. A layer that
acts on its weight (Conv2d: ``_fold_in_forward``, or ``conv_side="filter"``: ``sorth_on_weight``)
builds ``W_k`` with the merge's own arithmetic (``WeightMerge._apply_to_weight``), so its
merged layer gives the same numbers. Mixed-adapter batches (``adapter_names=``) route
each sample through one adapter.
"""

from __future__ import annotations

from typing import Any

import torch

from sorth.errors import SOrthValueError
from sorth.gs import GSMatrix

__all__ = ["ActivationForward"]


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


class ActivationForward:
    """The activation-side forward of :class:`sorth.tuner.layer.SOrthLayer`, which it is a base
    of (as :class:`sorth.tuner.merge.WeightMerge` is for the weight side).

    Uses the layer's adapter tables (``sorth_in``, ``sorth_out``, ``sorth_s``,
    ``sorth_on_weight``), its per-type hooks (``_linear``, ``_frozen_dtype``, ``_act_dim``,
    ``_in_rows`` / ``_from_in_rows``, ``_fold_in_forward``, ``_frozen_op_autocasts``),
    ``_present`` / ``_matrix`` and :class:`WeightMerge`'s ``_apply_to_weight``.
    """

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
