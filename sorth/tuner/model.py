"""``SOrthModel``: the PEFT ``BaseTuner`` that injects sorth layers.

Besides PEFT's generic machinery this adds:

* **Checks before any change** (``_prepare_model``): every module the config targets is checked
  (supported type, block size dividing its size, conv groups) before the first one is replaced,
  so a bad config raises naming the module and the value and leaves the model untouched.
* **Checkpoint keys**: the adapter name sits right after the ``sorth_*`` attribute
  (``q_proj.sorth_in.default.params.0``); it is removed on save and put back on load (the same
  convention transformers uses for PEFT keys).
* **Checkpoint checks on load**: missing, unexpected or mis-shaped adapter tensors (an adapter
  saved for another model or with another structure) raise :class:`AdapterCheckpointError`
  naming the key and both shapes. Any failed load, also one inside PEFT's own state-dict load
  (e.g. a ``modules_to_save`` head of another size), is rolled back first: modules, attributes,
  ``peft_config``, ``requires_grad`` and tensor values as before the call (Note [load rollback]
  in :mod:`sorth.tuner.rollback`).
* **Mixed-adapter batches**: ``model(x, adapter_names=[...])`` routes each sample through its
  adapter (``"__base__"``: no adapter), in eval mode.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from peft.tuners.tuners_utils import (
    BaseTuner,
    BaseTunerLayer,
    _maybe_include_all_linear_layers,
    onload_layer,
)
from peft.utils import TRANSFORMERS_MODELS_TO_OFT_TARGET_MODULES_MAPPING
from torch import nn

from sorth.errors import SOrthValueError
from sorth.tuner.bnb import dispatch_bnb_4bit, dispatch_bnb_8bit, keep_4bit_layout
from sorth.tuner.errors import AdapterCheckpointError, UnsupportedLayerError
from sorth.tuner.layer import Linear, SOrthLayer, dispatch_default
from sorth.tuner.peft_type import PREFIX
from sorth.tuner.quantization import SUPPORTED_QUANTIZED, unsupported_reason
from sorth.tuner.rollback import begin_load, record_injection
from sorth.tuner.sharding import sharding_of
from sorth.tuner.weight_read import MultiheadOutProj, weight_read_class

__all__ = ["SOrthModel", "dispatch_layer_class"]

SUPPORTED = (
    "torch.nn.Linear, torch.nn.Conv2d, torch.nn.Embedding, transformers' Conv1D and "
    "bitsandbytes Linear4bit / Linear8bitLt"
)


def dispatch_layer_class(base: nn.Module) -> type[SOrthLayer] | None:
    """The sorth layer class for a base module, or ``None`` if sorth cannot adapt it.

    The order is the point (as in PEFT's ``dispatchers`` list): the bitsandbytes layers first,
    then any other quantized layer is refused (:func:`~sorth.tuner.quantization.unsupported_reason`;
    many quantized layers subclass ``nn.Linear``), and the default layers are checked last.
    """
    for dispatch in (dispatch_bnb_8bit, dispatch_bnb_4bit):
        layer_cls = dispatch(base)
        if layer_cls is not None:
            return layer_cls
    if unsupported_reason(base) is not None:
        return None
    return dispatch_default(base)


def _describe(base: nn.Module) -> str:
    if isinstance(base, nn.Conv2d):
        return (
            f"Conv2d(in_channels={base.in_channels}, out_channels={base.out_channels}, "
            f"kernel_size={tuple(base.kernel_size)}, groups={base.groups})"
        )
    w = getattr(base, "weight", None)
    return f"{type(base).__name__}(weight={tuple(w.shape) if w is not None else None})"


def _adapter_names_hook(module: nn.Module, args: tuple, kwargs: dict, adapter_names: list[str]):
    kwargs["adapter_names"] = adapter_names
    return args, kwargs


class SOrthModel(BaseTuner):
    """GSOFT / Double GSOFT adapters on a model (see :class:`sorth.SOrthConfig`).

    Use through PEFT: ``get_peft_model(model, SOrthConfig(...))``.
    """

    prefix: str = PREFIX
    tuner_layer_cls = SOrthLayer
    target_module_mapping = TRANSFORMERS_MODELS_TO_OFT_TARGET_MODULES_MAPPING

    # ------------------------------------------------------------------ injection
    def _prepare_model(self, peft_config: Any, model: nn.Module) -> None:
        """Check every targeted module before the first is replaced (model stays unchanged).

        Inside a PEFT load, also snapshots the model so a failed load can roll back. Turns off
        bitsandbytes' CPU repacking of every 4-bit layer
        (:func:`~sorth.tuner.bnb.keep_4bit_layout`), so evaluation never changes a quantized
        training run.
        """
        config = _maybe_include_all_linear_layers(copy.deepcopy(peft_config), model)
        tuner_prefixes = [
            n + "." for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)
        ]
        for key, module in model.named_modules():
            if not key or any(key.startswith(p) for p in tuner_prefixes):
                continue
            if not self._check_target_module_exists(config, key):
                continue
            self._check_target(config, key, module)
        record_injection(model, self)  # after the checks: a bad config changes nothing
        self._tied = _shared_parameters(model)  # Note [tied weights] (sorth.tuner.merge)
        keep_4bit_layout(model)  # every 4-bit layer, adapted or not: Note [4-bit CPU layout]

    @staticmethod
    def _check_target(config: Any, key: str, module: nn.Module) -> None:
        if isinstance(module, BaseTunerLayer) and not isinstance(module, SOrthLayer):
            raise UnsupportedLayerError(
                f"target module {key!r} already holds a {type(module).__name__} adapter of "
                "another PEFT method; sorth cannot stack on it."
            )
        base = module.get_base_layer() if isinstance(module, BaseTunerLayer) else module
        weight = getattr(base, "weight", None)
        if isinstance(weight, torch.Tensor) and sharding_of(weight) == "fsdp":
            raise UnsupportedLayerError(
                f"target module {key!r} is already sharded by FSDP2 (its weight is a DTensor): "
                "add the adapter first (get_peft_model), then fully_shard, so that the adapter "
                "is sharded and its gradients are averaged across ranks too."
            )
        layer_cls = dispatch_layer_class(base)
        if layer_cls is None:
            quantized = unsupported_reason(base)
            if quantized is not None:
                raise UnsupportedLayerError(
                    f"target module {key!r} is {quantized}; sorth supports quantized bases from "
                    f"{SUPPORTED_QUANTIZED} only. Load the model with bitsandbytes or in full "
                    "precision, or remove the module from target_modules."
                )
            hint = (
                f"Target its {key}.out_proj (the fused in_proj is a parameter, not a layer), "
                "or remove it from target_modules"
                if isinstance(base, nn.MultiheadAttention)
                else "Remove it from target_modules (or add it to exclude_modules)"
            )
            raise UnsupportedLayerError(
                f"target module {key!r} is a {type(base).__name__}; sorth supports {SUPPORTED}. "
                f"{hint}."
            )
        if config.fan_in_fan_out and layer_cls.__name__ != "Conv1D":
            raise UnsupportedLayerError(
                f"fan_in_fan_out=True but target module {key!r} is a {type(base).__name__} "
                "with an (out, in) weight; sorth reads the layout from the layer type, so leave "
                "fan_in_fan_out=False (it is only true for transformers' Conv1D)."
            )
        probe = layer_cls.__new__(layer_cls)
        nn.Module.__init__(probe)
        SOrthLayer.__init__(probe, base)
        try:
            probe.build_rotations(config, device="meta")
        except SOrthValueError as err:
            raise type(err)(f"target module {key!r} {_describe(base)}: {err}") from err

    def _create_and_replace(
        self,
        peft_config: Any,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        **kwargs: Any,
    ) -> None:
        if isinstance(target, SOrthLayer):
            target.update_layer(
                adapter_name, peft_config, inference_mode=peft_config.inference_mode
            )
            return
        layer_cls = dispatch_layer_class(target)
        if layer_cls is None:  # _prepare_model checked this already
            raise UnsupportedLayerError(f"target module {current_key!r}: supported: {SUPPORTED}.")
        if layer_cls is Linear:  # Note [weight read by the parent] (MHA's out_proj, ...)
            layer_cls = weight_read_class(parent, target_name) or Linear
        new_module = layer_cls(target, adapter_name, peft_config)
        new_module.shares_weight = id(getattr(target, "weight", None)) in getattr(self, "_tied", ())
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)  # an additional adapter is not trainable by default
        self._replace_module(parent, target_name, new_module, target)

    def _replace_module(
        self, parent: nn.Module, child_name: str, new_module: nn.Module, child: nn.Module
    ) -> None:
        """Put ``new_module`` in place of ``child`` and move its adapter parts to the base device.

        Unlike ``BaseTuner._replace_module`` this never copies ``child.weight`` onto the new
        module: on unload, ``modules_to_save`` copies (e.g. RoBERTa's classification head, which
        has no ``weight``) are put back as they are, as PEFT's LoRA does.
        """
        setattr(parent, child_name, new_module)
        base = getattr(child, "base_layer", child)
        weight = next(base.parameters(), None)
        if weight is None or weight.device.type == "meta":
            return
        for name, module in new_module.named_modules():
            # adapter parts still on "meta" (low_cpu_mem_usage) are materialised by the load
            if self.prefix in name and not any(p.is_meta for p in module.parameters()):
                module.to(weight.device)

    # -------------------------------------------------------------------- merging
    def _check_merge_allowed(self) -> None:
        """PEFT's check only warns about tied weights, which sorth merges correctly (Note
        [tied weights] in :mod:`sorth.tuner.merge`)."""

    def merge_adapter(self, adapter_names: list[str] | None = None, safe_merge: bool = False):
        """PEFT's ``merge_adapter``, all-or-nothing across the model.

        Every layer's merged weight is computed and checked first (finite in the base dtype;
        one layer at a time, nothing kept), so a merge that any layer refuses changes no layer.
        An exception while the weights are written (e.g. out of memory) unmerges the layers
        already written.
        """
        layers = [m for m in self.model.modules() if isinstance(m, BaseTunerLayer)]
        for layer in layers:
            if isinstance(layer, SOrthLayer):
                with onload_layer(layer):
                    layer.check_merge(adapter_names)
        written: list[tuple[BaseTunerLayer, list[str]]] = []
        try:
            for layer in layers:
                written.append((layer, list(layer.merged_adapters)))
                with onload_layer(layer):
                    layer.merge(adapter_names=adapter_names, safe_merge=safe_merge)
        except BaseException:
            for layer, before in reversed(written):
                if list(layer.merged_adapters) != before:
                    layer.unmerge()
                    if before:
                        layer.merge(adapter_names=before)
            raise

    def _unload_and_optionally_merge(
        self,
        merge: bool = True,
        progressbar: bool = False,
        safe_merge: bool = False,
        adapter_names: list[str] | None = None,
    ) -> nn.Module:
        """``merge_and_unload`` / ``unload``: merge every layer first (:meth:`merge_adapter`,
        all-or-nothing), then unwrap; PEFT merges and unwraps layer by layer, so a refused merge
        left the layers before it merged and unwrapped."""
        if merge:
            self.merge_adapter(adapter_names=adapter_names, safe_merge=safe_merge)
        model = super()._unload_and_optionally_merge(merge=False, progressbar=progressbar)
        if merge:
            _untie_config(model)
        return model

    # ------------------------------------------------------------- mixed batches
    @contextmanager
    def _enable_peft_forward_hooks(self, *args: Any, **kwargs: Any) -> Iterator[None]:
        adapter_names = kwargs.pop("adapter_names", None)
        if adapter_names is None:
            yield
            return
        if self.training:
            raise SOrthValueError("adapter_names= works in eval mode only; call model.eval().")
        known = set()
        for name, layer in self.model.named_modules():
            if isinstance(layer, MultiheadOutProj):
                raise SOrthValueError(
                    f"adapter_names= (mixed-adapter batches) cannot route samples through "
                    f"{name!r}, the out_proj of a MultiheadAttention (its adapter acts on the "
                    "weight the attention reads); run one adapter per batch (model.set_adapter)."
                )
            if isinstance(layer, SOrthLayer):
                known |= set(layer.sorth_on_weight)
        unknown = {a for a in adapter_names if a != "__base__"} - known
        if unknown:
            raise SOrthValueError(
                f"adapter_names contains unknown adapter(s) {sorted(unknown)}; "
                f"known: {sorted(known)} (or '__base__' for no adapter)."
            )
        num_beams = kwargs.get("num_beams")
        if isinstance(num_beams, int) and num_beams > 1:
            adapter_names = [a for a in adapter_names for _ in range(num_beams)]
        hook = partial(_adapter_names_hook, adapter_names=list(adapter_names))
        handles = [
            layer.register_forward_pre_hook(hook, with_kwargs=True)
            for layer in self.model.modules()
            if isinstance(layer, SOrthLayer)
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    # --------------------------------------------------------------- checkpoints
    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        """``lin.sorth_in.default.params.0`` → ``lin.sorth_in.params.0``; ``….sorth_s.default`` →
        ``….sorth_s`` (other keys, e.g. biases, are unchanged)."""
        pattern = rf"(\.?{re.escape(PREFIX)}[^.]*)\.{re.escape(adapter_name)}(?=\.|$)"
        return re.sub(pattern, r"\1", key)

    @classmethod
    def _remap_adapter_state_dict_for_load(
        cls,
        model: nn.Module,
        config: Any,
        adapter_name: str,
        state_dict: dict[str, torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        remapped = super()._remap_adapter_state_dict_for_load(
            model, config, adapter_name, state_dict
        )
        transaction = begin_load(model, adapter_name, remapped)
        try:
            _check_checkpoint(model, adapter_name, remapped)
        except AdapterCheckpointError:
            transaction.rollback()
            raise
        transaction.guard(model, adapter_name, remapped)  # rolls back if the load reports errors
        return remapped


def _untie_config(model: nn.Module) -> None:
    """Set ``tie_word_embeddings=False`` when a merge untied the embeddings (Note [tied
    weights]), as PEFT does after its own merges, so a saved model reloads untied."""
    config = getattr(model, "config", None)
    if not getattr(config, "tie_word_embeddings", False):
        return
    try:
        out_emb, in_emb = model.get_output_embeddings(), model.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        return
    weights = [getattr(e, "weight", None) for e in (out_emb, in_emb)]
    if None not in weights and weights[0] is not weights[1]:
        config.tie_word_embeddings = False


def _shared_parameters(model: nn.Module) -> set[int]:
    """``id`` of every parameter that more than one module holds (tied weights)."""
    seen: set[int] = set()
    shared: set[int] = set()
    for _, p in model.named_parameters(remove_duplicate=False):
        (shared if id(p) in seen else seen).add(id(p))
    return shared


def _adapter_tensors(model: nn.Module, adapter_name: str) -> dict[str, torch.Tensor]:
    """Model keys and tensors of one adapter's persistent state."""
    marker = re.compile(rf"\.{re.escape(PREFIX)}[^.]*\.{re.escape(adapter_name)}(\.|$)")
    return {k: v for k, v in model.state_dict().items() if marker.search("." + k)}


def _check_checkpoint(model: nn.Module, adapter_name: str, loaded: dict[str, torch.Tensor]) -> None:
    expected = _adapter_tensors(model, adapter_name)
    prefix = "base_model.model."
    bare = {k.removeprefix(prefix): v for k, v in loaded.items()}
    keyed = {k.removeprefix(prefix): v for k, v in expected.items()}
    missing = sorted(set(keyed) - set(bare))
    unexpected = sorted(k for k in bare if PREFIX in k and k not in keyed)
    if missing or unexpected:
        raise AdapterCheckpointError(
            f"adapter checkpoint does not match the model for adapter {adapter_name!r}: "
            f"{len(missing)} missing key(s) (first: {missing[:3]}), {len(unexpected)} unexpected "
            f"key(s) (first: {unexpected[:3]}). Was it saved for another model or target_modules?"
        )
    for key, tensor in keyed.items():
        got = bare[key]
        name = SOrthModel._remove_adapter_name_from_key(key, adapter_name)
        if tuple(got.shape) != tuple(tensor.shape):
            raise AdapterCheckpointError(
                f"adapter checkpoint tensor {name!r} has shape {tuple(got.shape)}, the model "
                f"expects {tuple(tensor.shape)}: was it saved for another model (other layer "
                "sizes) or with another block_size/nblocks, structure, storage or side?"
            )
        if got.is_floating_point() and not torch.isfinite(got).all():
            bad = int((~torch.isfinite(got)).sum())
            raise AdapterCheckpointError(
                f"adapter checkpoint tensor {name!r} holds {bad} NaN/inf value(s) of "
                f"{got.numel()}. The file itself is intact (it was read completely); the adapter "
                "was saved after its training diverged (e.g. too high a learning rate). Load an "
                "earlier checkpoint or retrain (orthogonal_map='cayley' is the exact, stable map)."
            )
