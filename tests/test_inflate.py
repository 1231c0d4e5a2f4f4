"""I3D inflation of a 2D CNN: on a clip of identical frames the inflated network gives the 2D network's output."""
import pytest
import torch
from torch import nn

from vqa.encoder.inflate import inflate


def cnn() -> nn.Module:
    """A small EfficientNet-like 2D network: stem, depthwise block, pooling, 1x1 projection, global pool."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU6(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU6(),
        nn.MaxPool2d(2), nn.Conv2d(8, 16, 1), nn.AvgPool2d(2), nn.AdaptiveAvgPool2d(1),
    )
    with torch.no_grad():  # non-trivial batch-norm statistics
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_()
                m.bias.normal_()
    return net.eval()


@pytest.mark.parametrize("time_kernel", [1, 3, 5])
def test_constant_clip_gives_the_2d_network_on_every_frame(time_kernel):
    net = cnn()
    video = inflate(net, time_kernel).eval()
    image = torch.randn(2, 3, 32, 32)
    clip = image.unsqueeze(2).expand(2, 3, 6, 32, 32)  # (B, C, T, H, W): six identical frames
    with torch.no_grad():
        out = video(clip)  # (B, 16, T, 1, 1)
        ref = net(image)  # (B, 16, 1, 1)
    assert out.shape == (2, 16, 6, 1, 1)
    for t in range(6):
        assert torch.allclose(out[:, :, t], ref, atol=1e-5)


def test_inflated_kernels_mix_frames_of_a_moving_clip():
    net = cnn()
    video = inflate(net, 3).eval()
    clip = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        out = video(clip)
        per_frame = torch.stack([net(clip[:, :, t]) for t in range(4)], dim=2)
    assert not torch.allclose(out, per_frame, atol=1e-3)
    assert inflate(net, 1)(clip).allclose(per_frame, atol=1e-5)  # a one-frame kernel is the 2D network per frame


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="time_kernel must be odd"):
        inflate(cnn(), 2)
    with pytest.raises(ValueError, match="numeric zero padding"):
        inflate(nn.Conv2d(3, 4, 3, padding="same"), 3)
