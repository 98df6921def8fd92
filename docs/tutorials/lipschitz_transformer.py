"""Tutorial: a transformer with a certified Lipschitz bound, attacked; JaSMin on an ordinary one.

Part 1 trains a small character-level ``sorth.nn.LipschitzTransformer`` (GS-orthogonal linear
maps, convex residuals, 1/d attention, GeLU/κ) whose certified bound is calibrated to 2, then
attacks the certificate: gradient ascent on pairs of input embeddings never finds
``‖f(x) − f(y)‖ / ‖x − y‖`` above it. Part 2 puts a GSOFT adapter on an ordinary Hugging Face
Llama and trains it with the JaSMin regulariser: per-input local bounds of every softmax
attention block, read by forward hooks. Runs offline on a CPU in seconds::

    python docs/tutorials/lipschitz_transformer.py
    python docs/tutorials/lipschitz_transformer.py --linear spectral --bound 10 --steps 300
"""

from __future__ import annotations

import argparse
import tempfile

import torch
import torch.nn.functional as F

import sorth.nn as snn

TEXT = (
    "Shall I compare thee to a summer's day? Thou art more lovely and more temperate: "
    "Rough winds do shake the darling buds of May, And summer's lease hath all too short a date. "
)


def attack(model: torch.nn.Module, x: torch.Tensor, steps: int) -> float:
    """Largest ``‖f(x + δ) − f(x)‖ / ‖δ‖`` (ℓ2 of the whole sequence) found by Adam on ``x, δ``."""
    x = x.detach().clone().requires_grad_()
    delta = (0.1 * torch.randn_like(x)).requires_grad_()
    opt = torch.optim.Adam([x, delta], lr=0.05)
    best = 0.0
    for _ in range(steps):
        change = model(inputs_embeds=x + delta) - model(inputs_embeds=x)
        ratio = change.flatten(1).norm(dim=1) / delta.flatten(1).norm(dim=1)
        best = max(best, float(ratio.max()))
        opt.zero_grad()
        (-ratio.sum()).backward()
        opt.step()
    return best


def lipschitz_lm(args: argparse.Namespace) -> dict[str, float]:
    """Part 1: train, certify and attack a LipschitzTransformer."""
    torch.manual_seed(0)
    vocab = sorted(set(TEXT))
    ids = torch.tensor([vocab.index(c) for c in TEXT])
    T = 16

    # 1. The model: every linear map GS-orthogonal (all singular values 1, no projection step),
    #    so the bound depends only on the architecture; calibrate_ sets the fixed output scale.
    model = snn.LipschitzTransformer(
        len(vocab), dim=32, depth=2, heads=2, max_seq_len=T, linear=args.linear
    )
    model.calibrate_(args.bound)
    print(f"{sum(p.numel() for p in model.parameters()):,} parameters, certified bound "
          f"{model.lipschitz_bound().value:.4f} before training")  # fmt: skip

    # 2. Train on next-character prediction. Logits of a 2-Lipschitz model are small, so the
    #    loss multiplies them by a temperature; the model (and its bound) is unchanged by it.
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    losses = []
    for _ in range(args.steps):
        start = torch.randint(0, len(ids) - T - 1, (16,))
        window = ids[start[:, None] + torch.arange(T + 1)]
        logits = args.loss_scale * model(window[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), window[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        snn.project_model_(model)  # re-imposes the cap of spectral layers; GS needs none
        losses.append(loss.item())
    print(f"training loss {losses[0]:.3f} -> {losses[-1]:.3f}")

    # 3. The certificate, from the actual weights: which norm, global or local, per layer.
    model.eval()
    cert = model.lipschitz_bound()
    print(f"certified bound {cert.value:.4f} (ℓ2 {cert.l2:.4f}, max-token {cert.max_token:.4f}) "
          f"for T <= {cert.seq_len}; attention bound local: {cert.attention_local}, made global "
          f"by the input clip at radius {cert.input_radius:.3g}")  # fmt: skip
    for name, l2, _, radius in cert.layers:
        print(f"  {name:<20} ℓ2 factor {l2:.4f}, activation radius after {radius:.3g}")

    # 4. Attack it: from real windows and from random points, in float64.
    model = model.double()
    with torch.no_grad():
        real = model.embed(ids[torch.arange(4)[:, None] * T + torch.arange(T)])
    x = torch.cat([real, 3 * torch.randn_like(real)])
    found = attack(model, x, args.attack_steps)
    print(f"attack: largest ratio {found:.4f} = {found / cert.l2:.3f} of the ℓ2 certificate")
    return {"bound": cert.value, "bound_l2": cert.l2, "attack": found,
            "loss_first": losses[0], "loss_last": losses[-1]}  # fmt: skip


def jasmin(args: argparse.Namespace) -> dict[str, float]:
    """Part 2: JaSMin local bounds and regulariser on a sorth-adapted Hugging Face Llama."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    import sorth
    from sorth.integrations.jasmin import AttentionBounds
    from sorth.integrations.testing import tiny_llama

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:  # a tiny Llama (RoPE, grouped queries)
        base = AutoModelForCausalLM.from_pretrained(
            tiny_llama(folder),
            attn_implementation="eager",  # eager returns the probabilities
        )
    config = sorth.SOrthConfig(target_modules=["q_proj", "k_proj"], block_size=8)
    model = get_peft_model(base, config)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    ids = torch.randint(4, 50, (4, 12))
    with AttentionBounds(model) as bounds:  # hooks on every self-attention block
        for step in range(args.jasmin_steps):
            out = model(ids, labels=ids)
            reg = bounds.regularizer()  # batch mean of Σ_layers log(bound)
            if step == 0:
                first = bounds.per_input().detach()  # (batch, layers) local bounds
                print("local bounds per input and attention layer:\n", first)
            opt.zero_grad()
            (out.loss + args.jasmin_weight * reg).backward()
            opt.step()
        last = bounds.per_input().detach()
    print(f"mean local bound {float(first.mean()):.3f} -> {float(last.mean()):.3f} after "
          f"{args.jasmin_steps} steps with the regulariser")  # fmt: skip
    return {"jasmin_first": float(first.mean()), "jasmin_last": float(last.mean())}


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--linear", default="gs", choices=["gs", "spectral"])
    parser.add_argument("--bound", type=float, default=2.0, help="certified bound to calibrate to")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--loss-scale", type=float, default=30.0, help="logit temperature")
    parser.add_argument("--attack-steps", type=int, default=40)
    parser.add_argument("--jasmin-steps", type=int, default=10)
    parser.add_argument("--jasmin-weight", type=float, default=1.0)
    args = parser.parse_args(argv)
    return {**lipschitz_lm(args), **jasmin(args)}


if __name__ == "__main__":
    main()
