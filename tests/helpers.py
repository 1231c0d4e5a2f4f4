"""Tiny configs and models shared by the tests."""
from __future__ import annotations

from vqa.config import EncoderConfig, LoraConfig, MediaConfig, ModelConfig


def tiny_config(**encoder) -> ModelConfig:
    """A model small enough to train in seconds: 4 frames of 32 px, width 32, two layers per branch."""
    enc = dict(width=32, heads=4, patch_size=8, video_depth=2, audio_depth=2, audio_patch=8, audio_stride=8,
               fusion_layer=1, num_bottlenecks=2, time_steps=4)
    enc.update(encoder)
    return ModelConfig(
        media=MediaConfig(num_frames=4, size=32, n_mels=16),
        encoder=EncoderConfig(**enc),
        lora=LoraConfig(r=4, alpha=8, dropout=0.0),
        projector_hidden=64,
    )


def tiny_llm(tokenizer):
    """A random two-layer Llama over the bundled tokenizer's vocabulary."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        initializer_range=0.5,  # large enough that LoRA alone can move the logits of a frozen random base
    )
    return LlamaForCausalLM(cfg)


def write_clip(path, seconds: float = 1.0, fps: int = 8, size: int = 48, tone_hz: float | None = 440.0) -> str:
    """A small H.264/AAC MP4: a square moving right on grey, and a sine tone (or no audio track)."""
    import av
    import numpy as np

    n = int(seconds * fps)
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=fps, options={"preset": "ultrafast"})
        video.width = video.height = size
        video.pix_fmt = "yuv420p"
        audio = None
        if tone_hz is not None:
            audio = out.add_stream("aac", rate=16000, layout="mono")
        for i in range(n):
            img = np.full((size, size, 3), 60, np.uint8)
            x = int(i * (size - 12) / max(n - 1, 1))
            img[size // 2 - 6: size // 2 + 6, x: x + 12] = (220, 40, 40)
            for packet in video.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        if audio is not None:
            t = np.arange(int(seconds * 16000)) / 16000
            wave = (0.3 * np.sin(2 * np.pi * tone_hz * t)).astype(np.float32)
            for start in range(0, len(wave), 1024):
                frame = av.AudioFrame.from_ndarray(wave[None, start:start + 1024], format="fltp", layout="mono")
                frame.sample_rate = 16000
                for packet in audio.encode(frame):
                    out.mux(packet)
            for packet in audio.encode():
                out.mux(packet)
    return str(path)
