"""Tutorial: DreamBooth with a Double GSOFT adapter on a Stable Diffusion UNet.

With no ``--model`` it runs offline in seconds on a tiny Stable Diffusion pipeline built from
configs (UNet 1M parameters, 32×32 images; every attention projection has width 32 or 64) and a
synthetic "subject" (a coloured square); with ``--model`` it uses a local diffusers pipeline
folder and the images in ``--instance-dir``::

    python docs/tutorials/dreambooth.py --out runs/db-tiny
    python docs/tutorials/dreambooth.py --model ./stable-diffusion-2-base \\
        --instance-dir ./dog --resolution 512 --nblocks 32 --steps 400

The paper's setting (§6.2): Double GSOFT ``z = s ⊙ (A_out · W · A_in · x)`` on ``to_q``, ``to_k``,
``to_v`` and ``to_out.0`` of every UNet attention block, ``r = nblocks`` blocks per side, with
prior preservation (the class prompt keeps the model's idea of a generic dog).
"""

from __future__ import annotations

import argparse
import string
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from peft import PeftModel, get_peft_model
from PIL import Image
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

import sorth

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def tiny_pipeline(folder: Path) -> Path:
    """Save a tiny, randomly initialised Stable Diffusion pipeline (letter-level tokenizer)."""
    torch.manual_seed(0)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        vocab.update({c + suffix: len(vocab) for c in string.ascii_lowercase})
    tok = CLIPTokenizer(
        vocab=vocab, merges=[], model_max_length=32, unk_token="<|endoftext|>",
        bos_token="<|startoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>",
    )  # fmt: skip
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=32, bos_token_id=0, eos_token_id=1,
        pad_token_id=1, projection_dim=32,
    ))  # fmt: skip
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), norm_num_groups=8, cross_attention_dim=32,
        attention_head_dim=8, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    )  # fmt: skip
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
        norm_num_groups=4, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, sample_size=32,
    )  # fmt: skip
    noise = DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
        beta_schedule="scaled_linear", clip_sample=False, steps_offset=1,
    )  # fmt: skip
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tok, unet=unet,
        scheduler=DDIMScheduler.from_config(noise.config), safety_checker=None,
        feature_extractor=None, image_encoder=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.save_pretrained(folder)
    return folder


def instance_images(args: argparse.Namespace, size: int) -> torch.Tensor:
    """``(N, 3, size, size)`` in ``[-1, 1]``: ``--instance-dir`` images, or red squares."""
    if args.instance_dir:
        files = sorted(p for p in Path(args.instance_dir).iterdir() if p.suffix.lower() in
                       {".png", ".jpg", ".jpeg", ".webp"})  # fmt: skip
        imgs = [np.asarray(Image.open(f).convert("RGB").resize((size, size))) for f in files]
        x = torch.tensor(np.stack(imgs), dtype=torch.float32).permute(0, 3, 1, 2)
        return x / 127.5 - 1
    x = -torch.ones(3, 3, size, size)
    red = torch.tensor([1.0, -1.0, -1.0])[:, None, None]
    for i in range(3):  # the "subject": a red square at three positions
        a, w = 4 * (i + 1), size // 2
        x[i, :, a : a + w, a : a + w] = red
    return x


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="local Stable Diffusion pipeline folder (default: tiny)")
    parser.add_argument("--instance-dir", help="images of the subject (default: synthetic)")
    parser.add_argument("--out", default="runs/dreambooth-tutorial", help="output folder")
    parser.add_argument("--instance-prompt", default="a photo of sks dog")
    parser.add_argument("--class-prompt", default="a photo of dog")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--nblocks", type=int, default=4, help="GSOFT r (blocks per side)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--prior-weight", type=float, default=1.0)
    parser.add_argument("--inference-steps", type=int, default=4)
    args = parser.parse_args(argv)
    out = Path(args.out)

    # 1. The frozen pipeline, loaded from a folder as a real one would be.
    base = Path(args.model) if args.model else tiny_pipeline(out / "base")
    pipe = StableDiffusionPipeline.from_pretrained(base, safety_checker=None)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    vae, text_encoder, tok = pipe.vae, pipe.text_encoder, pipe.tokenizer
    for module in (vae, text_encoder, pipe.unet):
        module.requires_grad_(False)

    # 2. Double GSOFT on the UNet attention projections: r blocks per side, learnable scale.
    config = sorth.SOrthConfig(target_modules=TARGETS, nblocks=args.nblocks, side="both")
    unet = get_peft_model(pipe.unet, config)
    trainable = sum(p.numel() for p in unet.parameters() if p.requires_grad)
    print(f"trainable parameters: {trainable:,} of {sum(p.numel() for p in unet.parameters()):,}")

    # 3. Instance images + class ("prior") images generated by the frozen model itself.
    instance = instance_images(args, args.resolution)
    with torch.no_grad():
        prior = pipe(
            [args.class_prompt] * len(instance), num_inference_steps=args.inference_steps,
            height=args.resolution, width=args.resolution, output_type="pt",
            generator=torch.Generator().manual_seed(0),
        ).images * 2 - 1  # fmt: skip
        ids = tok(
            [args.instance_prompt, args.class_prompt], padding="max_length", truncation=True,
            max_length=tok.model_max_length, return_tensors="pt",
        ).input_ids  # fmt: skip
        emb_instance, emb_class = text_encoder(ids)[0].chunk(2)

    # 4. DreamBooth: denoising loss on the instance images + prior-preservation loss.
    opt = torch.optim.AdamW([p for p in unet.parameters() if p.requires_grad], lr=args.lr)
    gen = torch.Generator().manual_seed(0)
    losses = []
    unet.train()
    for _ in range(args.steps):
        pixels = torch.cat([instance, prior])  # (2N, 3, H, W)
        with torch.no_grad():
            latents = vae.encode(pixels).latent_dist.sample(gen) * vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=gen)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(latents),),
                          generator=gen)  # fmt: skip
        noisy = noise_scheduler.add_noise(latents, noise, t)
        n = len(instance)
        cond = torch.cat([emb_instance.expand(n, -1, -1), emb_class.expand(n, -1, -1)])
        pred = unet(noisy, t, encoder_hidden_states=cond).sample
        loss_instance = F.mse_loss(pred[:n], noise[:n])
        loss_prior = F.mse_loss(pred[n:], noise[n:])
        loss = loss_instance + args.prior_weight * loss_prior
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f} over {len(losses)} steps")

    # 5. Save the UNet adapter, reload it onto a fresh UNet, merge it, and sample.
    unet.save_pretrained(out / "adapter" / "unet")
    fresh = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    reloaded = PeftModel.from_pretrained(fresh, out / "adapter" / "unet").eval()
    unet.eval()
    probe = (noisy[:1], t[:1], cond[:1])
    with torch.no_grad():
        reference = unet(probe[0], probe[1], encoder_hidden_states=probe[2]).sample
        merged = reloaded.merge_and_unload()  # W' = diag(s) · A_out · W · A_in
        merge_diff = (merged(probe[0], probe[1], encoder_hidden_states=probe[2]).sample
                      - reference).abs().max().item()  # fmt: skip
    pipe.unet = merged
    image = pipe(
        args.instance_prompt, num_inference_steps=args.inference_steps, height=args.resolution,
        width=args.resolution, generator=torch.Generator().manual_seed(0),
    ).images[0]  # fmt: skip
    image.save(out / "sample.png")
    print(f"merged UNet vs adapter: max |Δ noise prediction| = {merge_diff:.1e}")
    print(f"adapter in {out / 'adapter'}, sample in {out / 'sample.png'}")
    return {"loss_first": losses[0], "loss_last": losses[-1], "trainable": trainable,
            "merge_diff": merge_diff, "image_size": image.size[0]}  # fmt: skip


if __name__ == "__main__":
    main()
