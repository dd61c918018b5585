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


def tiny_clip(tmpdir: Path, with_projection: bool = False, seed: int = 4):
    """A tiny CLIP text encoder (``CLIPTextModelWithProjection`` for SD3) and a byte-level BPE tokenizer written to
    ``tmpdir`` (no downloads)."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    chars = sorted(ByteLevel.alphabet())  # the 256 byte-level symbols: every text tokenizes, no merges needed
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tmpdir = Path(tmpdir)
    tmpdir.mkdir(parents=True, exist_ok=True)
    (tmpdir / "vocab.json").write_text(json.dumps(vocab))
    (tmpdir / "merges.txt").write_text("#version: 0.2\n")
    (tmpdir / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 16}))
    tok = CLIPTokenizer.from_pretrained(str(tmpdir))
    torch.manual_seed(seed)
    enc = (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(CLIPTextConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32,
                                       num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=16,
                                       projection_dim=16, eos_token_id=vocab["<|endoftext|>"],
                                       bos_token_id=vocab["<|startoftext|>"], pad_token_id=vocab["<|endoftext|>"]))
    return tok, enc.eval()


def tiny_sd3(tmpdir: Path, scheduler=None):
    """A tiny StableDiffusion3Pipeline: SD3 transformer (4 latent channels, 8x8 latents), two tiny CLIP encoders
    with projection, no T5 (diffusers then uses zeros for its embeddings), the tiny VAE with shift_factor 0."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    tok, enc = tiny_clip(Path(tmpdir) / "c1", with_projection=True, seed=4)
    tok2, enc2 = tiny_clip(Path(tmpdir) / "c2", with_projection=True, seed=5)
    torch.manual_seed(6)
    tr = SD3Transformer2DModel(sample_size=8, patch_size=1, in_channels=4, num_layers=1, attention_head_dim=8,
                               num_attention_heads=4, joint_attention_dim=32, caption_projection_dim=32,
                               pooled_projection_dim=32, out_channels=4, pos_embed_max_size=16).eval()
    torch.manual_seed(2)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), norm_num_groups=4,
                        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), layers_per_block=1,
                        shift_factor=0.0).eval()
    pipe = StableDiffusion3Pipeline(transformer=tr, scheduler=scheduler or FlowMatchEulerDiscreteScheduler(shift=3.0),
                                    vae=vae, text_encoder=enc, tokenizer=tok, text_encoder_2=enc2, tokenizer_2=tok2,
                                    text_encoder_3=None, tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_flux(scheduler=None):
    """A tiny FluxPipeline (guidance-embedding transformer, 4 latent channels packed 2x2, no text encoders: call it
    with prompt_embeds / pooled_prompt_embeds) and Flux's dynamic-shift FlowMatchEuler scheduler config."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(7)
    tr = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
                                num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=16,
                                guidance_embeds=True, axes_dims_rope=(4, 6, 6)).eval()
    torch.manual_seed(2)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), norm_num_groups=4,
                        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), layers_per_block=1,
                        shift_factor=0.0).eval()
    sched = scheduler or FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                                         max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    pipe = FluxPipeline(scheduler=sched, vae=vae, text_encoder=None, tokenizer=None, text_encoder_2=None,
                        tokenizer_2=None, transformer=tr)
    pipe.set_progress_bar_config(disable=True)
    return pipe
