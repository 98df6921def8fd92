"""Tutorial: fine-tune a causal LM with a GSOFT adapter, save it, reload it, merge it.

With no ``--model`` it runs offline in seconds on a tiny Llama built from a config (2 layers,
hidden 64) that learns to continue arithmetic sequences of token ids; with ``--model`` it
fine-tunes any local causal LM folder on a few lines of text::

    python docs/tutorials/llm_finetuning.py --out runs/llm-tiny
    python docs/tutorials/llm_finetuning.py --model ./Qwen2.5-0.5B --block-size 32 --steps 100

Then ``sorth inspect runs/llm-tiny/adapter`` describes the adapter and
``sorth merge --base runs/llm-tiny/base --adapter runs/llm-tiny/adapter --out merged`` writes a
plain transformers checkpoint.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from peft import PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

import sorth

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TEXT = [
    "Orthogonal fine-tuning rotates the weights of a pretrained layer.",
    "A GS matrix is two block-diagonal factors and a shuffle between them.",
    "GSOFT needs two factors where a block butterfly needs one plus log two of r.",
]


def tiny_base(folder: Path, vocab: int = 64) -> Path:
    """Save a randomly initialised 2-layer Llama (every projection has width 64 or 128)."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def batches(args: argparse.Namespace, base: Path, vocab: int) -> torch.Tensor:
    """``(steps, batch, length)`` token ids: sequences ``a, a+s, a+2s, ...`` mod ``vocab``."""
    if args.model:
        tok = AutoTokenizer.from_pretrained(base)
        ids = tok(TEXT, return_tensors="pt", padding=True).input_ids  # (3, length)
        return ids.unsqueeze(0).expand(args.steps, -1, -1)
    gen = torch.Generator().manual_seed(0)
    start = torch.randint(0, vocab, (args.steps, 8, 1), generator=gen)
    step = torch.randint(1, 4, (args.steps, 8, 1), generator=gen)
    return (start + step * torch.arange(16)) % vocab  # (steps, 8, 16)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="local causal LM folder (default: a tiny Llama)")
    parser.add_argument("--out", default="runs/llm-tutorial", help="output folder")
    parser.add_argument("--block-size", type=int, default=16, help="GSOFT block size b")
    parser.add_argument("--double", action="store_true", help="Double GSOFT (both sides)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--lr", type=float, default=5e-3)
    args = parser.parse_args(argv)
    out = Path(args.out)

    # 1. A base model on disk (a real one, or the tiny one saved once).
    base = Path(args.model) if args.model else tiny_base(out / "base")
    model = AutoModelForCausalLM.from_pretrained(base)
    vocab = model.config.vocab_size
    data = batches(args, base, vocab)

    # 2. The adapter: Q = Pᵀ L P R on the input features of every projection (GSOFT), or on
    #    both sides (Double GSOFT); b = block size, r = d / b blocks. Only sorth_* is trained.
    config = sorth.SOrthConfig(
        target_modules=TARGETS, block_size=args.block_size, side="both" if args.double else "input"
    )
    model = get_peft_model(model, config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"trainable parameters: {trainable:,} of {sum(p.numel() for p in model.parameters()):,}")

    # 3. A plain training loop.
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    model.train()
    losses = []
    for ids in data:
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f} in {len(losses)} steps")

    # 4. Save the adapter (adapter_config.json + adapter_model.safetensors), reload it onto a
    #    fresh copy of the base (`import sorth` registered the adapter type with PEFT), merge it.
    model.save_pretrained(out / "adapter")
    model.eval()
    probe = data[0]
    with torch.no_grad():
        trained = model(input_ids=probe).logits
        reloaded = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(base), out / "adapter"
        ).eval()
        reload_diff = (reloaded(input_ids=probe).logits - trained).abs().max().item()
        merged = reloaded.merge_and_unload()  # W' = diag(s) · W · A: a plain Llama again
        merge_diff = (merged(input_ids=probe).logits - trained).abs().max().item()
    merged.save_pretrained(out / "merged")
    print(f"reloaded adapter: max |Δlogit| = {reload_diff:.1e}; merged: {merge_diff:.1e}")
    print(f"adapter in {out / 'adapter'}, merged model in {out / 'merged'}")
    return {
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "trainable": trainable,
        "reload_diff": reload_diff,
        "merge_diff": merge_diff,
    }


if __name__ == "__main__":
    main()
