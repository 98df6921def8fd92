"""JaSMin for ordinary transformers: per-input local Lipschitz bounds of every softmax
self-attention block of a Hugging Face model, and the regulariser to add to the loss.

JaSMin (Yudin, Gaponov, Kudriashov, Rakhuba 2025) bounds the Jacobian of self-attention at an
input from a closed form of the softmax Jacobian's spectral norm,
``‖diag(p) − ppᵀ‖₂ ≤ p₁(1 − p₁ + p₂)`` (:func:`sorth.nn.softmax_jacobian_bound`, proven in its
Note), and minimises that bound. :class:`AttentionBounds` registers forward hooks on the
attention modules; each forward then records, per input, the bound of
:func:`sorth.nn.softmax_bounds.attention_jacobian_bound` for the map from the module's
``hidden_states`` ``(B, T, d)`` to its output (after ``W_O``), in the ℓ2 norm of the sequence.
It is *local*: a bound on the Jacobian's norm at that input, not a certificate over a ball.

The weights are read by applying each projection to the identity (``proj(I) − proj(0)``), so an
adapter (sorth, LoRA, …) wrapping ``q_proj`` is included and receives the regulariser's
gradient. Supported modules: Llama-style (``q_proj, k_proj, v_proj, o_proj``, rotary, grouped
queries) and BERT/RoBERTa-style (``query, key, value`` with ``output.dense`` on the parent).
The model must run eager attention (``attn_implementation="eager"``), which returns the
probabilities, and no attention dropout while training.

Example:
    >>> with AttentionBounds(model) as bounds:  # doctest: +SKIP
    ...     out = model(input_ids)
    ...     loss = out.loss + 1e-3 * bounds.regularizer()
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sorth.errors import SOrthValueError
from sorth.nn.softmax_bounds import attention_jacobian_bound

__all__ = ["AttentionBounds", "AttentionSite", "find_attention_sites"]


@dataclass(frozen=True)
class AttentionSite:
    """One self-attention module and the projections its bound needs."""

    name: str
    module: nn.Module
    q: nn.Module
    k: nn.Module
    v: nn.Module
    o: nn.Module
    heads: int
    kv_heads: int
    head_dim: int
    scaling: float


def _config_value(module: nn.Module, *names: str) -> Any:
    config = getattr(module, "config", None)
    for name in names:
        for owner in (module, config):
            value = getattr(owner, name, None)
            if value is not None:
                return value
    return None


def find_attention_sites(model: nn.Module) -> list[AttentionSite]:
    """Every Llama- or BERT-style self-attention module of ``model`` (see the module doc)."""
    sites = []
    modules = dict(model.named_modules())
    for name, module in modules.items():
        if all(hasattr(module, a) for a in ("q_proj", "k_proj", "v_proj", "o_proj")):
            q, k, v, o = module.q_proj, module.k_proj, module.v_proj, module.o_proj
        elif all(hasattr(module, a) for a in ("query", "key", "value")):
            parent = modules.get(name.rpartition(".")[0])
            dense = getattr(getattr(parent, "output", None), "dense", None)
            if dense is None:
                continue  # e.g. a cross-attention without the BERT output block
            q, k, v, o = module.query, module.key, module.value, dense
        else:
            continue
        heads = _config_value(module, "num_attention_heads", "num_heads")
        head_dim = _config_value(module, "head_dim", "attention_head_size")
        scaling = getattr(module, "scaling", None)
        if heads is None or head_dim is None or scaling is None:
            raise SOrthValueError(
                f"attention module {name!r} ({type(module).__name__}) does not say its number of "
                "heads, head_dim or scaling; AttentionBounds supports Llama- and BERT-style "
                "attention."
            )
        kv_heads = _config_value(module, "num_key_value_heads") or heads
        site = AttentionSite(name, module, q, k, v, o, int(heads), int(kv_heads), int(head_dim),
                             float(scaling))  # fmt: skip
        sites.append(site)
    return sites


def _weight(proj: nn.Module, d: int, ref: torch.Tensor) -> torch.Tensor:
    """The effective ``(out, in)`` weight of a linear-like module (adapters included)."""
    eye = torch.eye(d, dtype=ref.dtype, device=ref.device)
    return (proj(eye) - proj(torch.zeros_like(eye[:1]))).mT


def _head_norms(W: torch.Tensor, heads: int, repeat: int) -> torch.Tensor:
    rows = W.reshape(heads, W.shape[0] // heads, W.shape[1])  # (H, d_h, in)
    return torch.linalg.matrix_norm(rows.float(), ord=2).repeat_interleave(repeat)


class AttentionBounds:
    """Context manager recording JaSMin bounds of every attention block during forwards.

    Args:
        model: a Hugging Face (or PEFT-wrapped) transformer running eager attention.
        softmax_bound: ``"jasmin"`` (``p₁(1 − p₁ + p₂)``) or ``"classical"`` (``1/2``).

    After a forward, :attr:`bounds` maps module names to ``(B,)`` tensors (one local bound per
    input, differentiable) and :meth:`regularizer` gives the loss term. Each forward replaces the
    previous record.
    """

    def __init__(self, model: nn.Module, *, softmax_bound: str = "jasmin"):
        if softmax_bound not in ("jasmin", "classical"):
            raise SOrthValueError(
                f"softmax_bound={softmax_bound!r} is not supported; choose 'jasmin' or 'classical'."
            )
        impl = getattr(getattr(model, "config", None), "_attn_implementation", "eager")
        if impl not in (None, "eager"):
            raise SOrthValueError(
                f"AttentionBounds needs the attention probabilities, which attn_implementation="
                f"{impl!r} does not return; load the model with attn_implementation='eager' (or "
                "call model.set_attn_implementation('eager'))."
            )
        self.sites = find_attention_sites(model)
        if not self.sites:
            raise SOrthValueError(
                f"no Llama- or BERT-style self-attention module found in {type(model).__name__}."
            )
        self.softmax_bound = softmax_bound
        self.bounds: dict[str, torch.Tensor] = {}
        self._inputs: dict[str, tuple[torch.Tensor, bool]] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> AttentionBounds:
        for site in self.sites:
            self._handles.append(
                site.module.register_forward_pre_hook(self._capture(site), with_kwargs=True)
            )
            self._handles.append(site.module.register_forward_hook(self._record(site)))
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Remove the hooks (the model runs as before)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _capture(self, site: AttentionSite):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            x = kwargs.get("hidden_states", args[0] if args else None)
            rotary = kwargs.get("position_embeddings") is not None
            self._inputs[site.name] = (x, rotary)

        return hook

    def _record(self, site: AttentionSite):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            probs = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if probs is None:
                raise SOrthValueError(
                    f"{site.name} returned no attention probabilities: load the model with "
                    "attn_implementation='eager'."
                )
            drop = getattr(module, "attention_dropout", None)
            drop = getattr(getattr(module, "dropout", None), "p", 0.0) if drop is None else drop
            if module.training and drop:
                raise SOrthValueError(
                    f"{site.name} applies attention dropout (p={drop}) in training, so its "
                    "returned probabilities are not the softmax; set the attention dropout to 0."
                )
            x, rotary = self._inputs.pop(site.name)
            self.bounds[site.name] = self._bound(site, x, probs, rotary)

        return hook

    def _bound(self, site: AttentionSite, x: torch.Tensor, P: torch.Tensor, rotary: bool):
        B, T, d = x.shape
        H, G, dh = site.heads, site.kv_heads, site.head_dim
        rep = H // G

        def split(t: torch.Tensor, n: int) -> torch.Tensor:
            t = t.view(B, T, n, dh).transpose(1, 2)  # (B, n, T, d_h)
            return t.repeat_interleave(H // n, dim=1).float()

        Q, K, V = split(site.q(x), H), split(site.k(x), G), split(site.v(x), G)
        norms = (
            _head_norms(_weight(site.q, d, x), H, 1),
            _head_norms(_weight(site.k, d, x), G, rep),
            _head_norms(_weight(site.v, d, x), G, rep),
        )
        Wo = _weight(site.o, H * dh, x)
        output_norm = torch.linalg.matrix_norm(Wo.float(), ord=2)
        return attention_jacobian_bound(
            P.float(), Q, K, V, norms, output_norm, site.scaling, rotary=rotary,
            softmax_bound=self.softmax_bound,
        )  # fmt: skip

    def per_input(self) -> torch.Tensor:
        """``(B, layers)``: the recorded bounds of the last forward, one column per module."""
        if not self.bounds:
            raise SOrthValueError("no forward has run inside AttentionBounds yet.")
        return torch.stack(list(self.bounds.values()), dim=1)

    def regularizer(self, reduction: str = "mean_log") -> torch.Tensor:
        """The loss term: ``"mean_log"`` (default) the batch mean of ``Σ_layers log(bound)``
        (the log of the product, which bounds the stacked attention blocks), or ``"mean"`` the
        batch mean of ``Σ_layers bound``."""
        bounds = self.per_input()
        if reduction == "mean_log":
            return bounds.clamp_min(1e-12).log().sum(1).mean()
        if reduction == "mean":
            return bounds.sum(1).mean()
        raise SOrthValueError(
            f"reduction={reduction!r} is not supported; choose 'mean_log' or 'mean'."
        )
