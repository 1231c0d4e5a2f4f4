"""Pretrained Hugging Face backbones as the encoder's branches, with tiny random models saved to folders
(as transformers' own tests do): loading, shapes, exact inflation, freezing, training, bundles, errors."""
from __future__ import annotations

import json

import pytest
import torch

from tests.helpers import tiny_config
from vqa.config import MediaConfig
from vqa.encoder import AVEncoder
from vqa.encoder.backbone import (AudioBackbone, BackboneNotFound, VideoBackbone, load_pretrained,
                                  split_revision)

MEDIA = MediaConfig(num_frames=4, size=32, n_mels=16)
AUDIO_FRAMES = 64  # Whisper's tiny window: 2 x max_source_positions
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


def _vision(kind: str):
    import transformers as tf

    common = dict(num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8)
    if kind == "vit":
        return tf.ViTModel(tf.ViTConfig(hidden_size=32, intermediate_size=64, **common)), None
    if kind == "deit":
        return tf.DeiTModel(tf.DeiTConfig(hidden_size=32, intermediate_size=64, **common)), None
    if kind == "dinov2":  # width 24: the branch maps it to the encoder's 32
        return tf.Dinov2Model(tf.Dinov2Config(hidden_size=24, mlp_ratio=2, **common)), None
    if kind == "clip":  # the whole dual encoder, as hub CLIP checkpoints are; the branch keeps its vision tower
        text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                    vocab_size=99, max_position_embeddings=16)
        cfg = tf.CLIPConfig(text_config=text, vision_config=dict(hidden_size=32, intermediate_size=64, **common),
                            projection_dim=16)
        return tf.CLIPModel(cfg), {"image_mean": CLIP_MEAN, "image_std": CLIP_STD}
    if kind == "siglip":  # the dual encoder again; no CLS token: the branch uses the patches' mean in its place
        text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                    vocab_size=99, max_position_embeddings=16, bos_token_id=1, eos_token_id=2, pad_token_id=0)
        cfg = tf.SiglipConfig(text_config=text, vision_config=dict(hidden_size=32, intermediate_size=64, **common))
        return tf.SiglipModel(cfg), {"image_mean": [0.5] * 3, "image_std": [0.5] * 3}
    raise AssertionError(kind)


def _audio(kind: str):
    import transformers as tf

    if kind == "ast":
        return tf.ASTModel(tf.ASTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                        intermediate_size=64, patch_size=8, frequency_stride=4, time_stride=4,
                                        num_mel_bins=16, max_length=64))
    if kind == "whisper":
        return tf.WhisperModel(tf.WhisperConfig(
            d_model=48, encoder_layers=2, decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4,
            encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=16, max_source_positions=AUDIO_FRAMES // 2,
            vocab_size=100, max_target_positions=16, pad_token_id=0, bos_token_id=1, eos_token_id=2,
            decoder_start_token_id=1))
    conv = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 4), num_conv_pos_embeddings=16,
                num_conv_pos_embedding_groups=2)
    if kind == "wav2vec2":
        return tf.Wav2Vec2Model(tf.Wav2Vec2Config(**conv))
    if kind == "hubert":
        return tf.HubertModel(tf.HubertConfig(**conv))
    raise AssertionError(kind)


VISION = ["vit", "deit", "dinov2", "clip", "siglip"]
AUDIO = ["ast", "whisper", "wav2vec2", "hubert"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """kind -> a folder holding a tiny random model written by save_pretrained."""
    root = tmp_path_factory.mktemp("backbones")
    out = {}
    for kind in VISION + AUDIO:
        torch.manual_seed(len(out))
        model, pre = _vision(kind) if kind in VISION else (_audio(kind), None)
        folder = root / kind
        model.save_pretrained(folder)
        if pre is not None:
            (folder / "preprocessor_config.json").write_text(json.dumps(pre))
        out[kind] = folder
    return out


def config(video=None, audio=None, **enc):
    base = dict(fusion="late", audio_frames=AUDIO_FRAMES, video_depth=1, audio_depth=1, fusion_layer=1,
                video_backbone=None if video is None else str(video), audio_backbone=None if audio is None else str(audio))
    base.update(enc)
    return tiny_config(**base)


def reference(folder, kind):
    """The backbone alone, as transformers loads it."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(folder)
    if kind in ("clip", "siglip"):
        model = model.vision_model
    if kind == "whisper":
        model = model.get_encoder()
    return model.eval()


def renormalised(frames, folder):
    pre = folder / "preprocessor_config.json"
    mean, std = (json.loads(pre.read_text()).values() if pre.is_file() else
                 ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]) if folder.name in ("deit", "dinov2") else
                 ([0.5] * 3, [0.5] * 3))
    x = frames * 0.5 + 0.5  # vqa's frames are normalised with mean = std = 0.5
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


# ---- video: loading, shapes, inflation ----

@pytest.mark.parametrize("kind", VISION)
def test_untrained_video_branch_is_the_backbone_on_each_frame(folders, kind):
    cfg = config(video=folders[kind])
    branch = VideoBackbone(cfg.media, cfg.encoder).eval()
    frames = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        out = branch(frames)
        hidden = reference(folders[kind], kind)(pixel_values=renormalised(frames.flatten(0, 1), folders[kind]))
        hidden = hidden.last_hidden_state  # (B*T, prefix + 16, Dh)
    assert out.shape == (2, 4, 17, 32) and branch.grid == (4, 4)
    patches = hidden[:, -16:]
    cls = hidden.mean(1, keepdim=True) if kind == "siglip" else hidden[:, :1]
    expected = branch.proj(torch.cat([cls, patches], dim=1)).view(2, 4, 17, 32)
    assert torch.allclose(out, expected, atol=1e-5), (out - expected).abs().max()
    if kind != "dinov2":  # equal widths: no map, the backbone's own features
        assert isinstance(branch.proj, torch.nn.Identity)
        assert torch.allclose(out[:, :, 1:].reshape(8, 16, 32), patches, atol=1e-5)


def test_inflated_branch_on_a_constant_clip_equals_the_2d_network(folders):
    cfg = config(video=folders["vit"], video_depth=2, audio_depth=2)
    branch = VideoBackbone(cfg.media, cfg.encoder).eval()
    image = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        constant = branch(image.expand(4, 3, 32, 32)[None])  # (1, T, 17, D)
        flat = reference(folders["vit"], "vit")(pixel_values=renormalised(image, folders["vit"])).last_hidden_state
        moving = torch.randn(1, 4, 3, 32, 32)
        alone = branch.per_frame(moving)  # the 2D network on each frame
        for block in branch.blocks:  # as if trained: the temporal attention moves off zero
            block.temporal.fc.weight.normal_(0, 0.5)
        mixed = branch(moving)
    for t in range(4):
        assert torch.allclose(constant[0, t], flat[0], atol=1e-5)
    assert not torch.allclose(mixed, alone, atol=1e-3)  # a live temporal part does mix frames


def test_frames_at_another_size_resample_the_position_embeddings(folders):
    cfg = config(video=folders["vit"])
    cfg.media = MediaConfig(num_frames=4, size=48, n_mels=16)
    branch = VideoBackbone(cfg.media, cfg.encoder).eval()
    frames = torch.randn(1, 4, 3, 48, 48)
    with torch.no_grad():
        out = branch(frames)
        ref = reference(folders["vit"], "vit")(pixel_values=frames[0], interpolate_pos_encoding=True)
    assert out.shape == (1, 4, 37, 32) and branch.grid == (6, 6)
    assert torch.allclose(out[0], ref.last_hidden_state, atol=1e-5)


# ---- audio: what each kind is fed, shapes ----

@pytest.mark.parametrize("kind,grid", [("ast", (3, 15)), ("whisper", (1, 32)), ("wav2vec2", (1, 511)),
                                       ("hubert", (1, 511))])
def test_audio_branch_shapes_and_identity_start(folders, kind, grid):
    cfg = config(audio=folders[kind], fusion="audio")
    branch = AudioBackbone(cfg.media, cfg.encoder).eval()
    assert branch.grid == grid
    x = (torch.randn(2, AUDIO_FRAMES * 160) if branch.takes == "waveform" else torch.randn(2, 16, AUDIO_FRAMES))
    with torch.no_grad():
        out = branch(x)
        hidden = reference(folders[kind], kind)(**branch.backbone_input(x)).last_hidden_state
    assert out.shape == (2, 2 + grid[0] * grid[1], 32)
    body = hidden if kind == "ast" else hidden[:, : grid[1]]
    assert torch.allclose(out[:, 2:], branch.proj(body[:, -grid[0] * grid[1]:]), atol=1e-5)
    if kind == "whisper":
        assert isinstance(branch.proj, torch.nn.Linear)  # width 48 mapped to the encoder's 32


def test_whisper_is_fed_its_own_log_mel_convention(folders):
    cfg = config(audio=folders["whisper"], fusion="audio")
    branch = AudioBackbone(cfg.media, cfg.encoder)
    mel = torch.randn(1, 16, AUDIO_FRAMES)
    features = branch.backbone_input(mel)["input_features"]
    ln = mel * 3.5 - 7.5
    log10 = torch.maximum(ln / 2.302585092994046, ln.max() / 2.302585092994046 - 8)
    assert features.shape == (1, 16, AUDIO_FRAMES)  # the tiny window is exactly the clip's frames
    assert torch.allclose(features, (log10 + 4) / 4, atol=1e-5)


def test_audio_backbone_checks_mel_bins_and_inputs(folders):
    cfg = config(audio=folders["ast"], fusion="audio")
    cfg.media = MediaConfig(num_frames=4, size=32, n_mels=20)
    with pytest.raises(ValueError, match="takes 16 mel bins, media.n_mels is 20"):
        AudioBackbone(cfg.media, cfg.encoder)
    cfg = config(audio=folders["wav2vec2"], fusion="audio")
    branch = AudioBackbone(cfg.media, cfg.encoder)
    with pytest.raises(ValueError, match="16 kHz waveform"):
        branch(torch.randn(1, 16, AUDIO_FRAMES))


# ---- fusion, freezing, training ----

@pytest.mark.parametrize("fusion", ["late", "bottleneck", "early"])
def test_encoder_with_two_backbones_gives_its_tokens(folders, fusion):
    cfg = config(video=folders["dinov2"], audio=folders["ast"], fusion=fusion)
    encoder = AVEncoder(cfg.media, cfg.encoder)
    tokens = encoder(torch.randn(2, 4, 3, 32, 32), torch.randn(2, 16, AUDIO_FRAMES))
    assert tokens.shape == (2, cfg.encoder.num_tokens, 32)


def _train(encoder, steps, frames, mel, target):
    # as the training loop does: every encoder parameter asked to train
    for p in encoder.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(encoder.parameters(), lr=3e-3)
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(encoder(frames, mel), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("mode,moved", [("frozen", set()), ("last:1", {"layers.1", "layernorm"}),
                                        ("full", {"embeddings", "layers.0", "layers.1", "layernorm"}),
                                        ("lora:2", {"layers.0 lora", "layers.1 lora"})])
def test_training_lowers_the_loss_and_keeps_frozen_layers(folders, mode, moved):
    torch.manual_seed(0)
    cfg = config(video=folders["vit"], audio=folders["ast"], backbone_train=mode)
    encoder = AVEncoder(cfg.media, cfg.encoder).train()
    before = {n: p.detach().clone() for n, p in encoder.video.backbone.named_parameters()}
    frames, mel = torch.randn(2, 4, 3, 32, 32), torch.randn(2, 16, AUDIO_FRAMES)
    target = torch.randn(2, cfg.encoder.num_tokens, 32)
    losses = _train(encoder, 6, frames, mel, target)
    assert losses[-1] < 0.9 * losses[0], losses
    changed = {n for n, p in encoder.video.backbone.named_parameters() if not torch.equal(p, before[n])}
    parts = {(".".join(n.split(".")[:2]) if n.startswith("layers.") else n.split(".")[0])
             + (" lora" if "lora_" in n else "") for n in changed}
    assert parts == moved, sorted(changed)[:5]  # the pooler is unused: never moves
    saved = [k for k in encoder.state_dict() if k.startswith("video.backbone.")]
    if mode == "lora:2":  # a bundle holds the adapters, not the backbone
        assert saved and all("lora_" in k for k in saved), saved[:3]


def test_state_dict_leaves_out_frozen_weights_and_checks_them(folders):
    cfg = config(video=folders["vit"], audio=folders["ast"], backbone_train="last:1")
    encoder = AVEncoder(cfg.media, cfg.encoder)
    state = encoder.state_dict()
    assert not any(k.startswith("video.backbone.layers.0.") or "embeddings" in k for k in state)
    assert any(k.startswith("video.backbone.layers.1.") for k in state)
    again = AVEncoder(cfg.media, cfg.encoder)
    again.load_state_dict(state)  # strict: the frozen weights come from the backbone folder
    state["video.frozen_checksum"] = state["video.frozen_checksum"] + 1.0
    with pytest.raises(ValueError, match="holds other weights"):
        again.load_state_dict(state)


# ---- bundles ----

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


def test_bundle_round_trips_and_names_its_backbones(folders, tiny_llm_folder, tmp_path):
    import shutil

    from vqa.api import VideoQA
    from vqa.bundle import CONFIG_NAME, BundleError  # noqa: F401

    video, audio = tmp_path / "siglip", tmp_path / "whisper"
    shutil.copytree(folders["siglip"], video)
    shutil.copytree(folders["whisper"], audio)
    cfg = config(video=video, audio=audio, backbone_train="last:1")
    cfg.llm = str(tiny_llm_folder)
    qa = VideoQA.untrained(cfg, seed=3)
    with torch.no_grad():  # as if trained
        for block in qa.model.encoder.video.blocks:
            block.temporal.fc.weight.normal_(0, 0.1)
    qa.save_pretrained(tmp_path / "bundle")
    saved = json.loads((tmp_path / "bundle" / CONFIG_NAME).read_text())["encoder"]
    assert (saved["video_backbone"], saved["audio_backbone"]) == (str(video), str(audio))
    assert saved["backbone_train"] == "last:1"

    frames, mel = torch.randn(1, 4, 3, 32, 32), torch.randn(1, 16, AUDIO_FRAMES)
    again = VideoQA.from_pretrained(tmp_path / "bundle")
    with torch.no_grad():
        assert torch.equal(qa.model.get_video_features(frames, mel), again.model.get_video_features(frames, mel))
    answer = again.ask(_clip(tmp_path), "What is seen?", max_new_tokens=3)
    assert isinstance(answer, str)

    shutil.rmtree(video)
    with pytest.raises(BackboneNotFound, match=f"(?s)video backbone folder '{video}' does not exist.*restore it"):
        VideoQA.from_pretrained(tmp_path / "bundle")


def _clip(tmp_path):
    from tests.helpers import write_clip

    return write_clip(tmp_path / "clip.mp4", seconds=0.5)


HUB_CHILD = """
import sys
from vqa.config import EncoderConfig, MediaConfig
from vqa.encoder.backbone import BackboneNotFound, VideoBackbone
media = MediaConfig(num_frames=4, size=32, n_mels=16)
for name in sys.argv[1:]:
    enc = EncoderConfig(width=32, heads=4, video_depth=1, audio_depth=1, fusion="video", fusion_layer=0,
                        time_steps=4, video_backbone=name)
    try:
        VideoBackbone(media, enc)
        print(enc.video_backbone)
    except BackboneNotFound as e:
        print("not found:", str(e).splitlines()[0])
"""


def test_hub_id_is_pinned_to_the_commit_it_resolved_to(folders, tmp_path):
    import os
    import shutil
    import subprocess
    import sys

    from tests.conftest import ROOT

    assert split_revision("google/siglip-base-patch16-224@abc123") == ("google/siglip-base-patch16-224", "abc123")
    assert split_revision("/models/vit") == ("/models/vit", None)
    # the hub cache's layout: refs/main names the snapshot holding the files
    repo = tmp_path / "hf" / "hub" / "models--vqa-test--vit"
    commit = "1234567890" * 4
    shutil.copytree(folders["vit"], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    env = {**{k: v for k, v in os.environ.items() if k != "HF_ENDPOINT"}, "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    other = "f" * 40
    proc = subprocess.run([sys.executable, "-c", HUB_CHILD, "vqa-test/vit", f"vqa-test/vit@{commit}",
                           f"vqa-test/vit@{other}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[:2] == [f"vqa-test/vit@{commit}"] * 2, proc.stdout
    assert lines[2].startswith(f"not found: cannot load the video backbone 'vqa-test/vit@{other}'"), lines[2]


# ---- errors ----

def test_unsupported_model_kind_is_named(tmp_path):
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                         vocab_size=99)).save_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match=r"is a 'bert' model, not a supported video backbone; supported: .*'vit'"):
        load_pretrained(str(tmp_path / "bert"), "video")
    with pytest.raises(ValueError, match="not a supported audio backbone"):
        load_pretrained(str(tmp_path / "bert"), "audio")


def test_hub_id_without_network_points_to_local_folders(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(BackboneNotFound, match=r"(?s)not in the local Hugging Face cache.*HF_HUB_OFFLINE.*"
                                               r"save_pretrained.*video_backbone: /path/to/DIR"):
        load_pretrained("google/siglip-base-patch16-224", "video")


def test_bad_backbone_train_mode_is_refused():
    with pytest.raises(ValueError, match="backbone_train must be 'frozen', 'full', 'last:N' or 'lora:R'"):
        config(backbone_train="last:0")


# ---- the whole recipe ----

@pytest.mark.slow
def test_config_naming_backbones_trains_end_to_end(folders, tiny_llm_folder, tmp_path):
    """configs/tiny.yaml with a ViT per frame and an AST under the audio branch (frozen but for their last
    layer): every stage runs through the training loop and the bundle answers through VideoQA."""
    import yaml

    from tests.conftest import ROOT
    from vqa.api import VideoQA
    from vqa.avsynth.generate import generate
    from vqa.train.config import load_config
    from vqa.train.loop import train

    generate(tmp_path / "train-split", 8, seed=101, workers=1, progress=False)
    generate(tmp_path / "val-split", 4, seed=102, workers=1, progress=False)
    raw = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    raw["model"]["llm"] = str(tiny_llm_folder)
    raw["model"]["encoder"].update(patch_stem="linear", video_backbone=str(folders["vit"]),
                                   audio_backbone=str(folders["ast"]), backbone_train="last:1")
    raw["train"].update(out_dir=str(tmp_path / "run"), progress=False,
                        data={"train": str(tmp_path / "train-split"), "val": str(tmp_path / "val-split")})
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(raw))
    model_config, train_config = load_config(tmp_path / "run.yaml")
    before = {n: p.detach().clone() for n, p in AVEncoder(model_config.media, model_config.encoder)
              .video.backbone.named_parameters()}
    train(model_config, train_config)
    final = tmp_path / "run" / "final"
    saved = json.loads((final / "vqa_config.json").read_text())["encoder"]
    assert saved["video_backbone"] == str(folders["vit"]) and saved["backbone_train"] == "last:1"
    qa = VideoQA.from_pretrained(final)
    after = dict(qa.model.encoder.video.backbone.named_parameters())
    assert all(torch.equal(after[n], p) for n, p in before.items() if n.startswith(("embeddings", "layers.0.")))
    assert any(not torch.equal(after[n], p) for n, p in before.items() if n.startswith("layers.1."))
    clip = sorted((tmp_path / "val-split" / "clips").glob("*.mp4"))[0]
    assert isinstance(qa.ask(clip, "What color is the object that beeps?", max_new_tokens=4), str)


def test_gpu_recipe_parses_and_names_its_backbones():
    from tests.conftest import ROOT
    from vqa.train.config import load_config

    model, train = load_config(ROOT / "configs" / "gpu-musicavqa.yaml")
    enc = model.encoder
    assert (enc.video_backbone, enc.audio_backbone, model.llm) == (
        "google/siglip-base-patch16-224", "openai/whisper-base", "Qwen/Qwen2.5-0.5B-Instruct")
    assert enc.num_tokens == 84 and model.media.n_mels == 80 and enc.audio_frames == 3000
    assert [s.train for s in train.stages] == [["encoder", "projector"], ["encoder", "projector", "lora"]]
