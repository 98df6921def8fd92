"""JaSMin bounds of Hugging Face attention (tiny Llama with RoPE + GQA, tiny RoBERTa): the
recorded per-input bound is >= the exact Jacobian norm of the attention block at that input,
the JaSMin softmax bound is below the classical 1/2 one, and the regulariser trains a
sorth-adapted model (its gradient reaches the adapter)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from transformers import AutoModel, AutoModelForCausalLM

import sorth
from sorth.integrations.jasmin import AttentionBounds, find_attention_sites
from sorth.integrations.testing import tiny_llama, tiny_roberta


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    folder = tiny_llama(tmp_path_factory.mktemp("llama"))
    return AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").double().eval()


@pytest.fixture(scope="module")
def roberta(tmp_path_factory):
    folder = tiny_roberta(tmp_path_factory.mktemp("roberta"))
    return AutoModel.from_pretrained(folder, attn_implementation="eager").double().eval()


def _exact_jacobian_norms(model, ids) -> dict[str, float]:
    """Spectral norm of d(attention output)/d(hidden_states) for each site, at this input."""
    captured: dict[str, tuple] = {}
    handles = []
    for site in find_attention_sites(model):

        def hook(module, args, kwargs, name=site.name):
            captured[name] = (module, args, kwargs)

        handles.append(site.module.register_forward_pre_hook(hook, with_kwargs=True))
    with torch.no_grad():
        model(ids, use_cache=False)
    for h in handles:
        h.remove()
    norms = {}
    sites = {s.name: s for s in find_attention_sites(model)}
    for name, (module, args, kwargs) in captured.items():
        x = kwargs.get("hidden_states", args[0] if args else None)
        rest = {k: v for k, v in kwargs.items() if k not in ("hidden_states", "past_key_values")}
        extra = args[1:] if "hidden_states" not in kwargs else args

        def f(h, module=module, rest=rest, extra=extra, site=sites[name]):
            out = module(h, *extra, **rest)[0]
            return site.o(out) if site.o is not getattr(module, "o_proj", None) else out

        J = torch.autograd.functional.jacobian(f, x.detach())  # (1, T, d, 1, T, d)
        n = x.numel()
        norms[name] = float(torch.linalg.matrix_norm(J.reshape(-1, n), ord=2))
    return norms


@pytest.mark.parametrize("which", ["llama", "roberta"])
def test_bounds_dominate_the_exact_jacobian(which, request) -> None:
    model = request.getfixturevalue(which)
    torch.manual_seed(0)
    ids = torch.randint(4, 50, (1, 10))
    exact = _exact_jacobian_norms(model, ids)
    with AttentionBounds(model) as jasmin, torch.no_grad():
        model(ids)
    with AttentionBounds(model, softmax_bound="classical") as classical, torch.no_grad():
        model(ids)
    assert set(jasmin.bounds) == set(exact)
    assert len(exact) == 2
    for name, value in exact.items():
        refined, loose = float(jasmin.bounds[name]), float(classical.bounds[name])
        assert value <= refined <= loose, (name, value, refined, loose)
    assert jasmin.per_input().shape == (1, 2)


def test_hooks_are_removed_and_sdpa_is_refused(llama, tmp_path) -> None:
    with AttentionBounds(llama) as bounds:
        pass
    assert not any(s.module._forward_hooks for s in bounds.sites)
    sdpa = AutoModelForCausalLM.from_pretrained(tiny_llama(tmp_path), attn_implementation="sdpa")
    with pytest.raises(ValueError, match="attn_implementation='eager'"):
        AttentionBounds(sdpa)
    with pytest.raises(ValueError, match="softmax_bound='x' is not supported"):
        AttentionBounds(llama, softmax_bound="x")


def test_regulariser_trains_a_sorth_adapter(tmp_path) -> None:
    from peft import get_peft_model

    base = AutoModelForCausalLM.from_pretrained(tiny_llama(tmp_path), attn_implementation="eager")
    model = get_peft_model(
        base, sorth.SOrthConfig(target_modules=["q_proj", "k_proj"], block_size=8)
    )
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=0.05)
    ids = torch.randint(4, 50, (4, 12))
    with AttentionBounds(model) as bounds:
        values = []
        for _ in range(8):
            out = model(ids, labels=ids)
            reg = bounds.regularizer()
            values.append(float(reg.detach()))
            opt.zero_grad()
            (out.loss * 0 + reg).backward()
            assert all(p.grad is not None for p in params)
            opt.step()
    assert values[-1] < values[0]  # minimising the bound moves the adapter
    # the bound still holds with the adapter in place
    model.eval()
    exact = _exact_jacobian_norms(model.double(), ids[:1])
    with AttentionBounds(model) as bounds, torch.no_grad():
        model(ids[:1])
    for name, value in exact.items():
        assert value <= float(bounds.bounds[name])
