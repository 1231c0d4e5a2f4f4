"""The video-LLM: AV encoder -> projector -> LoRA-adapted causal LM.

Notation: B batch, L prompt length, K clip tokens, D encoder width, H LLM hidden size.
"""
from __future__ import annotations

import logging
import os
import threading
import warnings
from collections.abc import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig
from .decoder import MODES, Decoder, KVCache, common_prefix, unsupported_reason
from .encoder import AVEncoder
from .prompt import IGNORE_INDEX, EncodedPrompt, encode_conversation, pad_batch

logger = logging.getLogger(__name__)
# how answers are generated: "fast" (the default: the lean decoder with int8 weights; the README's
# performance section compares its answers with exact mode's), "exact" (the lean decoder in fp32, greedy
# tokens equal to transformers' generate) or "transformers" (generate itself)
DECODING_ENV = "VQA_DECODING"
DECODINGS = MODES + ("transformers",)
_fallback_logged: set[str] = set()
# bumped whenever a module, parameter or buffer is registered anywhere in the process (PEFT adding or
# swapping a layer, a parameter replaced): while it stands still, the modules a walk found are all there are
_registrations = [0]


def _registered(*_) -> None:
    _registrations[0] += 1


for _register in (nn.modules.module.register_module_module_registration_hook,
                  nn.modules.module.register_module_parameter_registration_hook,
                  nn.modules.module.register_module_buffer_registration_hook):
    _register(_registered)


class Projector(nn.Module):
    """Two-layer MLP from the encoder's width into the LLM's hidden size (LLaVA-1.5's)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def add_lora(llm: nn.Module, config: ModelConfig) -> nn.Module:
    """Wrap the LLM in a PEFT LoRA model (frozen base, trainable adapters)."""
    from peft import LoraConfig, get_peft_model

    lora = config.lora
    peft_config = LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules), task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():  # peft reads transformers' deprecated alias; the user can do nothing about it
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
        return get_peft_model(llm, peft_config)


class VideoLLM(nn.Module):
    def __init__(self, config: ModelConfig, llm: nn.Module, tokenizer):
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        self.encoder = AVEncoder(config.media, config.encoder)
        hidden = llm.config.hidden_size
        self.projector = Projector(config.encoder.width, config.projector_hidden, hidden)
        for p in llm.parameters():
            p.requires_grad_(False)
        # keep handles on the causal LM's parts: LoRA layers are injected in place,
        # so they stay in use when the trunk and head are called directly
        self.trunk = llm.get_decoder()
        self.lm_head = llm.get_output_embeddings()
        self.llm = add_lora(llm, config) if config.lora is not None else llm
        self.video_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.stop_ids = _stop_ids(tokenizer)
        self.decoding = os.environ.get(DECODING_ENV, "fast")
        self._decoder: tuple[tuple, Decoder] | None = None  # (weights' fingerprint, decoder)
        self._walk: tuple[int, list, list] | None = None  # (registrations, LoRA layers, parameters)
        self._decoder_lock = threading.Lock()

    @property
    def num_video_tokens(self) -> int:
        return self.config.encoder.num_tokens

    @property
    def device(self) -> torch.device:
        return self.projector.fc1.weight.device

    # ---- clip -> tokens ----
    def get_video_features(self, frames: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, S, S), (B, n_mels, F) -> (B, K, H) clip tokens in the LLM's space."""
        return self.projector(self.encoder(frames, mel))

    # ---- prompts ----
    def encode_prompt(self, messages: list[dict], blind: bool = False) -> EncodedPrompt:
        """Token ids for a conversation; `blind` withholds the clip (no placeholder positions)."""
        n = 0 if blind else self.num_video_tokens
        return encode_conversation(self.tokenizer, self.config.system_prompt, messages, n, self.video_token_id)

    def embed(self, input_ids: torch.Tensor, video_mask: torch.Tensor, video_tokens: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings with the clip tokens written into the placeholder positions."""
        embeds = self.llm.get_input_embeddings()(input_ids)  # (B, L, H)
        n_slots = int(video_mask.sum())
        n_feats = 0 if video_tokens is None else video_tokens.shape[0] * video_tokens.shape[1]
        if n_slots != n_feats:
            raise ValueError(
                f"Video features and video tokens do not match: tokens: {n_slots}, features {n_feats}"
            )
        if n_feats:
            mask = video_mask.unsqueeze(-1).expand_as(embeds)  # (B, L, H)
            embeds = embeds.masked_scatter(mask, video_tokens.to(embeds.dtype))
        return embeds

    # ---- training ----
    def forward(
        self, input_ids, attention_mask, labels, video_mask, frames=None, mel=None, video_tokens=None
    ) -> torch.Tensor:
        """Mean cross-entropy over answer tokens; LM-head logits only at those positions."""
        if video_tokens is None and frames is not None:
            video_tokens = self.get_video_features(frames, mel)
        embeds = self.embed(input_ids, video_mask, video_tokens)
        hidden = self.trunk(inputs_embeds=embeds, attention_mask=attention_mask).last_hidden_state  # (B, L, H)
        # position i predicts token i + 1
        targets = labels[:, 1:]  # (B, L-1)
        keep = targets != IGNORE_INDEX
        if not keep.any():
            raise ValueError("the batch has no answer tokens to learn from")
        logits = self.lm_head(hidden[:, :-1][keep])  # (n_answer_tokens, vocab)
        return F.cross_entropy(logits.float(), targets[keep])

    # ---- generation ----
    def decoder(self) -> Decoder | None:
        """The lean decoder over the current weights (LoRA merged into copies), built on first use and
        rebuilt when the weights change; None where `decoding` is "transformers" or the LLM is not
        one it runs (then transformers' generate answers, said once in the log)."""
        if self.decoding not in DECODINGS:
            raise ValueError(f"decoding must be one of {DECODINGS}, got {self.decoding!r}")
        if self.decoding == "transformers":
            return None
        fingerprint = (self.decoding, *self._weights_state())
        with self._decoder_lock:
            if self._decoder is None or self._decoder[0] != fingerprint:
                self._decoder = None  # free the old copies before making new ones
                reason = unsupported_reason(self.llm)
                if reason is not None and reason not in _fallback_logged:
                    _fallback_logged.add(reason)
                    logger.warning("answers come from transformers' generate: the lean decoder does not run this "
                                   "LLM (%s)", reason)
                self._decoder = (fingerprint, None if reason else Decoder(self.llm, self.decoding))
            return self._decoder[1]

    def _weights_state(self) -> tuple[tuple, tuple]:
        """What the merged copies depend on: each LoRA layer's switches and adapters (PEFT's
        disable_adapter() or set_adapter() change them without touching a tensor) and each parameter's
        version (an optimizer step or loading a bundle bumps it). The modules are walked again only after
        something was registered somewhere (`_registrations`), since this runs before every answer."""
        if self._walk is None or self._walk[0] != _registrations[0]:  # assigning `llm` registers too
            lora, params, stack = [], [], [self.llm]
            while stack:  # a plain walk over the modules' dicts: Module.modules()'s generators cost more
                m = stack.pop()
                stack.extend(child for child in m._modules.values() if child is not None)
                if "lora_A" in m._modules:
                    lora.append(m)
                params.extend(p for p in m._parameters.values() if p is not None)
            self._walk = (_registrations[0], lora, params)
        _, lora, params = self._walk
        switches = tuple((getattr(m, "disable_adapters", False), str(getattr(m, "active_adapters", "")),
                          tuple(m.lora_A.keys())) for m in lora)
        return switches, tuple((id(p), p._version) for p in params)

    @torch.no_grad()
    def prefill(self, video_tokens: torch.Tensor | None, prompt: EncodedPrompt, cache: KVCache, decoder: Decoder,
                marks: tuple[int, ...] = ()) -> torch.Tensor:
        """Bring `cache` to a prompt's positions (lean decoder), computing only those it does not hold;
        returns the last position's logits (1, V). video_tokens: (K, H) or None (blind); marks: see
        `Decoder.prefill`."""
        tokens = None if video_tokens is None else video_tokens.unsqueeze(0)
        embeds = self.embed(prompt.input_ids[None].to(self.device), prompt.video_mask[None].to(self.device), tokens)
        return decoder.prefill(prompt.input_ids.tolist(), embeds.float(), cache, marks)

    @torch.no_grad()
    def stream(
        self,
        video_tokens: torch.Tensor,
        messages: list[dict],
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 0.9,
        cache: KVCache | None = None,
        decoder: Decoder | None = None,
        marks: tuple[int, ...] = (),
    ) -> Iterator[str]:
        """Yield the answer's text as it is generated. video_tokens: (K, H) or None (blind).

        `cache` (lean decoder only) holds an earlier prompt's keys and values for this clip: the
        positions this prompt shares with it are not computed again, and it is left holding this
        conversation for the next turn. `decoder`: the lean decoder the cache came from, where the
        caller has it already (default: `self.decoder()`); marks: see `Decoder.prefill`."""
        decoder = decoder or self.decoder()
        if decoder is None:
            yield from self._stream_generate(video_tokens, messages, max_new_tokens, temperature, top_p)
            return
        prompt = self.encode_prompt(messages, blind=video_tokens is None)
        if cache is None:
            cache = decoder.new_cache(capacity=len(prompt.input_ids) + max_new_tokens)
        logits = self.prefill(video_tokens, prompt, cache, decoder, marks)
        new: list[int] = []
        shown = ""
        for token in decoder.stream(logits, cache, self.stop_ids, max_new_tokens, temperature, top_p):
            new.append(token)
            text = self.tokenizer.decode(new, skip_special_tokens=True)
            # hold back a split multi-byte character; show only text that later tokens extend
            if text.startswith(shown) and not text.endswith("\ufffd"):
                if len(text) > len(shown):
                    yield text[len(shown):]
                shown = text
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        if text.startswith(shown) and len(text) > len(shown):
            yield text[len(shown):]

    def _stream_generate(self, video_tokens, messages, max_new_tokens, temperature, top_p) -> Iterator[str]:
        """`stream` through transformers' generate in a worker thread."""
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        class StopWhenClosed(StoppingCriteria):
            # a caller that stops reading (a closed web page) ends the generation too
            def __call__(self, input_ids, scores, **kwargs):
                return closed.is_set()

        closed = threading.Event()

        prompt = self.encode_prompt(messages, blind=video_tokens is None)
        batch = pad_batch([prompt], self.tokenizer.pad_token_id or 0)
        tokens = None if video_tokens is None else video_tokens.unsqueeze(0)
        embeds = self.embed(batch["input_ids"].to(self.device), batch["video_mask"].to(self.device), tokens)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=False, skip_special_tokens=True)
        kwargs = dict(
            inputs_embeds=embeds,
            attention_mask=batch["attention_mask"].to(self.device),
            max_new_tokens=max_new_tokens,
            eos_token_id=self.stop_ids,
            pad_token_id=self.tokenizer.pad_token_id,
            streamer=streamer,
            stopping_criteria=StoppingCriteriaList([StopWhenClosed()]),
        )
        if temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature, top_p=top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        errors: list[BaseException] = []

        def run():
            try:
                self.llm.generate(**kwargs)
            except BaseException as e:  # surfaced in the caller's thread below
                errors.append(e)
                streamer.end()

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        try:
            for piece in streamer:
                if piece:
                    yield piece
        finally:
            closed.set()
            worker.join()
        if errors:
            raise errors[0]

    @torch.no_grad()
    def generate_batch(
        self, video_tokens: torch.Tensor | None, prompts: list[EncodedPrompt], max_new_tokens: int = 8
    ) -> list[str]:
        """Greedy answers for a batch of prompts (left-padded). video_tokens: (B, K, H), or None
        for prompts encoded blind."""
        batch = pad_batch(prompts, self.tokenizer.pad_token_id or 0, side="left")
        embeds = self.embed(batch["input_ids"].to(self.device), batch["video_mask"].to(self.device), video_tokens)
        decoder = self.decoder()
        if decoder is not None:
            pad = (batch["attention_mask"] == 0).sum(1)  # (B,)
            out = decoder.generate_batch(embeds.float(), pad, self.stop_ids, max_new_tokens)
            return self.tokenizer.batch_decode(out, skip_special_tokens=True)
        out = self.llm.generate(
            inputs_embeds=embeds,
            attention_mask=batch["attention_mask"].to(self.device),
            max_new_tokens=max_new_tokens,
            eos_token_id=self.stop_ids,
            pad_token_id=self.tokenizer.pad_token_id,
            do_sample=False, temperature=None, top_p=None, top_k=None,
        )
        return self.tokenizer.batch_decode(out, skip_special_tokens=True)

    @torch.no_grad()
    def generate_shared(self, video_tokens: torch.Tensor, prompts: list[EncodedPrompt], max_new_tokens: int = 8
                        ) -> list[str]:
        """Greedy answers for several prompts about one clip (video_tokens (K, H)): the lean decoder computes
        the part they share (system prompt, clip, perception text) once; without it, as generate_batch."""
        decoder = self.decoder()
        ids = [p.input_ids.tolist() for p in prompts]
        shared = min(min(common_prefix(ids[0], other) for other in ids), min(len(x) for x in ids) - 1)
        if decoder is None or len(prompts) < 2 or shared < 1:
            return self.generate_batch(video_tokens[None].expand(len(prompts), -1, -1), prompts, max_new_tokens)
        embeds = [self.embed(p.input_ids[None].to(self.device), p.video_mask[None].to(self.device),
                             video_tokens[None]).float() for p in prompts]  # each (1, L_i, H)
        tails = [e[0, shared:] for e in embeds]
        longest = max(len(t) for t in tails)
        suffixes = torch.zeros(len(tails), longest, embeds[0].shape[-1])  # (B, S, H), left-padded
        for i, t in enumerate(tails):
            suffixes[i, longest - len(t):] = t
        pad = torch.tensor([longest - len(t) for t in tails])
        out = decoder.generate_shared(embeds[0][:, :shared], suffixes, pad, self.stop_ids, max_new_tokens)
        return self.tokenizer.batch_decode(out, skip_special_tokens=True)

    def generate_many(self, video_tokens: list[torch.Tensor | None], clips: list, prompts: list[EncodedPrompt],
                      batch_size: int = 16, max_new_tokens: int = 8, done: Callable[[int], None] | None = None
                      ) -> list[str]:
        """Greedy answers for many prompts in batches of at most batch_size, in order. video_tokens[i]: prompt i's
        clip tokens (K, H) (None: blind); clips[i] names its clip, so the questions about one clip share their
        prompt prefix (generate_shared) and the rest are batched by length (generate_batch). `done(n)`: progress."""
        answers = [""] * len(prompts)
        by_clip: dict = {}
        for i, clip in enumerate(clips):
            by_clip.setdefault(clip if video_tokens[i] is not None else ("blind", i), []).append(i)
        parts, singles = [], []
        for idx in by_clip.values():
            if len(idx) == 1:
                singles += idx
            else:
                parts += [(True, idx[s:s + batch_size]) for s in range(0, len(idx), batch_size)]
        singles.sort(key=lambda i: len(prompts[i].input_ids))  # similar lengths together: less padding
        parts += [(False, singles[s:s + batch_size]) for s in range(0, len(singles), batch_size)]
        for shared, idx in parts:
            batch = [prompts[i] for i in idx]
            if shared:
                texts = self.generate_shared(video_tokens[idx[0]], batch, max_new_tokens)
            else:
                blind = video_tokens[idx[0]] is None
                texts = self.generate_batch(None if blind else torch.stack([video_tokens[i] for i in idx]), batch,
                                            max_new_tokens)
            for i, text in zip(idx, texts):
                answers[i] = text
            if done is not None:
                done(len(idx))
        return answers

    # ---- weights that a bundle saves ----
    def av_state_dict(self) -> dict[str, torch.Tensor]:
        """Encoder and projector weights (everything the bundle holds apart from the LoRA)."""
        return {
            **{f"encoder.{k}": v for k, v in self.encoder.state_dict().items()},
            **{f"projector.{k}": v for k, v in self.projector.state_dict().items()},
        }


def _stop_ids(tokenizer) -> list[int]:
    """End of the assistant's turn: the template's end-of-turn token and EOS."""
    ids = []
    for token in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>"):
        tid = tokenizer.convert_tokens_to_ids(token)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid >= 0:
            ids.append(tid)
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return sorted(set(ids))
