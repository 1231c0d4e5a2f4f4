"""Encoder inputs: frame normalisation and the log-mel spectrogram (pitch, timing, silence)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vqa.config import MediaConfig
from vqa.features import (
    LOG_FLOOR, MEL_MEAN, MEL_STD, clip_features, frames_to_tensor, log_mel, n_fft_for,
)
from vqa.media import Clip

CFG = MediaConfig(num_frames=4, size=32, n_mels=64)
SR = CFG.sample_rate
SILENCE = (np.log(LOG_FLOOR) - MEL_MEAN) / MEL_STD


def sine(freq: float, seconds: float, start: float = 0.0, stop: float | None = None, amp: float = 0.5):
    t = np.arange(int(round(seconds * SR))) / SR
    x = amp * np.sin(2 * np.pi * freq * t)
    x[(t < start) | (t >= (seconds if stop is None else stop))] = 0
    return x.astype(np.float32)


def test_frames_to_tensor_layout_and_range():
    frames = np.zeros((2, 8, 8, 3), np.uint8)
    frames[0, ..., 0] = 255  # frame 0 red
    frames[1, :4] = 255  # frame 1 white on top, black below
    x = frames_to_tensor(frames)
    assert x.shape == (2, 3, 8, 8) and x.dtype == torch.float32
    assert torch.allclose(x[0, 0], torch.ones(8, 8)) and torch.allclose(x[0, 1:], -torch.ones(2, 8, 8))
    assert torch.allclose(x[1, :, :4], torch.ones(3, 4, 8)) and torch.allclose(x[1, :, 4:], -torch.ones(3, 4, 8))


@pytest.mark.parametrize("bad", [np.zeros((2, 8, 8, 3), np.float32), np.zeros((8, 8, 3), np.uint8),
                                 np.zeros((2, 8, 8, 4), np.uint8)])
def test_frames_to_tensor_rejects_bad_input(bad):
    with pytest.raises(ValueError, match="uint8"):
        frames_to_tensor(bad)


def test_n_fft_is_next_power_of_two():
    assert CFG.win_length == 400 and n_fft_for(400) == 512
    assert [n_fft_for(w) for w in (256, 257, 512, 1000)] == [256, 512, 512, 1024]


@pytest.mark.parametrize("seconds", [0.0, 0.004, 0.01, 1.0, 2.345, 3.0])
def test_frames_cover_the_duration(seconds):
    mel = log_mel(sine(440, 1.0), CFG, duration=seconds)
    assert mel.shape == (CFG.n_mels, int(np.floor(seconds * 1000 / CFG.hop_ms + 1e-9)) + 1)
    assert mel.dtype == torch.float32 and torch.isfinite(mel).all()


def test_duration_pads_with_silence_and_trims():
    x = sine(440, 2.0)
    assert torch.allclose(log_mel(x, CFG, duration=1.0), log_mel(x[:SR], CFG))
    padded = log_mel(x[:SR], CFG, duration=2.0)
    assert padded.shape[1] == 201
    assert torch.allclose(padded[:, 110:], torch.full_like(padded[:, 110:], SILENCE))  # past the audio: silence
    assert padded[:, 10:90].max(0).values.min() > SILENCE + 3  # the tone's bin, all along the audio


@pytest.mark.parametrize("freq", [330.0, 1320.0, 3000.0])
def test_tone_peaks_in_its_mel_bin(freq):
    import librosa

    centres = librosa.mel_frequencies(CFG.n_mels + 2, fmin=0.0, fmax=SR / 2)[1:-1]
    mel = log_mel(sine(freq, 1.0), CFG)
    peak = int(mel[:, 5:-5].mean(1).argmax())
    assert abs(peak - int(np.abs(centres - freq).argmin())) <= 1, (peak, centres[peak], freq)


def test_silence_noise_and_tone_are_distinguishable():
    rng = np.random.default_rng(0)
    silence = log_mel(np.zeros(SR, np.float32), CFG)
    noise = log_mel(0.02 * rng.uniform(-1, 1, SR).astype(np.float32), CFG)
    tone = log_mel(sine(1320, 1.0) + 0.02 * rng.uniform(-1, 1, SR).astype(np.float32), CFG)
    assert torch.allclose(silence, torch.full_like(silence, SILENCE))  # fixed normalisation: silence is constant
    assert noise.mean() > silence.mean() + 1.0
    assert tone.max() > noise.max() + 1.0
    # typical sound lands near zero mean, unit scale
    assert -1.5 < noise.mean() < 1.5 and tone.max() < 5


def beep_energy(mel: torch.Tensor) -> np.ndarray:
    return mel.max(0).values.numpy()  # the loudest bin: the tone's


@pytest.mark.parametrize(
    "seconds, start, stop, num_frames",
    [
        (3.0, 1.2, 1.5, 30),  # shrink 301 frames to 30: frames 12-14 cover 1.2-1.5 s
        (60.0, 40.0, 40.2, 16),  # shrink a long clip: a 0.2 s beep must not fall between samples
        (0.5, 0.25, 0.35, 100),  # stretch 51 frames to 100
    ],
)
def test_beep_lands_on_the_right_fixed_frames(seconds, start, stop, num_frames):
    mel = log_mel(sine(1320, seconds, start, stop), CFG, duration=seconds, num_frames=num_frames)
    assert mel.shape == (CFG.n_mels, num_frames)
    energy = beep_energy(mel)
    slot = seconds / num_frames
    centres = (np.arange(num_frames) + 0.5) * slot
    inside = (centres > start + slot) & (centres < stop - slot)  # slots wholly inside the beep
    outside = (centres < start - 2 * slot) | (centres > stop + 2 * slot)
    loud = int(energy.argmax())
    assert start - slot <= centres[loud] <= stop + slot, (loud, centres[loud])
    assert energy[outside].max() < energy[loud] - 1.0
    if inside.any():
        assert energy[inside].min() > energy[outside].max() + 1.0


def fake_clip(num_frames=4, size=32, seconds=1.0, rate=SR):
    frames = np.zeros((num_frames, size, size, 3), np.uint8)
    return Clip(path="x.mp4", frames=frames, timestamps=np.zeros(num_frames), audio=sine(440, seconds),
                sample_rate=rate, has_audio=True, duration=seconds, width=size, height=size, fps=10.0)


def test_clip_features_shapes_and_checks():
    frames, mel = clip_features(fake_clip(), CFG)
    assert frames.shape == (4, 3, 32, 32) and mel.shape == (CFG.n_mels, 101)
    _, mel = clip_features(fake_clip(), CFG, mel_frames=64)
    assert mel.shape == (CFG.n_mels, 64)
    with pytest.raises(ValueError, match="load_clip"):
        clip_features(fake_clip(num_frames=8), CFG)
    with pytest.raises(ValueError, match="Hz"):
        clip_features(fake_clip(rate=8000), CFG)
