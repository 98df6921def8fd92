"""QGSOFT: sorth on bitsandbytes 4-bit (NF4 / FP4) and 8-bit bases, quantized on CPU from
tiny Llama / GPT-2 checkpoints built from configs (PEFT-style checks), and the clear error for
every other quantized layer type."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

bnb = pytest.importorskip("bitsandbytes")

import torch  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training  # noqa: E402
from torch import nn  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    BitsAndBytesConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
)

from sorth import SOrthConfig  # noqa: E402
from sorth.tuner import UnsupportedLayerError, keep_4bit_layout  # noqa: E402
from sorth.tuner.bnb import Linear4bit, Linear8bitLt  # noqa: E402
from sorth.tuner.quantization import unsupported_reason  # noqa: E402
from tests._tolerances import tol  # noqa: E402

F32 = tol(torch.float32)
KINDS = ("nf4", "fp4", "8bit")
SIDES = ("input", "output", "both")
LLAMA_TARGETS = ["q_proj", "v_proj", "up_proj", "down_proj"]


def _quant(kind: str, compute: torch.dtype = torch.float32) -> BitsAndBytesConfig:
    if kind == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=kind, bnb_4bit_compute_dtype=compute
    )


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        initializer_range=0.1,
    )
    path = tmp_path_factory.mktemp("llama")
    AutoModelForCausalLM.from_config(cfg).save_pretrained(path)
    return path


def load(path: Path, kind: str, compute: torch.dtype = torch.float32) -> nn.Module:
    """The quantized model, its 4-bit layers kept in the standard layout as sorth keeps them
    (a reference base must not run bitsandbytes' repacked CPU kernel, Note [4-bit CPU layout])."""
    model = AutoModelForCausalLM.from_pretrained(
        path, quantization_config=_quant(kind, compute), device_map="cpu"
    )
    keep_4bit_layout(model)
    return model


def tokens(seed: int = 0, batch: int = 3) -> torch.Tensor:
    return torch.randint(0, 64, (batch, 12), generator=torch.Generator().manual_seed(seed))


def train(model: nn.Module, steps: int = 3, lr: float = 1e-2) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    model.train()
    x = tokens(1, batch=4)
    for _ in range(steps):
        model(x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


def logits(model: nn.Module, x: torch.Tensor, **kw) -> torch.Tensor:
    with torch.no_grad():
        return model(x, **kw).logits


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


# ------------------------------------------------------------------ one layer, exact math
def _bnb_layer(kind: str, ref: nn.Linear) -> nn.Module:
    if kind == "8bit":
        q = bnb.nn.Linear8bitLt(ref.in_features, ref.out_features, has_fp16_weights=False)
        q.weight = bnb.nn.Int8Params(ref.weight.data.clone(), requires_grad=False)
    else:
        q = bnb.nn.Linear4bit(
            ref.in_features, ref.out_features, compute_dtype=torch.float32, quant_type=kind
        )
        q.weight = bnb.nn.Params4bit(
            ref.weight.data.clone(), requires_grad=False, quant_type=kind, module=q
        )
    q.bias = nn.Parameter(ref.bias.data.clone())
    return q.to("cpu")


class _Wrap(nn.Module):
    def __init__(self, lin: nn.Module) -> None:
        super().__init__()
        self.lin = lin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


def _pair(kind: str, side: str) -> tuple[nn.Module, nn.Module]:
    """(sorth on the bnb layer, sorth on nn.Linear holding its dequantized weight), same
    random (non-identity) adapter."""
    torch.manual_seed(0)
    ref = nn.Linear(64, 32)
    cfg = {"target_modules": ["lin"], "block_size": 8, "side": side, "init_weights": False}
    mq = get_peft_model(_Wrap(_bnb_layer(kind, ref)), SOrthConfig(**cfg))
    layer = mq.base_model.model.lin
    assert isinstance(layer, Linear8bitLt if kind == "8bit" else Linear4bit)
    ref.weight.data = layer.get_base_weight().float()
    mr = get_peft_model(_Wrap(ref), SOrthConfig(**cfg))
    adapter = {k: v for k, v in layer.state_dict().items() if "sorth_" in k}
    mr.base_model.model.lin.load_state_dict(adapter, strict=False)
    return mq, mr


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("kind", KINDS)
def test_forward_and_gradients_match_dequantized_linear(kind: str, side: str) -> None:
    """W_q(A·x) through bitsandbytes' kernel equals the same adapter on nn.Linear(dequant W)."""
    mq, mr = _pair(kind, side)
    x = torch.randn(5, 64)
    mq.train()
    mr.train()
    yq, yr = mq(x), mr(x)
    torch.testing.assert_close(yq, yr, rtol=1e-5, atol=1e-5)
    yq.square().sum().backward()
    yr.square().sum().backward()
    gq = {n: p.grad for n, p in mq.named_parameters() if p.requires_grad}
    gr = {n: p.grad for n, p in mr.named_parameters() if p.requires_grad}
    assert set(gq) == set(gr)
    assert all("sorth_" in n for n in gq)
    for name in gq:
        torch.testing.assert_close(gq[name], gr[name], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("side", ["input", "both"])
def test_input_gradient_survives_an_eval_forward(side: str) -> None:
    """Regression: bitsandbytes repacks a 4-bit weight for CPU inference after a no-grad eval
    forward, and its matmul on that layout has no backward: the input rotation got no grad."""
    mq, _ = _pair("nf4", side)
    layer = mq.base_model.model.lin
    x = torch.randn(5, 64)
    mq.eval()
    with torch.no_grad():
        mq(x)
        with mq.disable_adapter():
            mq(x)
    mq.train()
    (g,) = torch.autograd.grad(mq(x).square().sum(), layer.sorth_in["default"].params[0])
    assert g.abs().max() > 0


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("kind", KINDS)
def test_merge_requantizes_the_exact_merged_weight(kind: str, side: str) -> None:
    """Regression (8-bit merge was 139% off): the merged layer holds bitsandbytes' own
    quantization of diag(s)·A_out·W·A_in, bit for bit; unmerge restores W_q exactly."""
    mq, _ = _pair(kind, side)
    layer = mq.base_model.model.lin
    before = layer.get_base_weight().clone()
    expected = layer.get_merged_weight("default")
    layer.merge()
    probe = _bnb_layer(kind, nn.Linear(64, 32))
    probe.weight = (
        bnb.nn.Int8Params(expected.clone(), requires_grad=False)
        if kind == "8bit"
        else bnb.nn.Params4bit(expected.clone(), requires_grad=False, quant_type=kind)
    ).to("cpu")
    reference = probe.weight.data if kind == "8bit" else probe.weight
    if kind == "8bit":
        want = bnb.functional.int8_vectorwise_dequant(reference, probe.weight.SCB)
    else:
        want = bnb.functional.dequantize_4bit(reference.data, reference.quant_state)
    assert torch.equal(layer.get_base_weight(), want)
    layer.unmerge()
    assert torch.equal(layer.get_base_weight(), before)


def test_merge_checks_nan_before_touching_the_layer() -> None:
    mq, _ = _pair("nf4", "input")
    layer = mq.base_model.model.lin
    weight = layer.get_base_layer().weight
    with torch.no_grad():
        layer.sorth_s["default"][0] = float("nan")
    with pytest.raises(ValueError, match="NaNs detected"):
        layer.merge(safe_merge=True)
    assert layer.get_base_layer().weight is weight
    assert not layer.merged


# --------------------------------------------------------------- tiny Llama, PEFT checks
@pytest.mark.parametrize("side", ["input", "both"])
@pytest.mark.parametrize("kind", KINDS)
def test_llama_train_save_load_merge(llama_dir: Path, tmp_path: Path, kind: str, side: str):
    """prepare_model_for_kbit_training + gradient checkpointing; only adapters train; outputs
    change; a fresh quantized base + the saved adapter gives identical logits; merging is
    within the re-quantization error of PEFT's LoRA merge on the same base."""
    x = tokens()
    base = prepare_model_for_kbit_training(load(llama_dir, kind))
    model = get_peft_model(base, SOrthConfig(target_modules=LLAMA_TARGETS, block_size=8, side=side))
    assert base.is_gradient_checkpointing
    before = logits(load(llama_dir, kind).eval(), x)  # identity adapter: the base model
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if "sorth_" not in n}
    train(model)
    assert all(not p.requires_grad for n, p in model.named_parameters() if "sorth_" not in n)
    for n, p in model.named_parameters():
        if n in frozen and p.dtype == frozen[n].dtype:
            assert torch.equal(p, frozen[n]), n
    after = logits(model, x)
    assert rel(after, before) > 1e-3

    model.save_pretrained(tmp_path / "adapter")
    loaded = PeftModel.from_pretrained(load(llama_dir, kind), tmp_path / "adapter")
    torch.testing.assert_close(logits(loaded, x), after, rtol=0, atol=0)

    with model.disable_adapter():
        torch.testing.assert_close(logits(model, x), logits(load(llama_dir, kind).eval(), x))
    merged = model.merge_and_unload()
    assert not any("sorth_" in n for n, _ in merged.named_parameters())
    layer = merged.model.layers[0].self_attn.q_proj
    assert type(layer).__name__ == ("Linear8bitLt" if kind == "8bit" else "Linear4bit")
    err = rel(logits(merged, x), after)

    lora = get_peft_model(
        prepare_model_for_kbit_training(load(llama_dir, kind)),
        LoraConfig(target_modules=LLAMA_TARGETS, r=8, lora_alpha=8),
    )
    train(lora)
    lora_after = logits(lora, x)
    lora_err = rel(logits(lora.merge_and_unload(), x), lora_after)
    # the same order of error as LoRA's (both: one round-to-nearest of the merged weight)
    assert err < max(3 * lora_err, 1e-3), (err, lora_err)


def test_identity_adapter_merges_to_the_base_exactly(llama_dir: Path) -> None:
    x = tokens()
    for kind in ("nf4", "8bit"):
        base = logits(load(llama_dir, kind).eval(), x)
        model = get_peft_model(
            load(llama_dir, kind), SOrthConfig(target_modules=LLAMA_TARGETS, block_size=8)
        )
        torch.testing.assert_close(logits(model.eval(), x), base)
        torch.testing.assert_close(logits(model.merge_and_unload(), x), base)


@pytest.mark.parametrize("compute", [torch.bfloat16, torch.float16])
def test_compute_dtypes(llama_dir: Path, compute: torch.dtype) -> None:
    x = tokens()
    model = get_peft_model(
        load(llama_dir, "nf4", compute),
        SOrthConfig(target_modules=LLAMA_TARGETS, block_size=8, side="both"),
    )
    train(model, steps=2)
    out = logits(model, x)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if "sorth_" in n)


def test_two_adapters_and_mixed_batch(llama_dir: Path) -> None:
    x = tokens(batch=3)
    cfg = {"target_modules": LLAMA_TARGETS, "block_size": 8, "side": "both", "init_weights": False}
    model = get_peft_model(load(llama_dir, "nf4"), SOrthConfig(**cfg))
    model.add_adapter("other", SOrthConfig(**{**cfg, "init_std": 0.3}))
    model.eval()
    first = logits(model, x)
    model.set_adapter("other")
    second = logits(model, x)
    assert rel(second, first) > 1e-3
    with model.disable_adapter():
        plain = logits(model, x)
    mixed = logits(model, x, adapter_names=["default", "other", "__base__"])
    torch.testing.assert_close(mixed[0], first[0], **F32)
    torch.testing.assert_close(mixed[1], second[1], **F32)
    torch.testing.assert_close(mixed[2], plain[2], **F32)


def test_gpt2_4bit(tmp_path: Path) -> None:
    """GPT-2's Conv1D is quantized by transformers into Linear4bit with an (out, in) weight."""
    torch.manual_seed(0)
    GPT2LMHeadModel(
        GPT2Config(vocab_size=64, n_embd=64, n_layer=2, n_head=4, n_positions=32)
    ).save_pretrained(tmp_path)
    x = tokens()
    base = prepare_model_for_kbit_training(
        AutoModelForCausalLM.from_pretrained(
            tmp_path, quantization_config=_quant("nf4"), device_map="cpu"
        )
    )
    model = get_peft_model(  # every Linear4bit: see test_input_gradient_survives_an_eval_forward
        base, SOrthConfig(target_modules=["c_attn", "c_proj", "c_fc"], block_size=8, side="both")
    )
    assert isinstance(model.base_model.model.transformer.h[0].attn.c_attn, Linear4bit)
    before = logits(model, x)
    train(model)
    after = logits(model, x)
    assert rel(after, before) > 1e-3
    assert rel(logits(model.merge_and_unload(), x), after) < 0.5


# ------------------------------------------------------------ other quantized layer types
def _fake(module: str, name: str, base: type[nn.Module] = nn.Linear) -> nn.Module:
    cls = type(name, (base,), {})
    cls.__module__ = module
    return cls(16, 16) if base is nn.Linear else cls()


class _Int8Weight(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("weight", torch.zeros(16, 16, dtype=torch.int8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@pytest.mark.parametrize(
    ("layer", "says"),
    [
        (_fake("hqq.core.quantize", "HQQLinear", _Int8Weight), "HQQ"),
        (_fake("optimum.quanto.nn.qlinear", "QLinear"), "quanto"),
        (_fake("auto_gptq.nn_modules.qlinear.qlinear_cuda", "QuantLinear", _Int8Weight), "GPTQ"),
        (_fake("awq.modules.linear.gemm", "WQLinear_GEMM", _Int8Weight), "AWQ"),
        (_fake("transformers.integrations.finegrained_fp8", "FP8Linear"), "transformers"),
        (_Int8Weight(), "torch.int8"),
    ],
    ids=["hqq", "quanto", "gptq", "awq", "fp8", "int8-weight"],
)
def test_other_quantized_layers_raise(layer: nn.Module, says: str) -> None:
    model = _Wrap(layer)
    with pytest.raises(UnsupportedLayerError) as err:
        get_peft_model(model, SOrthConfig(target_modules=["lin"], block_size=4))
    message = str(err.value)
    assert "'lin'" in message
    assert type(layer).__name__ in message
    assert says in message
    assert "bitsandbytes Linear4bit" in message
    assert "Linear8bitLt" in message
    assert type(model.lin) is type(layer)  # the model is untouched


def test_torchao_style_weight_subclass_raises() -> None:
    class AffineQuantizedTensor(torch.Tensor):
        pass

    AffineQuantizedTensor.__module__ = "torchao.dtypes.affine_quantized_tensor"
    lin = nn.Linear(16, 16)
    lin.weight = nn.Parameter(lin.weight.data.as_subclass(AffineQuantizedTensor), False)
    assert "torchao" in unsupported_reason(lin)
    with pytest.raises(UnsupportedLayerError, match="torchao"):
        get_peft_model(_Wrap(lin), SOrthConfig(target_modules=["lin"], block_size=4))


def test_bnb_embedding_and_plain_layers() -> None:
    emb = bnb.nn.Embedding4bit(32, 16)
    assert "bitsandbytes" in unsupported_reason(emb)
    assert unsupported_reason(nn.Linear(4, 4)) is None
    assert unsupported_reason(nn.Embedding(4, 4)) is None


def test_sorth_works_without_bitsandbytes() -> None:
    code = (
        "import sys; sys.modules['bitsandbytes'] = None\n"
        "import torch; from peft import get_peft_model; from sorth import SOrthConfig\n"
        "m = torch.nn.Sequential(torch.nn.Linear(8, 8))\n"
        "p = get_peft_model(m, SOrthConfig(target_modules=['0'], block_size=4))\n"
        "p(torch.randn(2, 8)).sum().backward(); p.merge_and_unload()\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok"


# ------------------------------------------------------------------- recipe and sorth merge
def test_finetune_recipe_load_in_4bit(tiny_llama_dir: Path, instruction_file: Path, tmp_path):
    from recipes.finetune.train import main

    out = tmp_path / "run"
    result = main(
        [
            "--model", str(tiny_llama_dir), "--task", "causal_lm",
            "--train_file", str(instruction_file), "--prompt_column", "prompt",
            "--response_column", "response", "--method", "gsoft", "--block_size", "8",
            "--batch_size", "4", "--lr", "1e-2", "--max_steps", "4", "--eval_steps", "2",
            "--load_in_4bit", "--output_dir", str(out), "--no-progress",
        ]
    )  # fmt: skip
    assert result["config"]["load_in_4bit"]
    assert result["history"][-1]["loss"] < result["history"][0]["loss"]
    base = AutoModelForCausalLM.from_pretrained(
        tiny_llama_dir, quantization_config=_quant("nf4"), device_map="cpu"
    )
    model = PeftModel.from_pretrained(base, out / "adapter")
    assert isinstance(model.base_model.model.model.layers[0].self_attn.q_proj, Linear4bit)


def test_sorth_merge_cli_on_quantized_bases(llama_dir: Path, tmp_path: Path) -> None:
    """`sorth merge` folds an adapter trained on a 4-bit base into the full-precision model it
    was quantized from; a quantized checkpoint as --base gets a one-line reason."""
    from sorth.cli import CLIError, merge_adapter

    base = load(llama_dir, "nf4")
    base.save_pretrained(tmp_path / "q4")
    model = get_peft_model(base, SOrthConfig(target_modules=LLAMA_TARGETS, block_size=8))
    train(model)
    model.save_pretrained(tmp_path / "adapter")
    out = merge_adapter(llama_dir, tmp_path / "adapter", tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(out)
    full = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(llama_dir), tmp_path / "adapter"
    )
    torch.testing.assert_close(
        logits(merged.eval(), tokens()), logits(full.eval(), tokens()), **F32
    )
    with pytest.raises(CLIError, match=r"bitsandbytes quantized checkpoint.*full-precision"):
        merge_adapter(tmp_path / "q4", tmp_path / "adapter", tmp_path / "merged-q4")


def test_quantized_guide_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import re

    page = Path(__file__).resolve().parents[2] / "docs" / "guides" / "quantized.md"
    code = re.search(r"```python\n(.*?)```", page.read_text(), re.S).group(1)
    monkeypatch.chdir(tmp_path)
    scope: dict = {"__name__": "docs"}
    exec(compile(code, str(page), "exec"), scope)
    layer = scope["merged"].model.layers[0].self_attn.q_proj
    assert type(layer).__name__ == "Linear4bit"
