"""Video branch: a ViT on each frame, mixed over time by TimeSformer's divided space-time attention.

Notation: B batch, T frames, N patches per frame, P = 1 + N tokens per frame (its CLS first), K extra
tokens (bottlenecks or the other modality's), D width.

Every frame keeps its own CLS token (ViT layout), so a 2D ViT checkpoint loads unchanged and, with the
temporal parts at zero, the branch is exactly that ViT applied to each frame.
`attention`: "divided" = temporal attention (each token position, CLS included, over the T frames), then spatial
attention (within each frame), then MLP; "joint" = one attention over all T*P tokens; "space" = spatial
only, frames meet nowhere (only the temporal position embedding tells them apart).
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import EncoderConfig, MediaConfig
from .layers import Attention, Block, init_weights


def video_problems(media: MediaConfig, enc: EncoderConfig) -> list[str]:
    """What stops a video branch from being built for these configs (empty if nothing)."""
    if media.size % enc.patch_size:
        return [f"frame size {media.size} is not divisible by patch_size {enc.patch_size}"]
    return []


class TemporalAttention(nn.Module):
    """TimeSformer's temporal step: each token position attends over the T frames.

    The output projection `fc` starts at zero (`VideoBranch.reset_temporal`), so the step starts as identity.
    """

    def __init__(self, dim: int, heads: int, dropout: float, eps: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, heads, dropout)
        self.fc = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, P, D = x.shape
        xt = x.transpose(1, 2).reshape(B * P, T, D)  # (B*P, T, D): one sequence per token position
        y = self.fc(self.attn(self.norm(xt)))
        return x + y.view(B, P, T, D).transpose(1, 2)  # (B, T, P, D)


class VideoBlock(Block):
    """A ViT block over frames (B, T, P, D), preceded by temporal attention when `attention="divided"`.

    Extra tokens (B, K, D) join the spatial attention: with per-frame attention ("divided", "space") they
    are copied into every frame and their outputs averaged back over the frames (TimeSformer's treatment
    of its CLS token); with "joint" they join the one sequence of all frames.
    """

    def __init__(self, enc: EncoderConfig):
        super().__init__(enc.width, enc.heads, enc.mlp_ratio, enc.dropout, enc.layer_norm_eps)
        self.joint = enc.attention == "joint"
        if enc.attention == "divided":
            self.temporal = TemporalAttention(enc.width, enc.heads, enc.dropout, enc.layer_norm_eps)
        else:
            self.temporal = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.temporal(x)
        B, T, P, D = x.shape
        if self.joint:
            return super().forward(x.reshape(B, T * P, D)).view(B, T, P, D)  # via (B, T*P, D)
        return super().forward(x.reshape(B * T, P, D)).view(B, T, P, D)  # via (B*T, P, D)

    def forward_with(self, x: torch.Tensor, extra: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.temporal(x)
        B, T, P, D = x.shape
        K = extra.shape[1]
        if self.joint:
            x, extra = super().forward_with(x.reshape(B, T * P, D), extra)  # (B, T*P, D), (B, K, D)
            return x.view(B, T, P, D), extra
        extra = extra.unsqueeze(1).expand(B, T, K, D).reshape(B * T, K, D)  # (B*T, K, D): a copy per frame
        x, extra = super().forward_with(x.reshape(B * T, P, D), extra)  # (B*T, P, D), (B*T, K, D)
        return x.view(B, T, P, D), extra.view(B, T, K, D).mean(dim=1)  # (B, T, P, D), (B, K, D)


class ConvStem(nn.Module):
    """Frames (B, 3, S, S) -> (B, D, S/p, S/p) through log2(p) stride-2 3x3 convolutions (channels doubling
    from 32, capped at D) and a 1x1 projection to D: a drop-in for the patch projection."""

    def __init__(self, width: int, patch_size: int):
        super().__init__()
        layers: list[nn.Module] = []
        c_in, c_out = 3, 32
        for _ in range(patch_size.bit_length() - 1):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.GELU()]
            c_in, c_out = c_out, min(2 * c_out, width)
        layers.append(nn.Conv2d(c_in, width, 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class VideoBranch(nn.Module):
    """Frames (B, T, 3, S, S) -> tokens (B, T, 1+N, D): per-frame patches, position embeddings, blocks, norm."""

    def __init__(self, media: MediaConfig, enc: EncoderConfig):
        super().__init__()
        problems = video_problems(media, enc)
        if problems:
            raise ValueError("cannot build the video branch: " + "; ".join(problems))
        D = enc.width
        self.num_frames = media.num_frames
        self.size = media.size
        self.grid = (media.size // enc.patch_size, media.size // enc.patch_size)  # (h, w), N = h*w
        num_patches = self.grid[0] * self.grid[1]
        if enc.patch_stem == "conv":
            self.patch_embed: nn.Module = ConvStem(D, enc.patch_size)
        else:
            self.patch_embed = nn.Conv2d(3, D, kernel_size=enc.patch_size, stride=enc.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + num_patches, D))  # spatial, CLS first
        self.time_embed = nn.Parameter(torch.zeros(1, media.num_frames, D))
        self.blocks = nn.ModuleList([VideoBlock(enc) for _ in range(enc.video_depth)])
        self.norm = nn.LayerNorm(D, eps=enc.layer_norm_eps)

        self.apply(init_weights)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.reset_temporal()

    @torch.no_grad()
    def reset_temporal(self) -> None:
        """Zero what mixes frames or tells them apart, so the branch is the image ViT on each frame."""
        self.time_embed.zero_()
        for block in self.blocks:
            if isinstance(block.temporal, TemporalAttention):
                block.temporal.fc.weight.zero_()
                block.temporal.fc.bias.zero_()

    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames (B, T, 3, S, S) -> patch tokens with position embeddings (B, T, 1+N, D)."""
        expected = (self.num_frames, 3, self.size, self.size)
        if frames.ndim != 5 or tuple(frames.shape[1:]) != expected:
            raise ValueError(f"frames must have shape (B, {', '.join(map(str, expected))}), got {tuple(frames.shape)}")
        B, T = frames.shape[:2]
        x = self.patch_embed(frames.flatten(0, 1))  # (B*T, D, h, w)
        x = x.flatten(2).transpose(1, 2)  # (B*T, N, D)
        x = torch.cat([self.cls_token.expand(B * T, -1, -1), x], dim=1) + self.pos_embed  # (B*T, 1+N, D)
        x = x.view(B, T, *x.shape[1:])  # (B, T, 1+N, D)
        return x + self.time_embed.unsqueeze(2)  # time_embed (1, T, 1, D) over every token of a frame

    def forward_tokens(self, frames: torch.Tensor) -> torch.Tensor:
        """The branch alone: (B, T, 3, S, S) -> (B, T, 1+N, D), final norm applied."""
        x = self.embed(frames)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    forward = forward_tokens
