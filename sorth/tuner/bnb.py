"""sorth on quantized base layers (QGSOFT): bitsandbytes ``Linear4bit`` and ``Linear8bitLt``.

The quantized weight ``W_q`` (``d_out × d_in``, packed 4-bit NF4/FP4 or int8 with per-row
scales) stays frozen and is only ever used through bitsandbytes' own kernels; the rotations act
on the activations (``x``: ``(..., d_in)``)::

    side="input"   y = s ⊙ W_q(A_in · x) + b
    side="output"  y = s ⊙ A_out · (W_q x) + b
    side="both"    y = s ⊙ A_out · W_q(A_in · x) + b

so sorth never dequantizes ``W_q`` in the forward (whatever the bitsandbytes kernel does inside
is its own business: on CPU its training path dequantizes block by block), and the gradient
reaches ``A_in`` through the kernel's ``∂x``. Only the adapter parameters train.

**Merging** (``merge`` / ``merge_and_unload``) dequantizes ``W_q`` once to its float dtype,
folds every adapter being merged in one pass, ``W' = diag(s)·A_out·W·A_in`` in float32, and
re-quantizes ``W'`` with the base layer's own settings (4-bit: block size, NF4/FP4, nested
statistics, storage dtype; 8-bit: row-wise absmax), as PEFT does for LoRA. The result is a
plain quantized layer; the only error is that one re-quantization. While merged, the layer
keeps a reference to the pre-merge quantized weight (no copy: it is the old parameter object),
so ``unmerge`` (and ``disable_adapter`` on a merged model) restores it bit for bit instead of
re-quantizing ``W'·A⁻¹``.

:func:`dispatch_bnb_4bit` / :func:`dispatch_bnb_8bit` pick these layers for a bitsandbytes base
(:mod:`sorth.tuner.model` tries them before the default layers, which bitsandbytes' layers
subclass); any other quantized layer is refused there (:mod:`sorth.tuner.quantization`).

bitsandbytes is optional (the ``quant`` extra): it is imported only when a
bitsandbytes layer is met, and such a layer can only exist if bitsandbytes is installed.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from peft.tuners.tuners_utils import check_adapters_to_merge
from torch import nn

from sorth.tuner.layer import Linear
from sorth.tuner.merge import NAN_MESSAGE
from sorth.tuner.quantization import bnb_kind
from sorth.tuner.sharding import check_unsharded

__all__ = [
    "Linear4bit",
    "Linear8bitLt",
    "dispatch_bnb_4bit",
    "dispatch_bnb_8bit",
    "keep_4bit_layout",
]


def _is_packed(state: Any) -> bool:
    return bool(getattr(state, "packing_format_for_cpu", False))


def _unpacked(data: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
    """``(data, state)`` of a 4-bit weight in bitsandbytes' CPU inference layout, back in the
    standard layout, exactly: the absmax the packed kernel uses (bfloat16 values, stored
    ``(d_in / blocksize, d_out)``) goes back to the flat ``(d_out · d_in / blocksize,)`` float32
    layout and is never re-compressed. bitsandbytes 0.50's own inverse re-quantizes nested
    statistics and leaves non-nested ones transposed (dequantizing that scrambles the
    weight). ``state`` itself is not modified (a shallow copy is)."""
    import bitsandbytes.functional as bnbF

    state = copy.copy(state)
    state.original_nested = False
    data, state = bnbF._convert_weight_packed_for_cpu_inverse(data, state)
    if state.absmax.dim() == 2:
        state.absmax = state.absmax.T.reshape(-1).float()
    return data, state


def _unpack(base: nn.Module) -> None:
    """Put a packed ``Linear4bit`` weight back in the standard layout (:func:`_unpacked`)."""
    W = base.weight
    state = getattr(W, "quant_state", None)  # (an FSDP2 shard of the weight has none)
    if state is not None and _is_packed(state):
        W.data, W.quant_state = _unpacked(W.data, state)
        if hasattr(base, "quant_state"):
            base.quant_state = W.quant_state


def keep_4bit_layout(model: nn.Module) -> int:
    """Keep every bitsandbytes ``Linear4bit`` of ``model`` in its standard layout; return how
    many there are.

    Note [4-bit CPU layout]: on CPUs with AVX512-BF16, bitsandbytes 0.50's
    ``Linear4bit.forward`` repacks the weight for a faster inference kernel the first time it
    runs in eval mode without a gradient, and never undoes it. The repack rounds the absmax
    statistics to bfloat16 (the frozen weight itself moves, by up to 2.5e-3 relative); the
    matmul on that layout has no backward (a later training step passes no gradient through
    the layer: every adapter below an untargeted 4-bit layer stops learning, silently); and
    bitsandbytes' own inverse, run by ``state_dict()`` (so by ``save_pretrained``), scrambles
    non-nested statistics, so the model's outputs change after a save. Evaluation during
    training would change the training. This turns the repack off on each layer (the flag
    ``support_avx512bf16_for_cpu`` bitsandbytes reads) and puts a weight already repacked back
    exactly (:func:`_unpacked`; the bfloat16 rounding of an earlier repack cannot be undone).
    Every forward then runs bitsandbytes' standard kernel, as in training and on GPUs.
    ``get_peft_model`` with a :class:`~sorth.SOrthConfig` calls this on the whole model (also
    the layers it does not adapt); call it yourself on a 4-bit model used with another PEFT
    method. The layers stay so after ``merge_and_unload``. bitsandbytes need not be imported
    (layers are recognised by class name).
    """
    count = 0
    for module in model.modules():
        if bnb_kind(module) != "4bit":
            continue
        module.support_avx512bf16_for_cpu = False
        if getattr(module.weight, "quant_state", None) is not None:
            _unpack(module)
        count += 1
    return count


def _unpack_before_state_dict(module: nn.Module, prefix: str, keep_vars: bool) -> None:
    """``state_dict`` pre-hook: bitsandbytes' ``Linear4bit._save_to_state_dict`` unpacks a
    packed weight in place with its own inverse, which corrupts non-nested statistics (the
    base model's outputs change after ``save_pretrained``); unpack it exactly first."""
    _unpack(module.get_base_layer())


class _QuantizedLinear(Linear):
    """Shared merge logic of the bitsandbytes layers: one dequantize → fold → re-quantize per
    merge, and an exact unmerge from the kept pre-merge weight."""

    _pre_merge: tuple[Any, ...] | None = None
    _frozen_op_autocasts = False  # bitsandbytes' matmuls take x in the compute dtype

    def _frozen_dtype(self, x_dtype: torch.dtype) -> torch.dtype:
        return x_dtype

    def _snapshot(self) -> tuple[Any, ...]:
        raise NotImplementedError

    def _restore(self, snapshot: tuple[Any, ...]) -> None:
        raise NotImplementedError

    @torch.no_grad()
    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Fold the adapters (in the order they are applied) into the dequantized weight and
        re-quantize once. Checked for NaN/inf before the layer is touched."""
        names = self._present(check_adapters_to_merge(self, adapter_names))
        if not names:
            return
        check_unsharded(self.get_base_layer().weight, "merge the adapter")  # Note [sharded merge]
        W = self.get_base_weight()
        merged = W
        for name in names:
            merged = self._apply_to_weight(merged, name, inverse=False, precise=True)
            if not torch.isfinite(merged).all():
                raise ValueError(NAN_MESSAGE.format(name))
        if not self.merged_adapters:
            self._pre_merge = self._snapshot()
        self.set_base_weight(merged.to(W.dtype))
        self.merged_adapters.extend(names)

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore the pre-merge quantized weight exactly (no re-quantization)."""
        if not self.merged_adapters:
            return
        check_unsharded(self.get_base_layer().weight, "unmerge the adapter")
        if self._pre_merge is not None:
            self._restore(self._pre_merge)
            self._pre_merge = None
            self.merged_adapters.clear()
            return
        super().unmerge()  # merged by someone else: invert and re-quantize


class Linear4bit(_QuantizedLinear):
    """sorth on bitsandbytes ``Linear4bit`` (NF4 / FP4): ``W_q`` packed 4-bit ``(d_out·d_in/2,
    1)`` with a ``quant_state``; the frozen op is ``bnb.matmul_4bit`` in the layer's compute
    dtype (``bnb_4bit_compute_dtype``; the input's dtype when it is unset)."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: Any, **kwargs: Any):
        keep_4bit_layout(base_layer)  # Note [4-bit CPU layout]
        super().__init__(base_layer, adapter_name, config, **kwargs)
        self.register_state_dict_pre_hook(_unpack_before_state_dict)

    def _frozen_dtype(self, x_dtype: torch.dtype) -> torch.dtype:
        compute = getattr(self.get_base_layer(), "compute_dtype", None)
        return compute if compute is not None else x_dtype

    def _linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        import bitsandbytes as bnb
        from bitsandbytes.nn.modules import fix_4bit_weight_quant_state_from_module

        base = self.get_base_layer()
        fix_4bit_weight_quant_state_from_module(base)  # FSDP-style lost quant_state
        _unpack(base)  # packed before sorth wrapped it (Note [4-bit CPU layout])
        W = base.weight
        return bnb.matmul_4bit(x, W.t(), bias=bias, quant_state=W.quant_state)

    def get_base_weight(self) -> torch.Tensor:
        """The dequantized weight ``(d_out, d_in)`` in the dtype it was quantized from."""
        import bitsandbytes.functional as bnbF

        W = self.get_base_layer().weight
        data, state = W.data, W.quant_state
        if _is_packed(state):  # bitsandbytes' CPU inference layout
            data, state = _unpacked(data, state)
        return bnbF.dequantize_4bit(data, state)

    def set_base_weight(self, weight_data: torch.Tensor) -> None:
        """Re-quantize ``weight_data`` ``(d_out, d_in)`` with the layer's 4-bit settings."""
        import bitsandbytes as bnb

        base = self.get_base_layer()
        old = base.weight
        new = bnb.nn.Params4bit(
            weight_data.contiguous().to("cpu"),
            requires_grad=False,
            blocksize=old.quant_state.blocksize if old.quant_state else old.blocksize,
            compress_statistics=old.compress_statistics,
            quant_type=old.quant_type,
            quant_storage=old.quant_storage,
            module=base,
        )
        base.weight = new.to(old.device)

    def _snapshot(self) -> tuple[Any, ...]:
        base = self.get_base_layer()
        return (base.weight, getattr(base, "quant_state", None))

    def _restore(self, snapshot: tuple[Any, ...]) -> None:
        base = self.get_base_layer()
        base.weight, base.quant_state = snapshot


class Linear8bitLt(_QuantizedLinear):
    """sorth on bitsandbytes ``Linear8bitLt`` (LLM.int8()): ``W_q`` int8 ``(d_out, d_in)`` with
    per-row absmax ``SCB``; the frozen op is ``bnb.matmul`` in the input's dtype."""

    def _linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        import bitsandbytes as bnb

        base = self.get_base_layer()
        state = base.state
        state.is_training = base.training
        if base.weight.CB is not None:  # first call after (re)quantization: move CB/SCB
            base.init_8bit_state()
        out = bnb.matmul(x, base.weight, bias=bias, state=state)
        if not state.has_fp16_weights and state.CB is not None:
            base.weight.data = state.CB
        return out

    def _int8(self) -> tuple[torch.Tensor, torch.Tensor]:
        base = self.get_base_layer()
        W, state = base.weight, base.state
        CB = state.CB if state.CB is not None else W.data
        SCB = state.SCB if state.SCB is not None else W.SCB
        return CB, SCB

    def get_base_weight(self) -> torch.Tensor:
        """The dequantized weight ``(d_out, d_in)`` in float32 (``CB · SCB / 127``)."""
        import bitsandbytes.functional as bnbF

        CB, SCB = self._int8()
        return bnbF.int8_vectorwise_dequant(CB, SCB.to(CB.device))

    def set_base_weight(self, weight_data: torch.Tensor) -> None:
        """Re-quantize ``weight_data`` ``(d_out, d_in)`` row-wise to int8."""
        import bitsandbytes as bnb

        base = self.get_base_layer()
        old = base.weight
        new = bnb.nn.Int8Params(
            weight_data.contiguous().to("cpu"),
            requires_grad=False,
            has_fp16_weights=old.has_fp16_weights,
        )
        base.weight = new.to(old.device)
        base.state.reset_grads()

    def _snapshot(self) -> tuple[Any, ...]:
        base = self.get_base_layer()
        CB, SCB = self._int8()
        return (base.weight, CB, SCB)

    def _restore(self, snapshot: tuple[Any, ...]) -> None:
        base = self.get_base_layer()
        weight, CB, SCB = snapshot
        base.weight = weight
        base.state.reset_grads()
        base.state.CB, base.state.SCB = CB, SCB
        weight.CB, weight.SCB = None, None


def dispatch_bnb_4bit(base: nn.Module) -> type[Linear4bit] | None:
    """:class:`Linear4bit` for a bitsandbytes ``Linear4bit`` base (or a subclass), else ``None``."""
    return Linear4bit if bnb_kind(base) == "4bit" else None


def dispatch_bnb_8bit(base: nn.Module) -> type[Linear8bitLt] | None:
    """:class:`Linear8bitLt` for a bitsandbytes ``Linear8bitLt`` base (or a subclass), else
    ``None``."""
    return Linear8bitLt if bnb_kind(base) == "8bit" else None
