"""Summary tokens: learned queries that read every branch token by cross-attention (Q-Former /
Perceiver-resampler style) and join the encoder's output after the time-ordered tokens.

The pooled tokens say where and when things are; a fact about the whole clip (how many objects, which one
beeps) is spread over them. A query attends to the patch of one frame, or gathers over all of them, and
holds the result in one token, where the LLM's attention can read it in one step.

Notation: B batch, T frames, N patches per frame, M audio patches, Z bottleneck tokens, Q queries, D width.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import EncoderConfig, PointerConfig
from .layers import MLP, Attention, init_weights


class CrossAttention(nn.Module):
    """Queries (B, Q, D) attend to memory (B, K, D)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        B, Q, D = x.shape
        h = self.heads
        q = self.q(x).view(B, Q, h, D // h).transpose(1, 2)  # (B, h, Q, D/h)
        k, v = self.kv(memory).view(B, memory.shape[1], 2, h, D // h).permute(2, 0, 3, 1, 4)  # each (B, h, K, D/h)
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, Q, D)
        return self.proj(y)


class SummaryBlock(nn.Module):
    """Pre-norm: cross-attention to the memory, self-attention among the queries, MLP."""

    def __init__(self, enc: EncoderConfig):
        super().__init__()
        D, eps = enc.width, enc.layer_norm_eps
        self.norm_q = nn.LayerNorm(D, eps=eps)
        self.norm_m = nn.LayerNorm(D, eps=eps)
        self.cross = CrossAttention(D, enc.heads)
        self.norm1 = nn.LayerNorm(D, eps=eps)
        self.attn = Attention(D, enc.heads)
        self.norm2 = nn.LayerNorm(D, eps=eps)
        self.mlp = MLP(D, int(D * enc.mlp_ratio))

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        x = x + self.cross(self.norm_q(x), self.norm_m(memory))
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class SlotPointer(nn.Module):
    """Output slots that become a copy of one candidate's slots (the layout `EncoderConfig.pointer`).

    Each candidate is scored by one linear map of its key token, "none" by another of the none-key token;
    the softmax over those scores weighs the candidates' value tokens (and, for none, the output slot's own
    token). All output slots share the one choice, so they describe the same candidate.

    It reads the tokens detached and starts at zero without drawing random numbers, so it changes nothing
    in how the rest of the encoder is initialised or learns: training teaches the slots' own tokens their
    words as before (AVSynth: vqa.avsynth.pretrain.Heads) and fits the two scores in a stage of their own. Taught only
    through the copies, the slots' own queries stop learning which object beeps, and every colour's beep
    count stalled below the rest (docs/training.md)."""

    def __init__(self, dim: int, layout: PointerConfig):
        super().__init__()
        self.layout = layout
        self.score = nn.Linear(dim, 1, device="meta").to_empty(device="cpu")  # meta: no random init drawn
        self.score_none = nn.Linear(dim, 1, device="meta").to_empty(device="cpu")
        for p in self.parameters():
            nn.init.zeros_(p)
        values = [list(v) + [o] for v, o in zip(layout.values, layout.outs)]  # none: the slot itself
        self.register_buffer("keys", torch.tensor(layout.keys), persistent=False)
        self.register_buffer("outs", torch.tensor(layout.outs), persistent=False)
        self.register_buffer("values", torch.tensor(values), persistent=False)  # (S, K+1)

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """(B, Q, D) -> (B, K+1): each candidate's weight, "none" last."""
        scores = torch.cat([self.score(x[:, self.keys]).squeeze(-1),
                            self.score_none(x[:, self.layout.none_key])], dim=-1)
        return scores.float().softmax(-1).to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fixed = x.detach()
        w = self.weights(fixed)
        copied = (w[:, None, :, None] * fixed[:, self.values]).sum(2)  # (B, S, D)
        return x.index_copy(1, self.outs, copied)


class SummaryTokens(nn.Module):
    """Branch features -> (B, Q, D).

    With a video branch, the queries first read each frame on its own: frame t's patches and the audio
    of that moment (the audio patches averaged over frequency, resampled to the frames). The per-frame
    results are then read by their place in time, one linear map over the T frames: where an object is
    at each moment (its motion), and whether it swells as a beep is heard (which one beeps) are products
    over one frame, which attention averaged over all frames cannot form. Then `summary_depth` blocks
    attend to the whole memory: every video patch (with a learned embedding of its frame), every audio
    token and the bottlenecks."""

    def __init__(self, enc: EncoderConfig, num_frames: int, audio_grid: tuple[int, int] | None = None,
                 pointer: PointerConfig | None = None):
        super().__init__()
        D = enc.width
        self.audio_grid = audio_grid  # (Fm, Ft) of the audio patches, where there is an audio branch
        self.queries = nn.Parameter(torch.zeros(1, enc.summary_tokens, D))
        self.frame_embed = nn.Parameter(torch.zeros(1, num_frames, 1, D))
        self.type_embed = nn.Parameter(torch.zeros(3, D))  # video, audio, bottleneck
        self.per_frame = SummaryBlock(enc) if enc.uses_video else None
        self.over_time = nn.Linear(num_frames * D, D) if enc.uses_video else None
        self.blocks = nn.ModuleList([SummaryBlock(enc) for _ in range(enc.summary_depth)])
        self.norm = nn.LayerNorm(D, eps=enc.layer_norm_eps)
        self.apply(init_weights)
        for p in (self.queries, self.frame_embed, self.type_embed):
            nn.init.trunc_normal_(p, std=0.02)
        self.pointer = SlotPointer(D, pointer) if pointer is not None else None  # last: its own init

    def frames_then_time(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, Q, D): the queries on each frame alone, then one linear map over the frames in order."""
        video = features["video"][:, :, 1:]  # (B, T, N, D)
        B, T, N, D = video.shape
        memory = video + self.type_embed[0]
        if "audio" in features and self.audio_grid is not None:
            fm, ft = self.audio_grid
            audio = features["audio"][:, 2:].reshape(B, fm, ft, D).mean(1)  # (B, Ft, D): over frequency
            audio = F.interpolate(audio.transpose(1, 2), size=T, mode="linear", align_corners=False)
            memory = torch.cat([memory, (audio.transpose(1, 2) + self.type_embed[1]).unsqueeze(2)], dim=2)
        Q = self.queries.shape[1]
        x = self.per_frame(self.queries.expand(B * T, -1, -1), memory.flatten(0, 1))  # (B*T, Q, D)
        x = x.view(B, T, Q, D).permute(0, 2, 1, 3).flatten(2)  # (B, Q, T*D): frames in order
        return self.queries + self.over_time(x)

    def forward(self, features: dict[str, torch.Tensor], own: bool = False):
        """(B, Q, D); with `own`, also the pointer's output slots as their own queries made them (B, S, D),
        which training teaches the same words (vqa.avsynth.pretrain.Heads)."""
        B = next(iter(features.values())).shape[0]
        x = self.frames_then_time(features) if "video" in features else self.queries.expand(B, -1, -1)
        memory = []
        if "video" in features:
            v = features["video"][:, :, 1:] + self.frame_embed  # (B, T, N, D), per-frame CLS dropped
            memory.append(v.flatten(1, 2) + self.type_embed[0])
        if "audio" in features:
            memory.append(features["audio"] + self.type_embed[1])
        if "bottleneck" in features:
            memory.append(features["bottleneck"] + self.type_embed[2])
        memory = torch.cat(memory, dim=1)  # (B, K, D)
        for block in self.blocks:
            x = block(x, memory)
        x = self.norm(x)
        if self.pointer is None:
            return (x, x[:, :0]) if own else x
        out = self.pointer(x)
        return (out, x[:, self.pointer.outs]) if own else out
