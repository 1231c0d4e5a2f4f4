"""Start the branches from 2D checkpoints, and resize checkpoints whose frames, sizes or steps differ.

`load_vit_into_video` inflates a transformers `ViTModel` state dict into the video branch (temporal parts
at zero: the branch is then that ViT on each frame); `load_ast_into_audio` loads an `ASTModel` state dict
into the audio branch. Both take transformers' current layout (`layers.N.attention.q_proj`, `mlp.fc1`) and
the older one of hub checkpoints (`encoder.layer.N.attention.attention.query`, `intermediate.dense`), with
or without a task model's prefix (`vit.`, `audio_spectrogram_transformer.`). Heads are not stored in a
state dict: build the branch with the checkpoint's head count.

`checkpoint_filter_fn(state_dict, model)` (timm's pattern) is pure: it returns a copy of one of our own
state dicts with position, time and step embeddings resampled (float32) to `model`'s shapes.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .audio import AudioBranch
from .fusion import OutputTokens
from .video import VideoBranch

# transformers' older (hub) names -> its current ones, applied in order
_LEGACY_NAMES = [
    (r"^encoder\.layer\.(\d+)\.", r"layers.\1."),
    (r"\.attention\.attention\.query\.", ".attention.q_proj."),
    (r"\.attention\.attention\.key\.", ".attention.k_proj."),
    (r"\.attention\.attention\.value\.", ".attention.v_proj."),
    (r"\.attention\.output\.dense\.", ".attention.o_proj."),
    (r"\.intermediate\.dense\.", ".mlp.fc1."),
    (r"\.output\.dense\.", ".mlp.fc2."),
]
# per layer: transformers' current name -> ours (q/k/v are fused into attn.qkv separately)
_LAYER_NAMES = {
    "layernorm_before": "norm1",
    "attention.o_proj": "attn.proj",
    "layernorm_after": "norm2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}


@dataclass
class LoadReport:
    missing: list[str]  # branch entries the checkpoint does not provide (kept as they were)
    ignored: list[str]  # checkpoint entries not used (pooler, extra layers, a task head)


# ---- resampling (pure, float32) ----

def resample_pos_embed(
    pos_embed: torch.Tensor, new_grid: tuple[int, int], old_grid: tuple[int, int], num_prefix_tokens: int
) -> torch.Tensor:
    """(1, prefix + h*w, D) -> (1, prefix + H*W, D): bicubic over the grid like timm; prefix tokens kept."""
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    D = grid.shape[-1]
    if grid.shape[1] != old_grid[0] * old_grid[1]:
        raise ValueError(f"position embedding has {grid.shape[1]} grid entries, not {old_grid[0]}x{old_grid[1]}")
    grid = grid.float().reshape(1, *old_grid, D).permute(0, 3, 1, 2)  # (1, D, h, w)
    grid = F.interpolate(grid, size=tuple(new_grid), mode="bicubic", antialias=True, align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], D)  # (1, H*W, D)
    return torch.cat([prefix, grid.to(pos_embed.dtype)], dim=1)


def resample_time_embed(embed: torch.Tensor, length: int) -> torch.Tensor:
    """(1, T_old, D) -> (1, length, D), linear in float32: frame or step embeddings for another count."""
    if embed.shape[1] == length:
        return embed
    x = F.interpolate(embed.float().transpose(1, 2), size=length, mode="linear", align_corners=False)  # (1, D, T)
    return x.transpose(1, 2).to(embed.dtype)


def _square_grid(num: int, what: str) -> tuple[int, int]:
    side = math.isqrt(num)
    if side * side != num:
        raise ValueError(f"{what} has {num} patch positions, not a square grid; pass grid=(rows, cols)")
    return side, side


def _rows_grid(num: int, rows: int, what: str) -> tuple[int, int]:
    if num % rows:
        raise ValueError(
            f"{what} has {num} patch positions, not a multiple of the branch's {rows} frequency rows; "
            "pass grid=(rows, cols)"
        )
    return rows, num // rows


# ---- transformers ViT / AST -> our branches ----

def _canonical(state_dict: dict[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
    """Strip a task model's prefix and rename transformers' older layout to its current one."""
    anchors = [k for k in state_dict if k.endswith("embeddings.cls_token")]
    if len(anchors) != 1:
        raise ValueError(f"{what} state dict expected: one key '...embeddings.cls_token', found {anchors}")
    prefix = anchors[0][: -len("embeddings.cls_token")]
    out = {}
    for key, value in state_dict.items():
        if not key.startswith(prefix):
            continue
        key = key[len(prefix):]
        for pattern, repl in _LEGACY_NAMES:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


def _transformers_to_branch(
    state_dict: dict[str, torch.Tensor], branch: nn.Module, tokens: dict[str, str], pos_embed: torch.Tensor, what: str
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map a canonical transformers ViT/AST state dict onto `branch`'s names; `tokens` maps prefix tokens."""
    sd = state_dict
    width, depth = branch.norm.weight.shape[0], len(branch.blocks)
    if sd["embeddings.cls_token"].shape[-1] != width:
        raise ValueError(f"{what} checkpoint has width {sd['embeddings.cls_token'].shape[-1]}, the branch {width}")
    layers = {int(m.group(1)) for k in sd if (m := re.match(r"layers\.(\d+)\.", k))}
    if len(layers) < depth:
        raise ValueError(f"{what} checkpoint has {len(layers)} layers, the branch needs {depth}")

    out, used = {"pos_embed": pos_embed}, {"embeddings.position_embeddings"}

    def get(src: str) -> torch.Tensor:
        if src not in sd:
            raise ValueError(f"{what} checkpoint lacks {src!r}")
        used.add(src)
        return sd[src]

    for src, dst in tokens.items():
        out[dst] = get(src)
    for p in ("weight", "bias"):
        out[f"patch_embed.{p}"] = get(f"embeddings.patch_embeddings.projection.{p}")
        out[f"norm.{p}"] = get(f"layernorm.{p}")
        for i in range(depth):
            for src, dst in _LAYER_NAMES.items():
                out[f"blocks.{i}.{dst}.{p}"] = get(f"layers.{i}.{src}.{p}")
            qkv = [get(f"layers.{i}.attention.{n}_proj.{p}") for n in "qkv"]
            out[f"blocks.{i}.attn.qkv.{p}"] = torch.cat(qkv)  # (3D, ...): q, k, v as Attention splits them

    own = branch.state_dict()
    wrong = [f"{k}: checkpoint {tuple(v.shape)}, branch {tuple(own[k].shape)}" for k, v in out.items()
             if own[k].shape != v.shape]
    if wrong:
        raise ValueError(f"{what} checkpoint does not fit the branch (patch size or mlp_ratio?): " + "; ".join(wrong))
    return out, sorted(set(sd) - used)


def _load(branch: nn.Module, converted: dict[str, torch.Tensor], ignored: list[str]) -> LoadReport:
    result = branch.load_state_dict(converted, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
    return LoadReport(missing=sorted(result.missing_keys), ignored=ignored)


def vit_to_video(
    state_dict: dict[str, torch.Tensor], video: VideoBranch, grid: tuple[int, int] | None = None
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """A ViTModel state dict in `video`'s names (spatial embeddings resampled), and the unused keys."""
    if not isinstance(video.patch_embed, nn.Conv2d):
        raise ValueError("a ViT checkpoint loads into patch_stem 'linear' only: the conv stem has no ViT weights")
    sd = _canonical(state_dict, "ViT")
    pos = sd["embeddings.position_embeddings"]
    old = grid or _square_grid(pos.shape[1] - 1, "ViT position embedding")
    pos = resample_pos_embed(pos, video.grid, old, num_prefix_tokens=1)
    return _transformers_to_branch(sd, video, {"embeddings.cls_token": "cls_token"}, pos, "ViT")


def ast_to_audio(
    state_dict: dict[str, torch.Tensor], audio: AudioBranch, grid: tuple[int, int] | None = None
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """An ASTModel state dict in `audio`'s names (position embeddings resampled), and the unused keys.

    The checkpoint's (frequency, time) patch grid is `grid`, or inferred assuming the branch's
    frequency rows (same n_mels and patching), as for AST's own AudioSet checkpoints at any max_length.
    """
    sd = _canonical(state_dict, "AST")
    pos = sd["embeddings.position_embeddings"]
    old = grid or _rows_grid(pos.shape[1] - 2, audio.grid[0], "AST position embedding")
    pos = resample_pos_embed(pos, audio.grid, old, num_prefix_tokens=2)
    tokens = {"embeddings.cls_token": "cls_token", "embeddings.distillation_token": "dist_token"}
    return _transformers_to_branch(sd, audio, tokens, pos, "AST")


def load_vit_into_video(
    video: VideoBranch, state_dict: dict[str, torch.Tensor], grid: tuple[int, int] | None = None
) -> LoadReport:
    """Inflate a 2D ViT into the video branch; its temporal parts restart at zero (ViT on each frame)."""
    report = _load(video, *vit_to_video(state_dict, video, grid))
    video.reset_temporal()
    return report


def load_ast_into_audio(
    audio: AudioBranch, state_dict: dict[str, torch.Tensor], grid: tuple[int, int] | None = None
) -> LoadReport:
    """Load an AST into the audio branch."""
    return _load(audio, *ast_to_audio(state_dict, audio, grid))


# ---- our own checkpoints at other sizes ----

def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of `state_dict` (from an AVEncoder or a branch) with embeddings resampled to `model`'s
    frame count, frame size, audio frames and time steps; load it with `model.load_state_dict`."""
    out = dict(state_dict)

    def resize(key: str, target: torch.Tensor, fn) -> None:
        if key in out and out[key].shape != target.shape:
            out[key] = fn(out[key])

    for name, module in model.named_modules():
        pre = f"{name}." if name else ""
        if isinstance(module, VideoBranch):
            resize(pre + "pos_embed", module.pos_embed, lambda t, m=module: resample_pos_embed(
                t, m.grid, _square_grid(t.shape[1] - 1, "video position embedding"), 1))
            resize(pre + "time_embed", module.time_embed, lambda t, m=module: resample_time_embed(t, m.num_frames))
        elif isinstance(module, AudioBranch):
            resize(pre + "pos_embed", module.pos_embed, lambda t, m=module: resample_pos_embed(
                t, m.grid, _rows_grid(t.shape[1] - 2, m.grid[0], "audio position embedding"), 2))
        elif isinstance(module, OutputTokens):
            resize(pre + "step_embed", module.step_embed, lambda t, m=module: resample_time_embed(t, m.time_steps))
    return out
