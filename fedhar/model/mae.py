"""Masked Autoencoder (MAE) backbone on harmonised HAR windows.

Input: windows x of shape (N, 6, 128) float32, channels first, 50 Hz, z-normalised per
channel (``fedhar.data.schema.WindowSet.x``).

Tokens. Each window is cut into non-overlapping time patches of 16 samples; one patch
holds all 6 channels, so a window gives 128 / 16 = 8 tokens of 6 * 16 = 96 values
(flattened channel-major: values 0-15 are channel 0, 16-31 channel 1, ...). Attention
cost grows with the token count: channel-independent patching (one token per channel
and patch) would give 48 tokens, and 48 tokens made a full fine-tuning step at batch 64
about 4.5x slower on the 2-core development CPU (214 ms against 48 ms per step, see
results/bench), so we mix the channels inside a token.

Encoder (what fine-tuning keeps). Linear patch embedding 96 -> 192, fixed 1-D sin-cos
positional encoding (as in facebookresearch/mae; a buffer, not trained), 6 pre-LN
Transformer blocks (6 heads, feed-forward 576, GELU) and a final LayerNorm. Attention and
feed-forward projections are separate named ``nn.Linear`` layers ``q``, ``k``, ``v``,
``o``, ``w1``, ``w2`` so that peft ``target_modules`` can name them; attention uses
``F.scaled_dot_product_attention``. There is no [CLS] token: a classifier mean-pools the
encoder tokens (simplest, and the MAE paper reports mean-pooling works as well).

Exact encoder parameter count with the default config: 2,244,672
    patch embedding   96*192 + 192                                =    18,624
    per block         2 LayerNorms 2*384, q/k/v/o 4*(192*192+192),
                      w1 192*576+576, w2 576*192+192              =   370,944  (x 6)
    final LayerNorm   384                                         =       384
(``tests/test_model_mae.py`` checks it.)

Decoder (pretraining only). Linear 192 -> 128, a learnable mask token, sin-cos
positional encoding, 2 blocks (4 heads, feed-forward 384), LayerNorm and a linear
prediction of the 96 values of every patch.

Pretraining objective. 75% of the patches of every window are masked with an independent
random shuffle per sample (``random_masking``, as ``models_mae.py`` of
facebookresearch/mae): the encoder sees only the 2 kept patches, the decoder predicts all
8, and the loss is the MSE over the masked patches only. ``norm_pix_loss`` (off by
default) normalises each target patch to zero mean and unit variance first.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class MAEConfig:
    """Shape of the MAE; stored as checkpoint metadata so a checkpoint rebuilds itself."""

    channels: int = 6
    window: int = 128
    patch: int = 16
    dim: int = 192
    depth: int = 6
    heads: int = 6
    ffn: int = 576
    decoder_dim: int = 128
    decoder_depth: int = 2
    decoder_heads: int = 4
    decoder_ffn: int = 384
    mask_ratio: float = 0.75
    norm_pix_loss: bool = False
    dropout: float = 0.0

    def __post_init__(self):
        if self.window % self.patch:
            raise ValueError(f"window {self.window} is not a multiple of patch {self.patch}")
        if self.dim % self.heads or self.decoder_dim % self.decoder_heads:
            raise ValueError("model widths must be multiples of their head counts")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")

    @property
    def n_patches(self) -> int:
        return self.window // self.patch

    @property
    def patch_values(self) -> int:
        return self.channels * self.patch

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> MAEConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown MAE config keys: {sorted(unknown)}")
        return cls(**d)


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """(N, C, L) -> (N, L // patch, C * patch), channel-major inside a patch."""
    n, c, length = x.shape
    return x.reshape(n, c, length // patch, patch).permute(0, 2, 1, 3).reshape(n, length // patch, c * patch)


def unpatchify(patches: torch.Tensor, channels: int) -> torch.Tensor:
    """Inverse of ``patchify``: (N, P, C * patch) -> (N, C, P * patch)."""
    n, p, values = patches.shape
    patch = values // channels
    return patches.reshape(n, p, channels, patch).permute(0, 2, 1, 3).reshape(n, channels, p * patch)


def sincos_position_encoding(n_positions: int, dim: int) -> torch.Tensor:
    """Fixed 1-D sin-cos encoding (n_positions, dim), as get_1d_sincos_pos_embed in MAE."""
    if dim % 2:
        raise ValueError(f"sin-cos encoding needs an even width, got {dim}")
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    angles = np.outer(np.arange(n_positions, dtype=np.float64), omega)
    return torch.from_numpy(np.concatenate([np.sin(angles), np.cos(angles)], axis=1)).float()


class Attention(nn.Module):
    """Multi-head self-attention with separate q, k, v, o projections (peft can target each)."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape

        def split(z):
            return z.reshape(n, t, self.heads, d // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(
            split(self.q(x)), split(self.k(x)), split(self.v(x)),
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.o(out.transpose(1, 2).reshape(n, t, d))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden)
        self.w2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(self.drop(F.gelu(self.w1(x))))


class Block(nn.Module):
    """Pre-LN Transformer block: x + attn(LN(x)), then x + ffn(LN(x))."""

    def __init__(self, dim: int, heads: int, ffn: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, ffn, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x)))
        return x + self.drop(self.ffn(self.norm2(x)))


def _init_weights(module: nn.Module) -> None:
    # MAE's initialisation: xavier-uniform linears with zero bias, unit LayerNorms.
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class Encoder(nn.Module):
    """Patch embedding + positional encoding + Transformer blocks + LayerNorm.

    ``forward(x)`` takes windows (N, C, L) and returns tokens (N, P, dim). With
    ``ids_keep`` (N, K) only those patches are encoded (MAE pretraining).
    """

    pos: torch.Tensor  # buffer (P, dim); declared so type checkers know it is a tensor

    def __init__(self, config: MAEConfig):
        super().__init__()
        self.config = config
        self.patch_embed = nn.Linear(config.patch_values, config.dim)
        # Not persistent: rebuilt from the config, so it never enters checkpoints or updates.
        self.register_buffer("pos", sincos_position_encoding(config.n_patches, config.dim), persistent=False)
        self.blocks = nn.ModuleList(
            Block(config.dim, config.heads, config.ffn, config.dropout) for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(config.dim)
        _init_weights(self)

    def forward(self, x: torch.Tensor, ids_keep: torch.Tensor | None = None) -> torch.Tensor:
        cfg = self.config
        if x.ndim != 3 or x.shape[1] != cfg.channels or x.shape[2] != cfg.window:
            raise ValueError(f"expected windows (N, {cfg.channels}, {cfg.window}), got {tuple(x.shape)}")
        tokens = self.patch_embed(patchify(x, cfg.patch)) + self.pos
        if ids_keep is not None:
            tokens = torch.gather(tokens, 1, ids_keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)


def random_masking(n: int, n_patches: int, mask_ratio: float, noise: torch.Tensor | None = None,
                   device=None):
    """Per-sample random shuffle (facebookresearch/mae ``random_masking``).

    Returns ids_keep (N, K) of the kept patches, mask (N, P) with 1 = masked, 0 = kept,
    and ids_restore (N, P) that undoes the shuffle. ``noise`` (N, P) fixes the draw.
    """
    keep = int(n_patches * (1 - mask_ratio))
    if noise is None:
        noise = torch.rand(n, n_patches, device=device)
    ids_shuffle = torch.argsort(noise, dim=1)  # ascending: smallest noise is kept
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :keep]
    mask = torch.ones(n, n_patches, device=noise.device)
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return ids_keep, mask, ids_restore


class MAEOutput(NamedTuple):
    loss: torch.Tensor  # scalar, MSE over masked patches
    pred: torch.Tensor  # (N, P, C * patch) predicted patches
    mask: torch.Tensor  # (N, P), 1 = masked


class MaskedAutoencoder(nn.Module):
    """Encoder + light decoder for masked-patch reconstruction pretraining."""

    decoder_pos: torch.Tensor  # buffer (P, decoder_dim)

    def __init__(self, config: MAEConfig | None = None):
        super().__init__()
        self.config = config = config or MAEConfig()
        self.encoder = Encoder(config)
        self.decoder_embed = nn.Linear(config.dim, config.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.decoder_dim))
        self.register_buffer(
            "decoder_pos", sincos_position_encoding(config.n_patches, config.decoder_dim), persistent=False
        )
        self.decoder_blocks = nn.ModuleList(
            Block(config.decoder_dim, config.decoder_heads, config.decoder_ffn, config.dropout)
            for _ in range(config.decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(config.decoder_dim)
        self.decoder_pred = nn.Linear(config.decoder_dim, config.patch_values)
        for part in (self.decoder_embed, self.decoder_blocks, self.decoder_norm, self.decoder_pred):
            _init_weights(part)
        nn.init.normal_(self.mask_token, std=0.02)

    def decode(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Kept-patch latents (N, K, dim) -> predictions for all patches (N, P, C * patch)."""
        z = self.decoder_embed(latent)
        n, keep, width = z.shape
        masked = self.mask_token.expand(n, ids_restore.shape[1] - keep, width)
        z = torch.cat([z, masked], dim=1)
        z = torch.gather(z, 1, ids_restore.unsqueeze(-1).expand(-1, -1, width)) + self.decoder_pos
        for block in self.decoder_blocks:
            z = block(z)
        return self.decoder_pred(self.decoder_norm(z))

    def reconstruction_loss(self, x: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error over the masked patches only (mask 1 = masked)."""
        target = patchify(x, self.config.patch)
        if self.config.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        per_patch = ((pred - target) ** 2).mean(dim=-1)
        return (per_patch * mask).sum() / mask.sum()

    def forward(self, x: torch.Tensor, mask_ratio: float | None = None,
                noise: torch.Tensor | None = None) -> MAEOutput:
        ratio = self.config.mask_ratio if mask_ratio is None else mask_ratio
        ids_keep, mask, ids_restore = random_masking(
            x.shape[0], self.config.n_patches, ratio, noise=noise, device=x.device
        )
        latent = self.encoder(x, ids_keep=ids_keep)
        pred = self.decode(latent, ids_restore)
        return MAEOutput(self.reconstruction_loss(x, pred, mask), pred, mask)


def count_encoder_parameters(config: MAEConfig) -> int:
    """Closed-form encoder parameter count (matches ``Encoder(config)``)."""
    d, f = config.dim, config.ffn
    block = 2 * 2 * d + 4 * (d * d + d) + (d * f + f) + (f * d + d)
    return config.patch_values * d + d + config.depth * block + 2 * d

