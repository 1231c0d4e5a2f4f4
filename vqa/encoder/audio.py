"""Audio branch: AST over the log-mel spectrogram.

Notation: B batch, M audio patches = Fm x Ft (frequency rows x time columns, frequency-major like AST),
D width. Tokens are [CLS, distillation, patches] so an ASTModel checkpoint loads unchanged.
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import EncoderConfig, MediaConfig
from .layers import Block, init_weights


def audio_grid(media: MediaConfig, enc: EncoderConfig) -> tuple[int, int]:
    """(Fm, Ft): patches along frequency and along time (AST's `get_shape`)."""
    p, s = enc.audio_patch, enc.audio_stride
    return (media.n_mels - p) // s + 1, (enc.audio_frames - p) // s + 1


def audio_problems(media: MediaConfig, enc: EncoderConfig) -> list[str]:
    """What stops an audio branch from being built for these configs (empty if nothing)."""
    problems = []
    if enc.audio_stride < 1:
        problems.append(f"audio_stride must be >= 1, got {enc.audio_stride}")
    if media.n_mels < enc.audio_patch:
        problems.append(f"n_mels {media.n_mels} is smaller than audio_patch {enc.audio_patch}")
    if enc.audio_frames < enc.audio_patch:
        problems.append(f"audio_frames {enc.audio_frames} is smaller than audio_patch {enc.audio_patch}")
    return problems


class AudioBranch(nn.Module):
    """Log-mel (B, n_mels, F) -> tokens (B, 2+M, D): patches, CLS + distillation tokens, blocks, norm."""

    def __init__(self, media: MediaConfig, enc: EncoderConfig):
        super().__init__()
        problems = audio_problems(media, enc)
        if problems:
            raise ValueError("cannot build the audio branch: " + "; ".join(problems))
        D = enc.width
        self.n_mels = media.n_mels
        self.frames = enc.audio_frames
        self.grid = audio_grid(media, enc)  # (Fm, Ft)
        self.patch_embed = nn.Conv2d(1, D, kernel_size=enc.audio_patch, stride=enc.audio_stride)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, D))
        self.pos_embed = nn.Parameter(torch.zeros(1, 2 + self.grid[0] * self.grid[1], D))
        self.blocks = nn.ModuleList(
            [Block(D, enc.heads, enc.mlp_ratio, enc.dropout, enc.layer_norm_eps) for _ in range(enc.audio_depth)]
        )
        self.norm = nn.LayerNorm(D, eps=enc.layer_norm_eps)

        self.apply(init_weights)
        for p in (self.pos_embed, self.cls_token, self.dist_token):
            nn.init.trunc_normal_(p, std=0.02)

    def embed(self, mel: torch.Tensor) -> torch.Tensor:
        """Log-mel (B, n_mels, F) -> patch tokens with position embeddings (B, 2+M, D)."""
        if mel.ndim != 3 or tuple(mel.shape[1:]) != (self.n_mels, self.frames):
            raise ValueError(f"mel must have shape (B, {self.n_mels}, {self.frames}), got {tuple(mel.shape)}")
        B = mel.shape[0]
        x = self.patch_embed(mel.unsqueeze(1))  # (B, D, Fm, Ft)
        x = x.flatten(2).transpose(1, 2)  # (B, M, D), frequency-major
        cls = self.cls_token.expand(B, -1, -1)
        dist = self.dist_token.expand(B, -1, -1)
        return torch.cat([cls, dist, x], dim=1) + self.pos_embed  # (B, 2+M, D)

    def forward_tokens(self, mel: torch.Tensor) -> torch.Tensor:
        """The branch alone: (B, n_mels, F) -> (B, 2+M, D), final norm applied."""
        x = self.embed(mel)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    forward = forward_tokens
