"""Parameter counts and CPU step times of a backbone recipe, with random weights (no network needed).

    python benchmarks/recipe_estimate.py [--config configs/gpu-musicavqa.yaml] [--steps 2]

Builds the recipe's model with the named hub architectures at their published sizes but random weights
(the configs below; a hub id is not downloaded), then times, on this machine's CPU in fp32 at batch 1:
the per-frame vision backbone, the audio backbone, and one full training step (encoder, projector and LLM
forward + backward, AdamW update of what the recipe's last stage trains). It prints the parameter counts,
the step's floating-point work as estimated from them, the rate this CPU reached, and peak memory.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# the published configurations of the recipe's hub models (sizes only; the weights here are random)
ARCHITECTURES = {
    "google/siglip-base-patch16-224": ("SiglipVisionConfig", dict(hidden_size=768, intermediate_size=3072,
                                       num_hidden_layers=12, num_attention_heads=12, image_size=224, patch_size=16)),
    "openai/whisper-base": ("WhisperConfig", dict(d_model=512, encoder_layers=6, decoder_layers=6,
                            encoder_attention_heads=8, decoder_attention_heads=8, encoder_ffn_dim=2048,
                            decoder_ffn_dim=2048, num_mel_bins=80, max_source_positions=1500, vocab_size=51865)),
    "Qwen/Qwen2.5-0.5B-Instruct": ("Qwen2Config", dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                                   num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                                   max_position_embeddings=32768, tie_word_embeddings=True)),
}


def _random(name: str, role: str):
    import transformers as tf

    from vqa.encoder import backbone

    cls, kwargs = ARCHITECTURES[backbone.split_revision(name)[0]]
    config = getattr(tf, cls)(**kwargs)
    if role == "llm":
        return tf.Qwen2ForCausalLM(config)
    if cls == "WhisperConfig":
        model, config = tf.WhisperModel(config).get_encoder(), config
        kind = "whisper"
    else:
        model, kind = tf.SiglipVisionModel(config), "siglip_vision_model"
    return backbone.Loaded(model, kind, config, name, None, None)


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB -> GB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/gpu-musicavqa.yaml")
    ap.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up step")
    ap.add_argument("--gpu-tflops", type=float, default=100.0,
                    help="assumed sustained bf16 rate of one GPU for the estimate (an A100's peak is 312)")
    args = ap.parse_args()

    from transformers import AutoTokenizer

    from vqa.config import DEFAULT_LLM
    from vqa.encoder import backbone
    from vqa.llm import bundled_folder
    from vqa.model import VideoLLM
    from vqa.prompt import pad_batch
    from vqa.train.config import load_config

    torch.manual_seed(0)
    torch.set_num_threads(torch.get_num_threads())
    model_config, train_config = load_config(args.config)
    backbone.load_pretrained = _random  # random weights of the named architectures: no download
    media, enc = model_config.media, model_config.encoder
    tokenizer = AutoTokenizer.from_pretrained(bundled_folder(DEFAULT_LLM))  # any tokenizer: ids < 49 k
    model = VideoLLM(model_config, _random(model_config.llm, "llm"), tokenizer)

    video, audio = model.encoder.video, model.encoder.audio
    def trained(branch) -> int:
        params = dict(branch.backbone.named_parameters())
        return count(branch.backbone) - sum(params[n].numel() for n in branch.frozen.names)

    parts = {
        "video backbone": count(video.backbone),
        f"  video backbone, trained ({enc.backbone_train})": trained(video),
        "audio backbone": count(audio.backbone),
        f"  audio backbone, trained ({enc.backbone_train})": trained(audio),
        "added blocks, maps, fusion, output": count(model.encoder) - count(video.backbone) - count(audio.backbone),
        "projector": count(model.projector),
        "LLM (frozen)": sum(p.numel() for n, p in model.llm.named_parameters() if "lora_" not in n),
        "LoRA": sum(p.numel() for n, p in model.llm.named_parameters() if "lora_" in n),
    }
    print(f"config: {args.config}; CPU threads: {torch.get_num_threads()}")
    for name, n in parts.items():
        print(f"  {name:38s} {n / 1e6:8.1f} M")

    B = 1
    frames = torch.randn(B, media.num_frames, 3, media.size, media.size)
    mel = torch.randn(B, media.n_mels, enc.audio_frames)
    question = [{"role": "user", "content": "<video>\nWhich instrument starts playing first?"},
                {"role": "assistant", "content": "The piano."}]
    batch = pad_batch([model.encode_prompt(question)] * B, tokenizer.pad_token_id)
    L = batch["input_ids"].shape[1]

    # floating-point work from the parameter counts: 2 FLOPs per weight per token forward, backward 2x forward
    # where gradients flow (the trained layers; the LLM's activations, an upper bound for its frozen weights);
    # attention's own work left out
    T, N = media.num_frames, video.grid[0] * video.grid[1]
    positions = audio.max_source if audio.mode == "whisper" else audio.grid[1]  # Whisper runs its whole window
    work = {
        "video backbone": 2 * count(video.backbone) * T * N * (1 + 2 * trained(video) / count(video.backbone)),
        "audio backbone": 2 * count(audio.backbone) * positions * (1 + 2 * trained(audio) / count(audio.backbone)),
        "added blocks": 3 * 2 * (count(video.blocks) * T * (N + 1) + count(audio.blocks) * (2 + audio.grid[1])),
        "LLM": 3 * 2 * parts["LLM (frozen)"] * L,
    }
    total = sum(work.values())
    print(f"estimated work per training step and clip: {total / 1e12:.2f} TFLOP ("
          + ", ".join(f"{k} {v / 1e12:.2f}" for k, v in work.items()) + ")")
    if args.steps < 1:
        return

    def timed(fn, steps):
        fn()  # warm-up
        t = time.perf_counter()
        for _ in range(steps):
            fn()
        return (time.perf_counter() - t) / steps

    with torch.no_grad():
        t_video = timed(lambda: video.per_frame(frames), args.steps)
        t_audio = timed(lambda: audio.run_backbone(**audio.backbone_input(mel)), args.steps)
    trainable = [p for n, p in model.named_parameters()
                 if "lora_" in n or n.startswith(("encoder.", "projector."))]
    opt = torch.optim.AdamW([p for p in trainable if p.requires_grad], lr=1e-4)
    model.train()

    def step():
        loss = model(frames=frames, mel=mel, **batch)
        opt.zero_grad()
        loss.backward()
        opt.step()

    rss0 = peak_gb()
    t_step = timed(step, args.steps)
    print(f"measured per clip at batch 1 (fp32, CPU): video backbone forward {t_video:.2f} s ({T} frames of "
          f"{media.size} px), audio backbone forward {t_audio:.2f} s ({enc.audio_frames} mel frames), "
          f"training step {t_step:.2f} s ({L} prompt tokens, {enc.num_tokens} of them the clip's)")
    print(f"this CPU reached {total / t_step / 1e9:.1f} GFLOP/s")
    peak = peak_gb()
    print(f"peak resident memory: {peak:.1f} GB (before the training steps {rss0:.1f} GB)")

    # the GPU estimate: bf16 weights, fp32 master weights + gradients + AdamW moments of what trains (16 B each),
    # activations = the training step's memory growth less what its optimiser state took, halved for bf16
    n_all = sum(parts[k] for k in ("video backbone", "audio backbone", "added blocks, maps, fusion, output",
                                   "projector", "LLM (frozen)", "LoRA"))
    n_train = sum(p.numel() for p in trainable if p.requires_grad)
    act = max(peak - rss0 - 12 * n_train / 2**30, 0.0) / 2
    global_batch = max(st.batch_size * st.grad_accum for st in train_config.stages)
    micro = max(st.batch_size for st in train_config.stages)
    steps = sum(st.steps for st in train_config.stages)
    clips = sum(st.steps * st.batch_size * st.grad_accum for st in train_config.stages)
    print(f"ESTIMATE for one GPU at {args.gpu_tflops:.0f} TFLOP/s sustained (an assumption, not a measurement): "
          f"{total / args.gpu_tflops / 1e12 * 1e3:.0f} ms per clip, {steps} steps of up to {global_batch} clips "
          f"({clips} clips) in {clips * total / args.gpu_tflops / 1e12 / 3600:.1f} h; memory: weights "
          f"{2 * n_all / 2**30:.1f} GB bf16 + training state {16 * n_train / 2**30:.1f} GB "
          f"({n_train / 1e6:.0f} M trained) + activations ~{act:.1f} GB per clip x {micro} = "
          f"{2 * n_all / 2**30 + 16 * n_train / 2**30 + act * micro:.0f} GB")


if __name__ == "__main__":
    main()
