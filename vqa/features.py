"""Encoder inputs from a clip: normalised frames and a normalised log-mel spectrogram.

Notation: T frames, S side, M mel bins (n_mels), F spectrogram frames, L audio samples.

Spectrogram: a Hann window of win_ms (25 ms) every hop_ms (10 ms), FFT size the next power
of two (400 samples -> 512), power spectrum, librosa's Slaney mel filterbank (0 Hz to
Nyquist), natural log of (mel + 1e-6). Frames are centred: frame f is centred at f * hop,
so a clip of D seconds gives F = floor(D * 1000 / hop_ms) + 1 frames spanning [0, D].

Normalisation uses fixed constants, never per-clip statistics, so silence stays far below
any sound: (log_mel - MEL_MEAN) / MEL_STD, see the constants for where they come from.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from vqa.config import MediaConfig

# ViT's default image processor (transformers ViTImageProcessor): per-channel mean = std = 0.5, i.e. [-1, 1].
IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.5, 0.5, 0.5)
# Floor inside the log: digital silence maps to log(1e-6) = -13.8, far below any recorded sound.
LOG_FLOOR = 1e-6
# Mean and standard deviation of log(mel + 1e-6), pooled over speech, music and room sound (real
# clips: per-clip means -6.1 to -8.5, stds 2.3 to 4.3) and AVSynth-like beeps in faint noise (mean
# -7.6, std 1.0 to 1.5), rounded. They play the role of AST's (-4.27, 4.57), which belong to Kaldi
# fbank features on another scale. Silence maps to (-13.8 + 7.5) / 3.5 = -1.8.
MEL_MEAN = -7.5
MEL_STD = 3.5


def frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """(T, S, S, 3) uint8 RGB -> (T, 3, S, S) float32, normalised with IMAGE_MEAN / IMAGE_STD."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be a (T, S, S, 3) uint8 array, got {frames.dtype} {tuple(frames.shape)}")
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div_(255)  # (T, 3, S, S)
    mean = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


def n_fft_for(win_length: int) -> int:
    """FFT size: the next power of two at or above the window (400 -> 512)."""
    return 1 << max(int(win_length) - 1, 1).bit_length()


def _librosa_mel(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    import librosa  # imported here: its import is slow and only audio features need it

    return librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=0.0, fmax=sample_rate / 2)


@functools.lru_cache(maxsize=8)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> torch.Tensor:
    """(M, n_fft // 2 + 1) float32 Slaney mel filterbank from librosa, built once per shape."""
    return torch.from_numpy(_librosa_mel(sample_rate, n_fft, n_mels)).float()


def log_mel(
    audio: np.ndarray,
    media_cfg: MediaConfig,
    duration: float | None = None,
    num_frames: int | None = None,
) -> torch.Tensor:
    """(L,) mono audio at media_cfg.sample_rate -> (M, F) float32 normalised log-mel.

    `duration` (seconds) pads with silence or trims the audio to the clip's length first, so
    F = floor(duration * 1000 / hop_ms) + 1. `num_frames` resizes the time axis to exactly that
    many frames, each covering an equal slot of the clip (frame j is centred at
    (j + 0.5) * duration / num_frames), as the video frames do: mel energies are averaged over
    each slot when shrinking (a short beep is never skipped) and interpolated linearly when
    stretching, before the log.
    """
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise ValueError(f"audio must be a 1-D mono signal, got shape {audio.shape}")
    if duration is not None and duration < 0:
        raise ValueError(f"duration must be >= 0, got {duration}")
    if num_frames is not None and num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    sr, win, hop = media_cfg.sample_rate, media_cfg.win_length, media_cfg.hop_length
    n_fft = n_fft_for(win)
    x = torch.from_numpy(audio.astype(np.float32, copy=False))
    if duration is not None:
        n = int(round(duration * sr))
        x = F.pad(x, (0, max(n - x.numel(), 0)))[:n]  # (L,) = duration * sr
    if x.numel() == 0:
        x = torch.zeros(1)  # an empty clip still has one (silent) frame
    spec = torch.stft(x, n_fft, hop_length=hop, win_length=win, window=torch.hann_window(win),
                      center=True, pad_mode="constant", return_complex=True)  # (n_fft/2+1, F)
    mel = mel_filterbank(sr, n_fft, media_cfg.n_mels) @ spec.abs().square()  # (M, F)
    if num_frames is not None and num_frames != mel.shape[1]:
        if num_frames < mel.shape[1]:
            mel = F.adaptive_avg_pool1d(mel[None], num_frames)[0]  # (M, num_frames)
        else:
            mel = F.interpolate(mel[None], size=num_frames, mode="linear", align_corners=False)[0]  # (M, num_frames)
    return (torch.log(mel + LOG_FLOOR) - MEL_MEAN) / MEL_STD


def clip_features(clip, media_cfg: MediaConfig, mel_frames: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A loaded `vqa.media.Clip` -> ((T, 3, S, S) frames, (M, F) log-mel over the clip's duration).

    `mel_frames` fixes F (see `log_mel`'s `num_frames`) so clips of any length stack in a batch.
    """
    expected = (media_cfg.num_frames, media_cfg.size, media_cfg.size)
    if tuple(clip.frames.shape[:3]) != expected:
        raise ValueError(
            f"clip {clip.path} has frames of shape {tuple(clip.frames.shape)}, the config wants "
            f"{expected + (3,)}: load it with load_clip(path, {media_cfg.num_frames}, {media_cfg.size})")
    if clip.sample_rate != media_cfg.sample_rate:
        raise ValueError(f"clip {clip.path} has audio at {clip.sample_rate} Hz, the config wants "
                         f"{media_cfg.sample_rate} Hz")
    return frames_to_tensor(clip.frames), log_mel(clip.audio, media_cfg, clip.duration, mel_frames)
