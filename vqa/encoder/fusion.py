"""The AV encoder: video and audio branches, their fusion, and the short time-ordered output sequence.

Notation: B batch, T frames, P = 1 + N tokens per frame, M audio patches (Fm x Ft), Z bottleneck tokens,
S time steps, R video tokens per step, A audio tokens per step, L output tokens, D width.

`fusion`:
- "bottleneck" (MBT): `fusion_layer` layers per branch alone, then in each later layer each branch's block
  runs on [its tokens; bottlenecks] and the bottlenecks become the mean of the two branches' outputs.
  Both branches read the same bottlenecks in a layer, so audio reaches the video tokens (and back) from
  the second fused layer on: keep depth - fusion_layer >= 2 for the branches to inform each other.
- "early" (MBT's full attention from layer 0, weights kept per branch): in every layer each branch's block
  runs on [its tokens; all of the other branch's tokens] and keeps its own part; `fusion_layer` is unused.
- "late": the branches never meet before the output.
- "video" / "audio": one branch alone; the other is not built and its input is ignored (may be None).
In the video branch, extra tokens (bottlenecks, or audio under "early") join the spatial attention, see
`VideoBlock`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import EncoderConfig, MediaConfig, ModelConfig
from .audio import audio_grid, audio_problems
from .backbone import audio_branch, video_branch
from .summary import SummaryTokens
from .video import video_problems

VIDEO, AUDIO, BOTTLENECK = 0, 1, 2  # rows of OutputTokens.type_embed


def encoder_problems(media: MediaConfig, enc: EncoderConfig) -> list[str]:
    """Every reason these configs cannot make an encoder (empty if none)."""
    problems = []
    if enc.time_steps < 1:
        problems.append(f"time_steps must be >= 1, got {enc.time_steps}")
    if enc.uses_video:
        # a backbone has its own patch grid, which it checks itself (vqa.encoder.backbone)
        found = [] if enc.video_backbone else video_problems(media, enc)
        problems += found
        if enc.time_steps > media.num_frames:
            problems.append(f"time_steps {enc.time_steps} > num_frames {media.num_frames}: a step needs a frame")
        side = int(round(enc.video_tokens_per_step ** 0.5))
        if side < 1:
            problems.append(f"video_tokens_per_step must be >= 1, got {enc.video_tokens_per_step}")
        if not found and not enc.video_backbone and side > media.size // enc.patch_size:
            problems.append(
                f"video_tokens_per_step {enc.video_tokens_per_step} needs a {side}x{side} grid, "
                f"frames have {media.size // enc.patch_size}x{media.size // enc.patch_size} patches"
            )
    if enc.uses_audio and not enc.audio_backbone:
        found = audio_problems(media, enc)
        problems += found
        if not found:
            fm, ft = audio_grid(media, enc)
            if enc.time_steps > ft:
                problems.append(
                    f"time_steps {enc.time_steps} > audio time patches {ft} "
                    f"(audio_frames {enc.audio_frames}, audio_patch {enc.audio_patch}, audio_stride {enc.audio_stride})"
                )
            if not 1 <= enc.audio_tokens_per_step <= fm:
                problems.append(f"audio_tokens_per_step {enc.audio_tokens_per_step} is outside [1, {fm}] "
                                f"(frequency patches)")
    return problems


class OutputTokens(nn.Module):
    """Branch tokens -> (B, L, D): per time step R pooled video and A pooled audio tokens, interleaved
    [v_1, a_1, v_2, a_2, ...], then the bottlenecks; plus learned step and type embeddings, then a norm.

    Video: each frame's patch grid is average-pooled to sqrt(R) x sqrt(R), frames average-pooled into S
    steps. Audio: the (Fm, Ft) patch grid is average-pooled to (A frequency bands, S steps), so a step's
    audio tokens come only from patches around that moment.
    """

    def __init__(self, enc: EncoderConfig, video_grid: tuple[int, int] | None, audio_grid: tuple[int, int] | None):
        super().__init__()
        self.time_steps = enc.time_steps
        self.video_grid = video_grid
        self.audio_grid = audio_grid
        self.video_side = int(round(enc.video_tokens_per_step ** 0.5))
        self.audio_bands = enc.audio_tokens_per_step
        self.step_embed = nn.Parameter(torch.zeros(1, enc.time_steps, enc.width))
        self.type_embed = nn.Parameter(torch.zeros(3, enc.width))
        self.norm = nn.LayerNorm(enc.width, eps=enc.layer_norm_eps)
        nn.init.trunc_normal_(self.step_embed, std=0.02)
        nn.init.trunc_normal_(self.type_embed, std=0.02)

    def pool_video(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, 1+N, D) -> (B, S, R, D); the per-frame CLS tokens are dropped."""
        B, T, _, D = x.shape
        h, w = self.video_grid
        r = self.video_side
        x = x[:, :, 1:].reshape(B * T, h, w, D).permute(0, 3, 1, 2)  # (B*T, D, h, w)
        x = F.adaptive_avg_pool2d(x, r)  # (B*T, D, r, r)
        x = x.reshape(B, T, D * r * r).transpose(1, 2)  # (B, D*R, T)
        x = F.adaptive_avg_pool1d(x, self.time_steps)  # (B, D*R, S)
        return x.reshape(B, D, r * r, self.time_steps).permute(0, 3, 2, 1)  # (B, S, R, D)

    def pool_audio(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 2+M, D) -> (B, S, A, D); the CLS and distillation tokens are dropped."""
        B, _, D = x.shape
        fm, ft = self.audio_grid
        x = x[:, 2:].transpose(1, 2).reshape(B, D, fm, ft)  # (B, D, Fm, Ft)
        x = F.adaptive_avg_pool2d(x, (self.audio_bands, self.time_steps))  # (B, D, A, S)
        return x.permute(0, 3, 2, 1)  # (B, S, A, D)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        per_step = []
        if "video" in features:
            per_step.append(self.pool_video(features["video"]) + self.type_embed[VIDEO])
        if "audio" in features:
            per_step.append(self.pool_audio(features["audio"]) + self.type_embed[AUDIO])
        x = torch.cat(per_step, dim=2) + self.step_embed.unsqueeze(2)  # (B, S, R+A, D)
        x = x.flatten(1, 2)  # (B, S*(R+A), D): [v_1, a_1, v_2, a_2, ...]
        if "bottleneck" in features:
            x = torch.cat([x, features["bottleneck"] + self.type_embed[BOTTLENECK]], dim=1)  # (B, L, D)
        return self.norm(x)


class AVEncoder(nn.Module):
    """Frames (B, T, 3, size, size) and log-mel (B, n_mels, audio_frames) -> tokens (B, L, D),
    L = enc.num_tokens, D = enc.width."""

    def __init__(self, media: MediaConfig, enc: EncoderConfig):
        super().__init__()
        problems = encoder_problems(media, enc)
        if problems:
            raise ValueError("invalid encoder config: " + "; ".join(problems))
        self.fusion = enc.fusion
        self.fusion_layer = enc.fusion_layer
        self.num_tokens = enc.num_tokens
        self.video = video_branch(media, enc) if enc.uses_video else None
        self.audio = audio_branch(media, enc) if enc.uses_audio else None
        if enc.fusion == "bottleneck":
            self.bottleneck = nn.Parameter(torch.zeros(1, enc.num_bottlenecks, enc.width))
            nn.init.normal_(self.bottleneck, std=0.02)  # MBT's init
        else:
            self.bottleneck = None
        self.head = OutputTokens(
            enc,
            self.video.grid if self.video is not None else None,
            self.audio.grid if self.audio is not None else None,
        )
        self.summary = (SummaryTokens(enc, media.num_frames, self.audio.grid if self.audio is not None else None,
                                      enc.pointer)
                        if enc.summary_tokens else None)

    @classmethod
    def from_config(cls, config: ModelConfig) -> "AVEncoder":
        return cls(config.media, config.encoder)

    def forward_features(self, frames: torch.Tensor | None, mel: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Per-branch token sequences after fusion and each branch's final norm:
        "video" (B, T, 1+N, D), "audio" (B, 2+M, D), "bottleneck" (B, Z, D), each where present."""
        if self.fusion in ("late", "video", "audio"):
            out = {}
            if self.video is not None:
                out["video"] = self.video.forward_tokens(frames)
            if self.audio is not None:
                out["audio"] = self.audio.forward_tokens(mel)
            return out
        xv, xa = self.video.embed(frames), self.audio.embed(mel)
        if self.fusion == "early":
            xv, xa = self._early(xv, xa)
            return {"video": self.video.norm(xv), "audio": self.audio.norm(xa)}
        xv, xa, z = self._bottleneck(xv, xa)
        return {"video": self.video.norm(xv), "audio": self.audio.norm(xa), "bottleneck": z}

    def _bottleneck(self, xv: torch.Tensor, xa: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z = self.bottleneck.expand(xv.shape[0], -1, -1)  # (B, Z, D)
        for i, (video_block, audio_block) in enumerate(zip(self.video.blocks, self.audio.blocks)):
            if i < self.fusion_layer:
                xv, xa = video_block(xv), audio_block(xa)
                continue
            xv, zv = video_block.forward_with(xv, z)  # (B, T, P, D), (B, Z, D)
            xa, za = audio_block.forward_with(xa, z)  # (B, 2+M, D), (B, Z, D)
            z = (zv + za) / 2
        return xv, xa, z

    def _early(self, xv: torch.Tensor, xa: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, T, P, D = xv.shape
        for video_block, audio_block in zip(self.video.blocks, self.audio.blocks):
            # both read the layer's inputs; the other modality's outputs of each block are dropped
            xv, xa = (
                video_block.forward_with(xv, xa)[0],  # (B, T, P, D)
                audio_block.forward_with(xa, xv.reshape(B, T * P, D))[0],  # (B, 2+M, D)
            )
        return xv, xa

    def forward_head(self, features: dict[str, torch.Tensor], own: bool = False):
        """(B, L, D) output tokens; with `own`, also the summary slots a pointer replaced, as their own
        queries made them (B, S, D; S = 0 without a pointer), for training."""
        tokens = self.head(features)
        own_tokens = tokens[:, :0]
        if self.summary is not None:
            summary, own_tokens = self.summary(features, own=True)
            tokens = torch.cat([tokens, summary], dim=1)  # (B, L, D), summaries last
        assert tokens.shape[1] == self.num_tokens, (tokens.shape, self.num_tokens)
        return (tokens, own_tokens) if own else tokens

    def forward(self, frames: torch.Tensor | None, mel: torch.Tensor | None) -> torch.Tensor:
        return self.forward_head(self.forward_features(frames, mel))
