"""I3D's inflation of a 2D convolutional network into a 3D one (Carreira & Zisserman 2017).

Notation: B batch, C channels, T frames, H x W pixels. A 2D network takes (B, C, H, W); its inflation takes
(B, C, T, H, W). Each k x k kernel becomes t x k x k: the 2D kernel repeated over t frames and divided by t,
with the clip's first and last frames repeated as temporal padding, so on a clip of identical frames every
frame's output is exactly the 2D network's output on that frame. Batch norms, poolings and adaptive poolings
become their 3D forms (pooling over one frame); element-wise modules are kept.

Only modules are inflated: a network that reshapes or pools inside its own `forward` with tensor functions
needs its 3D forward written by hand (the transformer backbones of `vqa.encoder.backbone` are made
space-time with zero-initialised temporal attention instead, which has the same property).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


class InflatedConv(nn.Module):
    """A Conv2d inflated over `time_kernel` frames; replicate padding over time, the 2D padding in space."""

    def __init__(self, conv: nn.Conv2d, time_kernel: int):
        super().__init__()
        if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
            raise ValueError(f"inflate supports Conv2d with numeric zero padding, got padding={conv.padding!r}, "
                             f"padding_mode={conv.padding_mode!r}")
        self.pad = time_kernel // 2
        self.conv = nn.Conv3d(conv.in_channels, conv.out_channels, (time_kernel, *conv.kernel_size),
                              stride=(1, *conv.stride), padding=(0, *conv.padding), dilation=(1, *conv.dilation),
                              groups=conv.groups, bias=conv.bias is not None)
        with torch.no_grad():
            weight = conv.weight.unsqueeze(2).repeat(1, 1, time_kernel, 1, 1) / time_kernel  # (O, I, t, k, k)
            self.conv.weight.copy_(weight)
            if conv.bias is not None:
                self.conv.bias.copy_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad:
            x = F.pad(x, (0, 0, 0, 0, self.pad, self.pad), mode="replicate")  # (B, C, T + 2p, H, W)
        return self.conv(x)


def _batch_norm(bn: nn.BatchNorm2d) -> nn.BatchNorm3d:
    out = nn.BatchNorm3d(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    out.load_state_dict(bn.state_dict())
    return out


def _inflate_module(m: nn.Module, time_kernel: int) -> nn.Module | None:
    """The 3D form of one module, or None if it is kept as it is."""
    if isinstance(m, nn.Conv2d):
        t = time_kernel if max(m.kernel_size) > 1 else 1  # 1x1 convolutions stay per frame
        return InflatedConv(m, t)
    if isinstance(m, nn.BatchNorm2d):
        return _batch_norm(m)
    if isinstance(m, nn.MaxPool2d):
        return nn.MaxPool3d((1, *nn.modules.utils._pair(m.kernel_size)), (1, *nn.modules.utils._pair(m.stride)),
                            (0, *nn.modules.utils._pair(m.padding)), ceil_mode=m.ceil_mode)
    if isinstance(m, nn.AvgPool2d):
        return nn.AvgPool3d((1, *nn.modules.utils._pair(m.kernel_size)), (1, *nn.modules.utils._pair(m.stride)),
                            (0, *nn.modules.utils._pair(m.padding)), ceil_mode=m.ceil_mode,
                            count_include_pad=m.count_include_pad)
    if isinstance(m, nn.AdaptiveAvgPool2d):
        return nn.AdaptiveAvgPool3d((None, *nn.modules.utils._pair(m.output_size)))
    if isinstance(m, (nn.Conv1d, nn.Conv3d, nn.BatchNorm1d, nn.BatchNorm3d)):
        raise ValueError(f"inflate cannot turn {type(m).__name__} into a per-clip module")
    return None  # element-wise (activations, dropout), or a container inflated child by child


def inflate(network: nn.Module, time_kernel: int = 3) -> nn.Module:
    """A copy of a 2D network taking clips (B, C, T, H, W); `time_kernel` odd (the temporal padding is symmetric)."""
    if time_kernel < 1 or time_kernel % 2 == 0:
        raise ValueError(f"time_kernel must be odd and >= 1, got {time_kernel}")
    training = network.training
    network = copy.deepcopy(network)
    return (_inflate_module(network, time_kernel) or _inflate_children(network, time_kernel)).train(training)


def _inflate_children(module: nn.Module, time_kernel: int) -> nn.Module:
    for name, child in list(module.named_children()):
        setattr(module, name, _inflate_module(child, time_kernel) or _inflate_children(child, time_kernel))
    return module
