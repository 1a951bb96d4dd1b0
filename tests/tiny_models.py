"""Tiny models for the tests (and bench/gpu.py's dry run): a randomly initialised Zero123++ of the
real architecture and folder layout, small enough to run on a CPU in seconds."""

from __future__ import annotations

from pathlib import Path


def save_tiny(path: str | Path, seed: int = 0, view_size: int = 16) -> Path:
    """Save a tiny, randomly initialised Zero123++ of the same architecture and folder layout
    (UNet2DConditionModel, AutoencoderKL, CLIPTextModel, CLIPVisionModelWithProjection, a
    CLIP tokenizer with a 56-token vocabulary, the scheduler and preprocessor configs, the
    marker) as safetensors; views are ``view_size`` px (the VAE downsamples by 2). It loads
    through the real loading code as ``model=str(path)``."""
    from viewforge.engine.mvgen.zero123pp import GRID_COLS, save_random

    dim = 32
    unet = dict(sample_size=GRID_COLS * view_size // 2, in_channels=4, out_channels=4, layers_per_block=1,
                block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=dim, attention_head_dim=(2, 4),
                use_linear_projection=True, norm_num_groups=8)
    vae = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
               up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
               latent_channels=4, norm_num_groups=4, sample_size=view_size)
    text = dict(vocab_size=56, hidden_size=dim, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=77, projection_dim=dim, pad_token_id=0, bos_token_id=54, eos_token_id=55,
                hidden_act="gelu")
    vision = dict(hidden_size=dim, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                  patch_size=8, projection_dim=dim, hidden_act="gelu")
    return save_random(Path(path), seed, view_size, unet, vae, text, vision, clip_size=32, vae_size=view_size)
