"""Loading transformers ViT / AST weights into the branches, and resizing our own checkpoints."""
from __future__ import annotations

import re

import pytest
import torch

from vqa.config import EncoderConfig, MediaConfig
from vqa.encoder import (AudioBranch, AVEncoder, VideoBranch, checkpoint_filter_fn, load_ast_into_audio,
                         load_vit_into_video)
from vqa.encoder.pretrained import resample_pos_embed

EPS = 1e-6  # non-default on both sides, so a mismatch would show
MEDIA = MediaConfig(num_frames=3, size=32, n_mels=16)


def enc_config(**overrides) -> EncoderConfig:
    base = dict(width=32, heads=4, mlp_ratio=2.0, layer_norm_eps=EPS, patch_size=8, video_depth=2, audio_depth=2,
                audio_patch=8, audio_stride=4, audio_frames=64, time_steps=3, num_bottlenecks=2, fusion_layer=1)
    return EncoderConfig(**{**base, **overrides})


@torch.no_grad()
def jitter(model: torch.nn.Module) -> torch.nn.Module:
    """Move every weight off its init (norms included) so each one's mapping matters."""
    torch.manual_seed(0)
    for p in model.parameters():
        p.add_(0.2 * torch.randn_like(p))
    return model.eval()


def vit_model(image_size: int = 32, layers: int = 2, hidden: int = 32):
    from transformers import ViTConfig, ViTModel

    cfg = ViTConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=64,
                    image_size=image_size, patch_size=8, layer_norm_eps=EPS, hidden_act="gelu")
    return jitter(ViTModel(cfg, add_pooling_layer=True))


def ast_model(max_length: int = 64):
    from transformers import ASTConfig, ASTModel

    cfg = ASTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, patch_size=8,
                    frequency_stride=4, time_stride=4, num_mel_bins=16, max_length=max_length, layer_norm_eps=EPS,
                    hidden_act="gelu")
    return jitter(ASTModel(cfg))


def legacy(state_dict: dict, prefix: str = "") -> dict:
    """transformers' current names -> the older layout of hub checkpoints, under a task model's prefix."""
    renames = [("attention.q_proj", "attention.attention.query"), ("attention.k_proj", "attention.attention.key"),
               ("attention.v_proj", "attention.attention.value"), ("attention.o_proj", "attention.output.dense"),
               ("mlp.fc1", "intermediate.dense"), ("mlp.fc2", "output.dense")]
    out = {}
    for key, value in state_dict.items():
        key = re.sub(r"^layers\.(\d+)\.", r"encoder.layer.\1.", key)
        for new, old in renames:
            key = key.replace(new, old)
        out[prefix + key] = value
    if prefix:
        out["classifier.weight"] = torch.zeros(5, 32)  # a task model's head, outside the prefix
    return out


LAYOUTS = ["current", "legacy", "prefixed"]


def in_layout(state_dict: dict, layout: str, prefix: str) -> dict:
    return {"current": dict(state_dict), "legacy": legacy(state_dict), "prefixed": legacy(state_dict, prefix)}[layout]


@pytest.mark.parametrize("attention", ["divided", "space"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_video_branch_is_vit_per_frame(attention, layout):
    vit = vit_model()
    torch.manual_seed(1)
    video = VideoBranch(MEDIA, enc_config(attention=attention)).eval()
    frames = torch.randn(2, MEDIA.num_frames, 3, 32, 32)
    with torch.no_grad():
        expected = vit(pixel_values=frames.flatten(0, 1)).last_hidden_state.view(2, MEDIA.num_frames, 17, 32)
        assert not torch.allclose(video.forward_tokens(frames), expected, atol=1e-3)
        torch.nn.init.normal_(video.time_embed)  # a trained branch: loading restarts its temporal parts
        report = load_vit_into_video(video, in_layout(vit.state_dict(), layout, "vit."))
        got = video.forward_tokens(frames)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert all(k == "time_embed" or ".temporal." in k for k in report.missing) and "time_embed" in report.missing
    assert "pooler.dense.weight" in report.ignored


@pytest.mark.parametrize("layout", LAYOUTS)
def test_audio_branch_is_ast(layout):
    ast = ast_model()
    torch.manual_seed(1)
    audio = AudioBranch(MEDIA, enc_config()).eval()
    mel = torch.randn(2, MEDIA.n_mels, 64)
    with torch.no_grad():
        expected = ast(mel.transpose(1, 2)).last_hidden_state  # AST takes (B, time, mel bins)
        assert not torch.allclose(audio.forward_tokens(mel), expected, atol=1e-3)
        report = load_ast_into_audio(audio, in_layout(ast.state_dict(), layout, "audio_spectrogram_transformer."))
        got = audio.forward_tokens(mel)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert report.missing == [] and report.ignored == []


def test_vit_at_another_size_and_depth():
    """A 48 px, 3-layer ViT into a 32 px, 2-layer branch: embeddings resampled, the extra layer ignored."""
    vit = vit_model(image_size=48, layers=3)
    video = VideoBranch(MEDIA, enc_config())
    report = load_vit_into_video(video, vit.state_dict())
    assert video.pos_embed.shape == (1, 1 + 16, 32)
    assert any(k.startswith("layers.2.") for k in report.ignored)
    torch.testing.assert_close(video.pos_embed[:, 0], vit.embeddings.position_embeddings[:, 0])  # CLS kept
    torch.testing.assert_close(video.blocks[1].norm1.weight, vit.layers[1].layernorm_before.weight)


def test_ast_at_another_length():
    ast = ast_model(max_length=128)  # 3 x 31 patches into the branch's 3 x 15
    audio = AudioBranch(MEDIA, enc_config())
    load_ast_into_audio(audio, ast.state_dict())
    assert audio.pos_embed.shape == (1, 2 + 3 * 15, 32)


def test_checkpoint_mismatches_name_the_values():
    video = VideoBranch(MEDIA, enc_config())
    with pytest.raises(ValueError, match="ViT checkpoint has width 64, the branch 32"):
        load_vit_into_video(video, vit_model(hidden=64).state_dict())
    with pytest.raises(ValueError, match="ViT checkpoint has 1 layers, the branch needs 2"):
        load_vit_into_video(video, vit_model(layers=1).state_dict())
    with pytest.raises(ValueError, match=r"AST state dict expected: one key .*found \[\]"):
        load_ast_into_audio(AudioBranch(MEDIA, enc_config()), {"weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"patch_embed.weight: checkpoint \(32, 3, 8, 8\), branch \(32, 3, 16, 16\)"):
        load_vit_into_video(VideoBranch(MEDIA, enc_config(patch_size=16)), vit_model().state_dict())


def test_resample_keeps_constants_and_prefix():
    pos = torch.cat([torch.full((1, 1, 8), 7.0), torch.full((1, 9, 8), 2.0)], dim=1)  # CLS + 3x3 grid
    out = resample_pos_embed(pos, (5, 4), (3, 3), num_prefix_tokens=1)
    assert out.shape == (1, 1 + 20, 8)
    torch.testing.assert_close(out, torch.cat([pos[:, :1], torch.full((1, 20, 8), 2.0)], dim=1))
    assert resample_pos_embed(pos, (3, 3), (3, 3), 1) is pos


@pytest.mark.parametrize("fusion", ["bottleneck", "late"])
def test_encoder_checkpoint_at_other_frames_size_and_steps(fusion):
    small = AVEncoder(MediaConfig(num_frames=2, size=16, n_mels=16),
                      enc_config(fusion=fusion, time_steps=2, audio_frames=32))
    big = AVEncoder(MEDIA, enc_config(fusion=fusion))
    state = small.state_dict()
    filtered = checkpoint_filter_fn(state, big)
    big.load_state_dict(filtered)  # strict: every key present, every shape right
    assert big.video.pos_embed.shape == (1, 17, 32) and big.video.time_embed.shape == (1, 3, 32)
    assert big.audio.pos_embed.shape == (1, 2 + 3 * 15, 32) and big.head.step_embed.shape == (1, 3, 32)
    assert state["video.pos_embed"].shape == (1, 5, 32)  # the input is left alone
    torch.testing.assert_close(big.video.blocks[0].attn.qkv.weight, small.video.blocks[0].attn.qkv.weight)
    frames, mel = torch.randn(1, 3, 3, 32, 32), torch.randn(1, 16, 64)
    with torch.no_grad():
        assert big(frames, mel).shape == (1, big.num_tokens, 32)


def test_encoder_checkpoint_same_config_unchanged():
    model = AVEncoder(MEDIA, enc_config())
    state = model.state_dict()
    filtered = checkpoint_filter_fn(state, model)
    assert filtered.keys() == state.keys() and all(filtered[k] is state[k] for k in state)


def test_vit_does_not_load_into_a_conv_stem():
    video = VideoBranch(MEDIA, enc_config(patch_stem="conv"))
    with pytest.raises(ValueError, match="patch_stem 'linear' only"):
        load_vit_into_video(video, vit_model().state_dict())
