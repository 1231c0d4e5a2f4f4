"""The AV encoder over every attention x fusion mode, on tiny configs."""
from __future__ import annotations

import itertools

import pytest
import torch

from vqa.config import ATTENTION_MODES, FUSION_MODES, EncoderConfig, MediaConfig, PointerConfig
from vqa.encoder import AVEncoder
from vqa.encoder.summary import SlotPointer
from vqa.encoder.video import TemporalAttention

MEDIA = MediaConfig(num_frames=4, size=32, n_mels=16)
# audio: 3 frequency rows x 8 time patches (patch 8, stride 4 over 16 x 36), 2 time patches per step
TINY = dict(width=32, heads=4, mlp_ratio=2.0, patch_size=8, video_depth=2, audio_depth=2, audio_patch=8,
            audio_stride=4, audio_frames=36, fusion_layer=1, num_bottlenecks=2, time_steps=4)
MODES = list(itertools.product(ATTENTION_MODES, FUSION_MODES))


def tiny(**overrides) -> EncoderConfig:
    return EncoderConfig(**{**TINY, **overrides})


def build(seed: int = 0, media: MediaConfig = MEDIA, **overrides) -> AVEncoder:
    torch.manual_seed(seed)
    return AVEncoder(media, tiny(**overrides)).eval()


def inputs(batch: int = 2, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    frames = torch.randn(batch, MEDIA.num_frames, 3, MEDIA.size, MEDIA.size, generator=g)
    mel = torch.randn(batch, MEDIA.n_mels, TINY["audio_frames"], generator=g)
    return frames, mel


@torch.no_grad()
def wake(model: AVEncoder) -> AVEncoder:
    """Give the zero-initialised temporal parts random values, so every path carries signal."""
    for module in model.modules():
        if isinstance(module, TemporalAttention):
            torch.nn.init.normal_(module.fc.weight, std=0.1)
            torch.nn.init.normal_(module.fc.bias, std=0.1)
    if model.video is not None:
        torch.nn.init.normal_(model.video.time_embed, std=0.1)
    return model


def positions(enc: EncoderConfig, modality: str) -> list[int]:
    """Output indices of one modality's per-step tokens: [v_1, a_1, v_2, a_2, ...]."""
    v = enc.video_tokens_per_step if enc.uses_video else 0
    a = enc.audio_tokens_per_step if enc.uses_audio else 0
    first, count = (0, v) if modality == "video" else (v, a)
    return [s * (v + a) + first + i for s in range(enc.time_steps) for i in range(count)]


@pytest.mark.parametrize("attention,fusion", MODES)
def test_shape_and_gradients(attention, fusion):
    enc = tiny(attention=attention, fusion=fusion)
    model = wake(build(attention=attention, fusion=fusion)).train()
    frames, mel = inputs()
    out = model(frames, mel)
    assert out.shape == (2, enc.num_tokens, enc.width)
    (out * torch.randn_like(out)).sum().backward()  # a random readout: a plain sum of a norm's output has ~0 grad
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} gets no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


@pytest.mark.parametrize("attention,fusion", MODES)
def test_features_per_branch(attention, fusion):
    enc = tiny(attention=attention, fusion=fusion)
    with torch.no_grad():
        features = build(attention=attention, fusion=fusion).forward_features(*inputs())
    expected = {"video": (2, 4, 1 + 16, 32), "audio": (2, 2 + 3 * 8, 32), "bottleneck": (2, 2, 32)}
    used = [k for k, on in [("video", enc.uses_video), ("audio", enc.uses_audio),
                            ("bottleneck", fusion == "bottleneck")] if on]
    assert {k: tuple(v.shape) for k, v in features.items()} == {k: expected[k] for k in used}


def test_output_interleaves_steps():
    """Several tokens per step: [v_1 (4 tokens), a_1 (2), v_2, a_2, ...], each where its input acts."""
    enc = tiny(fusion="late", video_tokens_per_step=4, audio_tokens_per_step=2)
    model = build(fusion="late", video_tokens_per_step=4, audio_tokens_per_step=2)
    frames, mel = inputs(seed=1)
    other_frames, other_mel = inputs(seed=2)
    with torch.no_grad():
        out = model(frames, mel)
        by_video = (model(other_frames, mel) - out).abs().amax(dim=(0, 2)) > 1e-6  # (L,)
        by_audio = (model(frames, other_mel) - out).abs().amax(dim=(0, 2)) > 1e-6
    assert out.shape[1] == enc.num_tokens == 4 * (4 + 2)
    assert by_video.nonzero().flatten().tolist() == positions(enc, "video") == [0, 1, 2, 3, 6, 7, 8, 9, 12, 13, 14, 15,
                                                                                  18, 19, 20, 21]
    assert by_audio.nonzero().flatten().tolist() == positions(enc, "audio")


def test_default_config_fits_the_llm_budget():
    model = AVEncoder(MediaConfig(), EncoderConfig()).eval()
    frames = torch.randn(1, 16, 3, 224, 224)
    mel = torch.randn(1, 128, EncoderConfig().audio_frames)
    with torch.no_grad():
        out = model(frames, mel)
    assert out.shape == (1, EncoderConfig().num_tokens, 192) and out.shape[1] <= 64


@pytest.mark.parametrize("fusion", ["video", "audio"])
def test_single_branch_withholds_the_other(fusion):
    model = build(fusion=fusion)
    frames, mel = inputs(seed=1)
    other_frames, other_mel = inputs(seed=2)
    with torch.no_grad():
        out = model(frames, mel)
        if fusion == "video":
            assert model.audio is None
            assert torch.equal(out, model(frames, other_mel)) and torch.equal(out, model(frames, None))
            assert not torch.allclose(out, model(other_frames, mel))
        else:
            assert model.video is None
            assert torch.equal(out, model(other_frames, mel)) and torch.equal(out, model(None, mel))
            assert not torch.allclose(out, model(frames, other_mel))


@pytest.mark.parametrize("attention", ATTENTION_MODES)
def test_late_fusion_keeps_branches_apart(attention):
    enc = tiny(attention=attention, fusion="late")
    model = wake(build(attention=attention, fusion="late"))
    frames, mel = inputs(seed=1)
    other_frames, other_mel = inputs(seed=2)
    v, a = positions(enc, "video"), positions(enc, "audio")
    with torch.no_grad():
        out = model(frames, mel)
        new_audio = model(frames, other_mel)
        new_video = model(other_frames, mel)
    torch.testing.assert_close(new_audio[:, v], out[:, v], rtol=0, atol=1e-6)
    assert not torch.allclose(new_audio[:, a], out[:, a])
    torch.testing.assert_close(new_video[:, a], out[:, a], rtol=0, atol=1e-6)


@pytest.mark.parametrize("attention", ATTENTION_MODES)
@pytest.mark.parametrize("fusion,fusion_layer,to_video,to_bottleneck", [
    # a fused layer's bottlenecks carry audio out; the video tokens read it in the next fused layer
    ("bottleneck", 0, True, True),
    ("bottleneck", 1, False, True),
    ("bottleneck", 2, False, False),  # fusion_layer == depth: the bottlenecks never join a block
    ("early", 2, True, False),        # early ignores fusion_layer and has no bottlenecks
])
def test_audio_reaches_video_only_through_fusion(attention, fusion, fusion_layer, to_video, to_bottleneck):
    enc = tiny(attention=attention, fusion=fusion, fusion_layer=fusion_layer)
    model = wake(build(attention=attention, fusion=fusion, fusion_layer=fusion_layer))
    frames, mel = inputs(seed=1)
    _, other_mel = inputs(seed=2)
    v = positions(enc, "video")
    with torch.no_grad():
        out, changed = model(frames, mel), model(frames, other_mel)
    changes = {"video": (out[:, v] - changed[:, v]).abs().max().item(), "bottleneck": 0.0}
    if fusion == "bottleneck":
        z = slice(enc.num_tokens - enc.num_bottlenecks, None)
        changes["bottleneck"] = (out[:, z] - changed[:, z]).abs().max().item()
    for name, reached in [("video", to_video), ("bottleneck", to_bottleneck)]:
        if reached:
            assert changes[name] > 1e-4, f"audio does not reach the {name} tokens: {changes}"
        else:
            assert changes[name] < 1e-6, f"audio reaches the {name} tokens: {changes}"


def step_changes(out: torch.Tensor, new: torch.Tensor, idx: list[int], per_step: int) -> torch.Tensor:
    """Largest change of one modality's output tokens, per time step: (S,)."""
    d = (out[:, idx] - new[:, idx]).abs().amax(dim=(0, 2))  # (S*per_step,)
    return d.view(-1, per_step).amax(dim=1)


@pytest.mark.parametrize("attention,fusion", [m for m in MODES if m[1] != "audio"])
def test_time_survives_in_video_tokens(attention, fusion):
    """Perturbing frame t changes the video token of step t most; strictly only it without mixing."""
    enc = tiny(attention=attention, fusion=fusion)
    model = wake(build(attention=attention, fusion=fusion))
    frames, mel = inputs()
    v = positions(enc, "video")
    with torch.no_grad():
        out = model(frames, mel)
        for t in range(MEDIA.num_frames):
            changed = frames.clone()
            changed[:, t] += torch.randn_like(changed[:, t])
            d = step_changes(out, model(changed, mel), v, enc.video_tokens_per_step)
            others = torch.cat([d[:t], d[t + 1:]])
            assert d[t] > 0 and d[t] > others.max(), f"step changes {d.tolist()} for frame {t}"
            if attention == "space" and fusion in ("video", "late"):
                assert others.max() < 1e-6, f"frames mix under space attention: {d.tolist()}"


@pytest.mark.parametrize("fusion", ["audio", "late", "bottleneck"])
def test_time_survives_in_audio_tokens(fusion):
    """Perturbing the mel columns that only step t's patches cover changes audio token t most."""
    enc = tiny(fusion=fusion)
    model = wake(build(fusion=fusion))
    frames, mel = inputs()
    a = positions(enc, "audio")
    with torch.no_grad():
        out = model(frames, mel)
        for t in range(enc.time_steps):
            changed = mel.clone()
            # step t holds time patches 2t, 2t+1 (columns 8t..8t+12); columns 8t+4..8t+8 are in no other patch
            changed[:, :, 8 * t + 4: 8 * t + 8] += 3 * torch.randn_like(changed[:, :, 8 * t + 4: 8 * t + 8])
            d = step_changes(out, model(frames, changed), a, enc.audio_tokens_per_step)
            assert d[t] > torch.cat([d[:t], d[t + 1:]]).max(), f"step changes {d.tolist()} for step {t}"


def test_untrained_video_branch_is_per_frame():
    """Zero temporal parts: each frame's tokens depend on that frame only, until they are trained."""
    model = build(fusion="video")
    frames, _ = inputs()
    changed = frames.clone()
    changed[:, 0] += 1.0
    with torch.no_grad():
        a, b = model.video(frames), model.video(changed)
        torch.testing.assert_close(a[:, 1:], b[:, 1:], rtol=0, atol=1e-6)
        wake(model)
        a, b = model.video(frames), model.video(changed)
    assert not torch.allclose(a[:, 1:], b[:, 1:])


def test_config_errors_name_the_values():
    with pytest.raises(ValueError, match=r"attention must be one of .*'diagonal'"):
        tiny(attention="diagonal")
    with pytest.raises(ValueError, match=r"frame size 36 is not divisible by patch_size 8") as err:
        AVEncoder(MediaConfig(num_frames=2, size=36, n_mels=16), tiny())
    assert "time_steps 4 > num_frames 2" in str(err.value)  # every problem in one message
    with pytest.raises(ValueError, match=r"time_steps 4 > audio time patches 3"):
        AVEncoder(MEDIA, tiny(audio_frames=16))
    with pytest.raises(ValueError, match=r"n_mels 16 is smaller than audio_patch 32"):
        AVEncoder(MEDIA, tiny(audio_patch=32, audio_frames=64))


def test_input_shape_errors():
    model = build()
    frames, mel = inputs()
    with pytest.raises(ValueError, match=r"frames must have shape \(B, 4, 3, 32, 32\), got \(2, 3, 3, 32, 32\)"):
        model(frames[:, :3], mel)
    with pytest.raises(ValueError, match=r"mel must have shape \(B, 16, 36\), got \(2, 16, 30\)"):
        model(frames, mel[:, :, :30])


def test_conv_stem_fills_the_same_patch_grid():
    model = build(patch_stem="conv")
    frames, mel = inputs()
    stem = model.video.patch_embed
    assert sum(isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2) for m in stem.modules()) == 3  # 8 = 2^3
    with torch.no_grad():
        assert model(frames, mel).shape == build()(frames, mel).shape
        assert stem(frames[:, 0]).shape == (2, TINY["width"], 4, 4)  # 32 px / patch 8
    model.train()
    model(frames, mel).sum().backward()
    assert stem.layers[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"patch_stem must be one of \('linear', 'conv'\), got 'mlp'"):
        tiny(patch_stem="mlp")
    with pytest.raises(ValueError, match=r"power-of-two patch_size, got 6"):
        tiny(patch_stem="conv", patch_size=6)


@pytest.mark.parametrize("fusion", ["bottleneck", "late", "video", "audio"])
def test_summary_tokens_follow_the_time_ordered_ones_and_read_every_branch(fusion):
    plain = build(fusion=fusion)
    with_summary = wake(build(fusion=fusion, summary_tokens=3)).train()
    enc = tiny(fusion=fusion, summary_tokens=3)
    frames, mel = inputs()
    out = with_summary(frames, mel)
    assert out.shape == (2, enc.num_tokens, enc.width) and enc.num_tokens == plain.num_tokens + 3
    summary = out[:, -3:]
    (summary * torch.randn_like(summary)).sum().backward()
    # the queries see every patch of every frame and every audio patch: gradients reach both inputs' stems
    for branch in ("video", "audio"):
        if getattr(with_summary, branch) is not None:
            assert getattr(with_summary, branch).patch_embed.weight.grad.abs().sum() > 0, branch


def test_summary_tokens_tell_frames_apart():
    model = build(summary_tokens=2).eval()
    frames, mel = inputs(batch=1)
    with torch.no_grad():
        a = model(frames, mel)[:, -2:]
        b = model(frames.flip(1), mel)[:, -2:]  # the same frames in reverse order
    assert not torch.allclose(a, b, atol=1e-4)


def test_summary_config_is_checked():
    with pytest.raises(ValueError, match="summary_tokens"):
        tiny(summary_tokens=-1)


# candidates 0-2 scored off their own tokens, "none" off token 3; slots 6 and 7 copy a candidate's 0-2 or 3-5
LAYOUT = PointerConfig(keys=[0, 1, 2], none_key=3, outs=[6, 7], values=[[0, 1, 2], [3, 4, 5]])


def test_slot_pointer_copies_the_chosen_candidates_slots():
    pointer = SlotPointer(TINY["width"], LAYOUT)
    x = torch.randn(2, 8, TINY["width"])
    with torch.no_grad():  # scores read one feature: clip 0 picks candidate 2, clip 1 none of them
        pointer.score.weight[0, 0] = pointer.score_none.weight[0, 0] = 1.0
        x[:, [0, 1, 2, 3], 0] = -50.0
        x[0, 2, 0] = 50.0
        x[1, 3, 0] = 50.0
    out = pointer(x)
    torch.testing.assert_close(out[0, 6], x[0, 2])
    torch.testing.assert_close(out[0, 7], x[0, 5])
    torch.testing.assert_close(out[1, [6, 7]], x[1, [6, 7]])  # none: the slots keep their own tokens
    torch.testing.assert_close(out[:, :6], x[:, :6])


def test_the_slot_pointer_learns_its_scores_and_leaves_the_encoder_to_the_own_slots():
    model = wake(build(summary_tokens=8, pointer=LAYOUT)).train()
    outs = LAYOUT.outs
    frames, mel = inputs()
    features = model.forward_features(frames, mel)
    tokens, own = model.forward_head(features, own=True)
    assert tokens.shape[1] == model.num_tokens and own.shape == (2, len(outs), TINY["width"])
    assert torch.equal(model.forward_head(features), tokens)
    summary = tokens[:, -8:]
    # through the pointer's copies only its scores learn ...
    summary[:, outs].pow(2).sum().backward(retain_graph=True)
    assert model.summary.pointer.score.weight.grad.abs().sum() > 0
    assert model.summary.queries.grad is None or not model.summary.queries.grad.any()
    # ... and the slots' own tokens carry the gradient into the encoder
    own.pow(2).sum().backward()
    assert model.summary.queries.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"pointer indices must lie in \[0, summary_tokens=3\)"):
        tiny(summary_tokens=3, pointer=LAYOUT)
