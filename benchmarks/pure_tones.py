"""How far speech lies from a pure tone: the statistic that keeps beeps out of Whisper.

    python benchmarks/pure_tones.py

Silero VAD takes some beeps for a voice, and Whisper then spends most of a second on a whole window to
write nothing, or a tag, or words that were never said. vqa.perception.speech skips voiced audio whose
`tone_share` (the strongest frequency's share of the energy in its loud frames) reaches TONE_SHARE.
This prints that share for the voiced audio of recorded and synthetic speech, music, and tones:
every Asterisk prompt (Debian's asterisk-core-sounds-en-wav, CC-BY-SA 3.0; skipped when not installed),
espeak-ng sentences in several voices and languages, the clips of ../shared/media with a voice
(skipped when absent), the melody of benchmarks/real_clips_media.py, and beeping clips: AVSynth clips
(rendered here) and the 720p clip of benchmarks/bench_generate.py. The VAD finds a voice in only some of
the beeping clips; the table says how many.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.real_clips_media import espeak_missing, melody, speak, write_clip  # noqa: E402
from vqa.media import load_clip  # noqa: E402
from vqa.perception import speech  # noqa: E402

ASTERISK = Path("/usr/share/asterisk/sounds/en")
VOICES = ["en", "en-us", "en+f3", "en+m7", "fr", "de", "es", "it"]
SENTENCE = "The quick brown fox jumps over the lazy dog, then it sleeps all afternoon."


def resample(audio: np.ndarray, rate: int) -> np.ndarray:
    import librosa

    return librosa.resample(audio.astype(np.float32), orig_sr=rate, target_sr=speech.SAMPLE_RATE)


def through_a_file(audio: np.ndarray, folder: Path, name: str) -> np.ndarray:
    return load_clip(write_clip(folder / f"{name}.mp4", audio), num_frames=2, size=32).audio


def groups(folder: Path, avsynth_clips: int) -> dict[str, dict[str, np.ndarray]]:
    import soundfile as sf

    out: dict[str, dict[str, np.ndarray]] = {"speech": {}, "music": {}, "tones": {}}
    if ASTERISK.is_dir():
        for path in sorted(ASTERISK.rglob("*.wav")):
            audio, rate = sf.read(path, dtype="float32")
            out["speech"][f"asterisk/{path.relative_to(ASTERISK)}"] = resample(audio if audio.ndim == 1 else audio.mean(1), rate)
    else:
        print(f"skip the Asterisk prompts: {ASTERISK} is missing")
    if espeak_missing() is None:
        for voice in VOICES:
            out["speech"][f"espeak-ng {voice}"] = through_a_file(speak(SENTENCE, voice), folder, f"espeak-{voice}")
    else:
        print(f"skip espeak-ng: {espeak_missing()}")
    media = ROOT.parent / "shared" / "media"
    for name in ("nasa_13013.mp4", "flipping_a_pancake.mkv", "big_buck_bunny_432_433.webm"):
        if (media / name).is_file():
            kind = "music" if name.startswith("big_buck") else "speech"
            out[kind][name] = load_clip(media / name, num_frames=2, size=32).audio
    out["music"]["melody"] = through_a_file(melody(6.0), folder, "melody")
    from benchmarks.bench_generate import make_clip
    from vqa.avsynth.generate import generate

    generate(folder / "avsynth", avsynth_clips, seed=7, progress=False)
    for path in sorted((folder / "avsynth").rglob("*.mp4")):
        out["tones"][f"avsynth {path.stem}"] = load_clip(path, num_frames=2, size=32).audio
    out["tones"]["bench_generate 720p"] = load_clip(make_clip(folder / "bench.mp4"), num_frames=2, size=32).audio
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--avsynth-clips", type=int, default=60)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = groups(Path(tmp), args.avsynth_clips)
    print(f"tone_share of the voiced audio; a pure tone at >= {speech.TONE_SHARE}\n")
    print("| audio | clips with a voice found | median | highest | lowest | called a pure tone |")
    print("| --- | --- | --- | --- | --- | --- |")
    for kind, clips in data.items():
        voiced = {name: speech.voice(np.ascontiguousarray(a, dtype=np.float32))[1] for name, a in clips.items()}
        shares = {name: speech.tone_share(v) for name, v in voiced.items() if v is not None}
        if not shares:
            print(f"| {kind} | 0 of {len(clips)} | | | | |")
            continue
        values = np.array(list(shares.values()))
        top, low = max(shares, key=shares.get), min(shares, key=shares.get)
        tones = int((values >= speech.TONE_SHARE).sum())
        print(f"| {kind} | {len(shares)} of {len(clips)} | {np.median(values):.3f} | {values.max():.3f} ({top}) "
              f"| {values.min():.3f} ({low}) | {tones} |")


if __name__ == "__main__":
    main()
