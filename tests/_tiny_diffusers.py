"""Tiny random diffusers models and pipelines, built offline from configs (shared by the adapter tests)."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def tiny_unet(in_ch=3, out_ch=None, size=8, seed=0, cond_dim=None):
    from diffusers import UNet2DConditionModel, UNet2DModel

    torch.manual_seed(seed)
    if cond_dim is None:
        m = UNet2DModel(sample_size=size, in_channels=in_ch, out_channels=out_ch or in_ch, layers_per_block=1,
                        block_out_channels=(8, 16), norm_num_groups=4,
                        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    else:
        m = UNet2DConditionModel(sample_size=size, in_channels=in_ch, out_channels=out_ch or in_ch,
                                 layers_per_block=1, block_out_channels=(8, 16), norm_num_groups=4,
                                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                 cross_attention_dim=cond_dim, attention_head_dim=4)
    return m.eval()


def tiny_vq():
    from diffusers import VQModel

    torch.manual_seed(1)
    return VQModel(in_channels=3, out_channels=3, latent_channels=3, block_out_channels=(8, 16), norm_num_groups=4,
                   down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                   up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), num_vq_embeddings=16,
                   layers_per_block=1).eval()


def tiny_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(2)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                         norm_num_groups=4, down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                         up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), layers_per_block=1).eval()


def tiny_dit(learned_sigma=True):
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(3)
    return DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4,
                                 out_channels=8 if learned_sigma else 4, num_layers=1, sample_size=8,
                                 patch_size=2, num_embeds_ada_norm=1000).eval()


def tiny_clip(tmpdir: Path):
    """A tiny CLIP text encoder and a byte-level BPE tokenizer written to ``tmpdir`` (no downloads)."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    chars = sorted(ByteLevel.alphabet())  # the 256 byte-level symbols: every text tokenizes, no merges needed
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tmpdir = Path(tmpdir)
    (tmpdir / "vocab.json").write_text(json.dumps(vocab))
    (tmpdir / "merges.txt").write_text("#version: 0.2\n")
    (tmpdir / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 16}))
    tok = CLIPTokenizer.from_pretrained(str(tmpdir))
    torch.manual_seed(4)
    enc = CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32,
                                       num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=16,
                                       projection_dim=16, eos_token_id=vocab["<|endoftext|>"],
                                       bos_token_id=vocab["<|startoftext|>"], pad_token_id=vocab["<|endoftext|>"]))
    return tok, enc.eval()
