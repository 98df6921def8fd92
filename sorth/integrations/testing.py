"""Tiny models built from configs, saved as local folders: offline fixtures for tests and docs.

Nothing here downloads anything. Every adapted Linear has a width of 32, 64 or 128 so block sizes
4, 8 and 16 all fit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sorth.integrations._extras import require

__all__ = [
    "WORDS",
    "random_images",
    "tiny_clip",
    "tiny_clip_tokenizer",
    "tiny_dino",
    "tiny_llama",
    "tiny_roberta",
    "tiny_sd_pipeline",
    "tiny_tokenizer",
    "write_jsonl",
]

_WORDS = """a the of and to in is it good bad great awful movie film plot actor love hate fun boring
nice poor best worst ok yes no question answer what why how when who because so very not
sks dog cat photo snow bucket jungle red blue green"""
WORDS: tuple[str, ...] = tuple(_WORDS.split())


def tiny_tokenizer(words: tuple[str, ...] = WORDS) -> Any:
    """A word-level fast tokenizer over ``words`` with ``[PAD] [UNK] <s> </s>`` specials."""
    require("sorth.integrations.testing.tiny_tokenizer", "peft", "transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "<s>", "</s>"]
    vocab = {tok: i for i, tok in enumerate([*specials, *words])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A </s> $B", special_tokens=[("<s>", 2), ("</s>", 3)]
    )
    names = {"pad_token": "[PAD]", "unk_token": "[UNK]", "bos_token": "<s>", "eos_token": "</s>"}
    return PreTrainedTokenizerFast(tokenizer_object=core, **names)


def tiny_llama(folder: str | Path, *, seed: int = 0) -> Path:
    """Save a 2-layer Llama (hidden 64, MLP 128) with :func:`tiny_tokenizer` to ``folder``."""
    require("sorth.integrations.testing.tiny_llama", "peft", "transformers")
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    tok = tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return Path(folder)


def tiny_roberta(folder: str | Path, *, seed: int = 0) -> Path:
    """Save a 2-layer RoBERTa encoder (hidden 64, MLP 128) with :func:`tiny_tokenizer`."""
    require("sorth.integrations.testing.tiny_roberta", "peft", "transformers")
    import torch
    from transformers import RobertaConfig, RobertaModel

    torch.manual_seed(seed)
    tok = tiny_tokenizer()
    config = RobertaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=72, pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, type_vocab_size=1,
    )  # fmt: skip
    RobertaModel(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return Path(folder)


def write_jsonl(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    """Write ``rows`` as JSON lines (test data)."""
    import json

    path = Path(path)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tiny_clip_tokenizer(words: tuple[str, ...] = WORDS, max_length: int = 16) -> Any:
    """A CLIP BPE tokenizer whose merges spell every word of ``words`` as one token."""
    require("sorth.integrations.testing.tiny_clip_tokenizer", "peft", "transformers")
    from transformers import CLIPTokenizer

    letters = "abcdefghijklmnopqrstuvwxyz"
    tokens = ["<|startoftext|>", "<|endoftext|>", *letters, *(c + "</w>" for c in letters)]
    merges: list[tuple[str, str]] = []
    for word in sorted(set(words)):
        left = word[0]
        for i, c in enumerate(word[1:], start=1):
            right = c + "</w>" if i == len(word) - 1 else c
            merges.append((left, right))
            left += right
            tokens.append(left)
        if len(word) == 1:
            continue
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    merges = list(dict.fromkeys(merges))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


def tiny_sd_pipeline(folder: str | Path, *, seed: int = 0) -> Path:
    """Save a ~1M-parameter ``StableDiffusionPipeline`` (32×32 images) to ``folder``.

    UNet blocks (32, 64) with 8 attention modules (32 ``to_q/k/v/out.0`` Linears of width
    32/64), a 2-block VAE (latents 16×16) and a 2-layer CLIP text encoder (hidden 32).
    """
    require("sorth.integrations.testing.tiny_sd_pipeline", "diffusion", "diffusers", "transformers")
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        DDPMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tok = tiny_clip_tokenizer()
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
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
    train_scheduler = DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
        beta_schedule="scaled_linear", clip_sample=False, steps_offset=1,
    )  # fmt: skip
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tok, unet=unet,
        scheduler=DDIMScheduler.from_config(train_scheduler.config), safety_checker=None,
        feature_extractor=None, image_encoder=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.save_pretrained(folder)
    return Path(folder)


def tiny_clip(folder: str | Path, *, image_size: int = 32, seed: int = 0) -> Path:
    """Save a tiny ``CLIPModel`` + image processor + tokenizer (for CLIP-I / CLIP-T tests)."""
    require("sorth.integrations.testing.tiny_clip", "peft", "transformers")
    import torch
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

    torch.manual_seed(seed)
    tok = tiny_clip_tokenizer()
    config = CLIPConfig(
        text_config={"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 2, "num_attention_heads": 4,
                     "max_position_embeddings": 16, "bos_token_id": 0, "eos_token_id": 1,
                     "pad_token_id": 1},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                       "num_attention_heads": 4, "image_size": image_size, "patch_size": 8},
        projection_dim=16,
    )  # fmt: skip
    CLIPModel(config).save_pretrained(folder)
    size = {"shortest_edge": image_size}
    crop = {"height": image_size, "width": image_size}
    CLIPImageProcessorPil(size=size, crop_size=crop).save_pretrained(folder)
    tok.save_pretrained(folder)
    return Path(folder)


def tiny_dino(folder: str | Path, *, image_size: int = 32, seed: int = 0) -> Path:
    """Save a tiny DINO-style ``ViTModel`` (no pooler) + image processor."""
    require("sorth.integrations.testing.tiny_dino", "peft", "transformers")
    import torch
    from transformers import ViTConfig, ViTImageProcessorPil, ViTModel

    torch.manual_seed(seed)
    config = ViTConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        image_size=image_size, patch_size=8,
    )  # fmt: skip
    ViTModel(config, add_pooling_layer=False).save_pretrained(folder)
    ViTImageProcessorPil(size={"height": image_size, "width": image_size}).save_pretrained(folder)
    return Path(folder)


def random_images(folder: str | Path, count: int, *, size: int = 40, seed: int = 0) -> Path:
    """Write ``count`` smooth random RGB PNGs (``size``×``size``) to ``folder``."""
    require("sorth.integrations.testing.random_images", "diffusion", "numpy", "PIL")
    import numpy as np
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        Image.fromarray(small).resize((size, size), Image.BILINEAR).save(folder / f"img{i}.png")
    return folder
