"""A lean decoder for serving: a static KV cache and one hand-written step for Llama-family LLMs.

transformers' `generate` spends most of each token on reading the weights and the rest on
per-token bookkeeping. This decoder reads fewer bytes and does less around them:

- LoRA is merged into copies of the weights (the trainable model is never touched);
- `mode="fast"` stores every linear layer's weights, the tied LM head included, as int8 with one
  scale per output channel (`weights="int8"`, gpt-fast's weight-only int8: bf16 activations into
  the GEMM, fp32 everywhere else), a quarter of the bytes of fp32; a prompt's rows instead go
  through bf16 GEMMs over weights widened for the call (`WIDEN`); `weights="fp16"` (fbgemm's
  fp16 GEMM, fp32 activations) or `"bf16"` are there to measure against it;
- `mode="exact"` keeps fp32 weights and mirrors transformers' Llama ops one for one, so its
  greedy tokens equal transformers' `generate`; fast mode runs fewer, fused ops for the same
  arithmetic (up to fp32 rounding in attention);
- fast greedy decoding guesses ahead by prompt lookup (`lookahead` tokens that followed the last
  few tokens where they occurred before, in the prompt or the answer) and checks the guesses in the
  same call as the new token: answers quote the transcript and repeat their own phrases, and a call
  over three positions costs little more than over one, since reading the weights dominates;
- keys and values live in a preallocated cache that grows by doubling; a cache can be kept
  and extended (a chat's follow-up computes only its new tokens), cut back, or copied.

Llama-family models whose layers are the same (`llama`, `qwen2` without sliding windows) are
supported; `unsupported_reason` says why any other is not, and callers fall back to `generate`.

Notation: B batch, L tokens in this call, P cached positions, H hidden size, nh query heads,
nkv key/value heads, hs head size, V vocabulary.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

logger = logging.getLogger(__name__)

MODES = ("fast", "exact")
WEIGHTS = ("fp32", "fp16", "bf16", "int8")
FAST_WEIGHTS = "int8"
SUPPORTED_TYPES = ("llama", "qwen2")
SUPPORTED_ROPE = ("default", "linear", "llama3")
MIN_CAPACITY = 256
LOOKAHEAD = 2  # tokens guessed ahead by prompt lookup in fast greedy decoding (0: off)
MAX_PAUSE = 16  # the most steps lookahead pauses after guesses that missed
# A prompt's rows (prefill) go through int8 layers as bf16 GEMMs over weights widened for the call, which
# outrun the int8 kernel from a few rows on CPUs with bf16 instructions. oneDNN picks its kernel by the number
# of rows, so a row's result depends on the call it is in: a prompt's GEMMs are split where its attention is
# (`Decoder.forward`'s marks), and a position gets the same result whether the start before a mark was computed
# with the rest or cached. Decode steps keep the int8 kernel, which reads a quarter of the bytes.
WIDEN = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def unsupported_reason(llm: nn.Module) -> str | None:
    """None when `Decoder` can run this causal LM (PEFT-wrapped or not), else why not."""
    base = _causal_lm(llm)
    cfg = base.config
    kind = getattr(cfg, "model_type", None)
    if kind not in SUPPORTED_TYPES:
        return f"model type {kind!r} is not one of {SUPPORTED_TYPES}"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"activation {cfg.hidden_act!r} is not silu"
    if getattr(cfg, "use_sliding_window", False):
        return "sliding-window attention"
    rope = (getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}).get("rope_type", "default")
    if rope not in SUPPORTED_ROPE:
        return f"rope type {rope!r} is not one of {SUPPORTED_ROPE}"
    if next(base.parameters()).device.type != "cpu":
        return "the decoder's packed weights are for CPUs"
    for module in base.modules():
        if _is_lora(module) and (getattr(module, "use_dora", {}) or {}).get(_adapter(module), False):
            return "DoRA adapters"
    return None


# ---- weights ----
class Linear:
    """A frozen linear layer in one weight format; fp32 in, fp32 out."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, kind: str):
        if kind not in WEIGHTS:
            raise ValueError(f"weights must be one of {WEIGHTS}, got {kind!r}")
        self.kind = kind
        self.bias = None if bias is None else bias.detach().float().clone()
        w = weight.detach().float()  # (out, in)
        self.out_features, self.in_features = w.shape
        if kind == "fp32":
            self.w = w.contiguous()
        elif kind == "bf16":
            self.w = w.to(torch.bfloat16).contiguous()
        elif kind == "fp16":
            self.w = torch.ops.quantized.linear_prepack_fp16(w.contiguous(), None)
        else:  # int8 weight-only with one scale per output channel, as gpt-fast's WeightOnlyInt8Linear
            scale = w.abs().amax(dim=1).clamp(min=1e-8) / 127  # (out,)
            self.w = (w / scale[:, None]).round_().clamp_(-128, 127).to(torch.int8)  # one fp32 temporary
            self.scale = scale.to(torch.bfloat16)

    def __call__(self, x: torch.Tensor, calls: tuple[int, ...] = ()) -> torch.Tensor:  # (..., in) -> (..., out)
        return self.raw(x, calls).float()

    def raw(self, x: torch.Tensor, calls: tuple[int, ...] = ()) -> torch.Tensor:
        """The output in the GEMM's own type (bf16 for bf16 and int8 weights): a caller that goes on in
        fp32 (a sum with the fp32 residual, a product with fp32 rope tables) promotes it exactly, one
        conversion op fewer. `calls`: the rows are a prompt's, in GEMM calls of these many rows each (int8
        weights widen for them, see WIDEN); () for decode steps."""
        if self.kind == "fp32":
            return F.linear(x, self.w, self.bias)
        rows = x if x.dim() == 2 else x.reshape(-1, x.shape[-1])  # a fast decode step's rows are 2-D already
        if self.kind == "fp16":
            y = torch.ops.quantized.linear_dynamic_fp16(rows, self.w)
        elif self.kind == "bf16":
            y = F.linear(rows.to(torch.bfloat16), self.w)
        elif calls and WIDEN:
            y = _widened_mm(rows.to(torch.bfloat16), self.w, calls) * self.scale
        else:
            y = torch.ops.aten._weight_int8pack_mm(rows.to(torch.bfloat16), self.w, self.scale)
        if x.dim() != 2:
            y = y.view(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y.float() + self.bias

    def nbytes(self) -> int:
        if self.kind == "fp16":  # packed by fbgemm: two bytes a weight
            return 2 * self.out_features * self.in_features
        extra = self.scale.numel() * 2 if self.kind == "int8" else 0
        return self.w.numel() * self.w.element_size() + extra


def _widened_mm(x: torch.Tensor, w: torch.Tensor, calls: tuple[int, ...]) -> torch.Tensor:
    """x @ w.T for bf16 rows x (M, in) and int8 weights w (out, in), widened to bf16 (exactly) for this
    call, in one GEMM per part of `calls` (row counts that sum to M)."""
    wide = w.to(torch.bfloat16)
    if len(calls) == 1:
        return F.linear(x, wide)
    return torch.cat([F.linear(rows, wide) for rows in x.split(list(calls))])


def _is_lora(module: nn.Module) -> bool:
    return hasattr(module, "base_layer") and hasattr(module, "lora_A") and hasattr(module, "get_delta_weight")


def _adapter(module: nn.Module) -> str:
    active = module.active_adapters if hasattr(module, "active_adapters") else module.active_adapter
    return active[0] if isinstance(active, (list, tuple)) else active


def merged_weight(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A linear layer's weight and bias with its LoRA (if any) merged in (a new tensor when merged)."""
    if _is_lora(module):
        weight = module.base_layer.weight.detach().clone()
        if not getattr(module, "disable_adapters", False) and not getattr(module, "merged", False):
            for name in (module.active_adapters if hasattr(module, "active_adapters") else [module.active_adapter]):
                if name in module.lora_A:
                    weight += module.get_delta_weight(name).detach()  # peft's own merge formula
        bias = module.base_layer.bias
    else:
        weight, bias = module.weight.detach(), module.bias  # shared: Linear copies it unless it stays fp32
    return weight, None if bias is None else bias.detach()


def _causal_lm(llm: nn.Module) -> nn.Module:
    """The transformers causal LM inside a PEFT wrapper (or the model itself)."""
    return llm.get_base_model() if hasattr(llm, "get_base_model") else llm


class Fused:
    """Linear layers over the same input: one GEMM over their stacked weights when `fuse` (fewer,
    larger calls), else one each (exact mode: each layer's own GEMM, as transformers runs it)."""

    def __init__(self, parts: list[tuple[torch.Tensor, torch.Tensor | None]], kind: str, fuse: bool):
        self.sizes = [w.shape[0] for w, _ in parts]
        if fuse and len(parts) > 1:
            biases = [b if b is not None else torch.zeros(w.shape[0]) for w, b in parts]
            bias = None if all(b is None for _, b in parts) else torch.cat(biases)
            self.linears = [Linear(torch.cat([w for w, _ in parts]), bias, kind)]
        else:
            self.linears = [Linear(w, b, kind) for w, b in parts]

    def __call__(self, x: torch.Tensor, calls: tuple[int, ...] = ()) -> list[torch.Tensor]:
        # (..., in) -> [(..., out_i)]
        if len(self.linears) == 1 and len(self.sizes) > 1:
            return list(self.linears[0](x, calls).split(self.sizes, dim=-1))
        return [lin(x, calls) for lin in self.linears]

    def nbytes(self) -> int:
        return sum(lin.nbytes() for lin in self.linears)


@dataclass
class Layer:
    attn_norm: torch.Tensor
    qkv: Fused
    o: Linear
    mlp_norm: torch.Tensor
    gate_up: Fused
    down: Linear


# ---- cache ----
@dataclass(eq=False)  # compared by identity: it holds tensors
class KVCache:
    """Keys and values of the first `length` positions, per layer (B, nkv, capacity, hs).

    `ids` (B=1 only) are the token ids at those positions, which a chat's next prompt is
    matched against; `key` names what else went in (the clip), so a prefix is only reused
    for the same clip. `pad` (B,) counts each row's padding in a batch, which starts at
    position `pad_at` (0: left padding; after a shared prefix: its length).
    """

    k: list[torch.Tensor]
    v: list[torch.Tensor]
    length: int = 0
    ids: list[int] | None = None
    key: str = ""
    pad: torch.Tensor | None = None
    pad_at: int = 0

    @property
    def capacity(self) -> int:
        return self.k[0].shape[2]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    def truncate(self, n: int) -> None:
        """Forget every position from n on."""
        self.length = min(self.length, n)
        if self.ids is not None:
            del self.ids[self.length:]

    def copy(self, n: int | None = None) -> "KVCache":
        """A new cache holding this one's first n positions (all by default)."""
        n = self.length if n is None else min(n, self.length)
        cap = max(MIN_CAPACITY, _next_pow2(n))
        k = [_alloc_like(t, cap) for t in self.k]
        v = [_alloc_like(t, cap) for t in self.v]
        for dst, src in zip(k + v, self.k + self.v):
            dst[:, :, :n] = src[:, :, :n]
        ids = None if self.ids is None else self.ids[:n]
        return KVCache(k, v, n, ids, self.key, self.pad, self.pad_at)

    def reserve(self, n: int) -> None:
        """Room for n positions in all, keeping what is cached (grows by doubling)."""
        if n <= self.capacity:
            return
        cap = max(2 * self.capacity, _next_pow2(n))
        for store in (self.k, self.v):
            for i, t in enumerate(store):
                grown = _alloc_like(t, cap)
                grown[:, :, :self.length] = t[:, :, :self.length]
                store[i] = grown


def _alloc_like(t: torch.Tensor, capacity: int) -> torch.Tensor:
    b, h, _, d = t.shape
    return torch.empty(b, h, capacity, d, dtype=t.dtype, device=t.device)


def _next_pow2(n: int) -> int:
    return 1 << max(n - 1, 1).bit_length()


def cut_back(n: int, marks: tuple[int, ...]) -> int:
    """The last of a prompt's `marks` (see `Decoder.prefill`) at or before position n; 0 when none is."""
    return max((m for m in marks if m <= n), default=0)


def _causal(start: int, end: int) -> tuple[torch.Tensor | None, bool]:
    """Attention's (mask, is_causal) for positions start..end after a cache of `start`: causal from the
    first position, else a mask (1, 1, L, end) over the cached keys too; one position sees every key."""
    if end - start > 1 and start == 0:
        return None, True
    if end - start > 1:
        return (torch.arange(end)[None, :] <= torch.arange(start, end)[:, None])[None, None], False
    return None, False


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


# ---- the model ----
class Decoder:
    """Prefill and one-token decode steps over merged, packed copies of a causal LM's weights."""

    def __init__(self, llm: nn.Module, mode: str = "fast", weights: str | None = None):
        if mode not in MODES:
            raise ValueError(f"decoder mode must be one of {MODES}, got {mode!r}")
        reason = unsupported_reason(llm)
        if reason is not None:
            raise ValueError(f"the lean decoder cannot run this LLM: {reason}")
        self.mode = mode
        self.weights = weights or ("fp32" if mode == "exact" else FAST_WEIGHTS)
        if mode == "exact" and self.weights != "fp32":
            raise ValueError(f"exact mode keeps fp32 weights, got weights={self.weights!r}")
        base = _causal_lm(llm)
        cfg = base.config
        trunk = base.get_decoder()
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.eps = cfg.rms_norm_eps
        self.scale = self.head_dim ** -0.5
        self.vocab = cfg.vocab_size
        self.embed_table = base.get_input_embeddings().weight.detach()  # shared, not copied
        with torch.no_grad():
            self.layers = [self._layer(block) for block in trunk.layers]
            self.norm = trunk.norm.weight.detach().clone()
            head_w, head_b = merged_weight(base.get_output_embeddings())
            self.head = Linear(head_w, head_b, self.weights)
        rotary = trunk.rotary_emb
        self.inv_freq = rotary.inv_freq.detach().float().clone()  # (hs/2,)
        self.rope_scale = float(getattr(rotary, "attention_scaling", 1.0))
        self._cos = self._sin = torch.empty(0, self.head_dim)
        self.dtype = torch.float32
        self.lookahead = LOOKAHEAD

    def _layer(self, block) -> Layer:
        attn, mlp = block.self_attn, block.mlp

        fuse = self.mode == "fast"

        def fused(*modules):
            return Fused([merged_weight(m) for m in modules], self.weights, fuse)

        return Layer(block.input_layernorm.weight.detach().clone(), fused(attn.q_proj, attn.k_proj, attn.v_proj),
                     Linear(*merged_weight(attn.o_proj), self.weights),
                     block.post_attention_layernorm.weight.detach().clone(), fused(mlp.gate_proj, mlp.up_proj),
                     Linear(*merged_weight(mlp.down_proj), self.weights))

    # ---- pieces ----
    def new_cache(self, batch: int = 1, capacity: int = MIN_CAPACITY, key: str = "") -> KVCache:
        cap = max(MIN_CAPACITY, _next_pow2(capacity))
        shape = (batch, self.n_kv, cap, self.head_dim)
        return KVCache([torch.empty(shape, dtype=self.dtype) for _ in self.layers],
                       [torch.empty(shape, dtype=self.dtype) for _ in self.layers],
                       0, [] if batch == 1 else None, key)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.embed_table)

    def _rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (B, 1, L, hs) at integer positions (B, L), as transformers computes them."""
        top = int(positions.max()) + 1
        if top > self._cos.shape[0]:
            n = _next_pow2(max(top, MIN_CAPACITY))
            freqs = torch.arange(n, dtype=torch.float32)[:, None] * self.inv_freq  # (n, hs/2)
            emb = torch.cat((freqs, freqs), dim=-1)  # (n, hs)
            self._cos, self._sin = emb.cos() * self.rope_scale, emb.sin() * self.rope_scale
        return self._cos[positions].unsqueeze(1), self._sin[positions].unsqueeze(1)

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if self.mode == "fast":  # one fused op, the same arithmetic
            return F.rms_norm(x, (x.shape[-1],), weight, self.eps)
        variance = x.pow(2).mean(-1, keepdim=True)
        return weight * (x * torch.rsqrt(variance + self.eps))

    @torch.inference_mode()  # no autograd bookkeeping at all: a few microseconds less on each of a step's ops
    @torch.autocast("cpu", enabled=False)  # not a caller's (vqa eval's bf16): the GEMMs pick their own types
    def forward(self, embeds: torch.Tensor, cache: KVCache, all_logits: bool = False, prompt: bool = False,
                marks: tuple[int, ...] = ()) -> torch.Tensor:
        """Run L new positions (B, L, H) after the cache's; returns the last position's logits (B, V)
        (every position's, (B, L, V), with all_logits) and extends the cache. `prompt`: the positions are
        a prompt's, not decode steps (see WIDEN). `marks` (B = 1): positions where attention and the GEMMs
        are split into separate calls, as if the positions before each had been computed by an earlier call."""
        B, L, _ = embeds.shape
        start = cache.length
        cache.reserve(start + L)
        end = start + L
        steps = torch.arange(start, end)  # (L,)
        positions = steps[None].expand(B, L)  # (B, L)
        if cache.pad is not None and bool((cache.pad > 0).any()):
            pad, at = cache.pad[:, None], cache.pad_at
            positions = positions - (positions - at).clamp(min=0).minimum(pad)  # the padding takes no position
            keys = torch.arange(end)[None, None, :]
            padding = (keys >= at) & (keys < at + cache.pad[:, None, None])  # (B, 1, end)
            # (B, 1, L, end): causal, padding hidden; a padding query sees itself so no row is empty
            mask = (keys <= steps[None, :, None]) & (~padding | (keys == steps[None, :, None]))
            mask, causal = mask[:, None], False
        else:
            mask, causal = _causal(start, end)
        bounds = [m for m in sorted(marks) if start < m < end]
        if bounds and B != 1:
            raise ValueError("marks split one conversation's positions, not a batch's")
        parts = [start] + bounds + [end]
        calls = tuple(B * (b - a) for a, b in zip(parts, parts[1:])) if prompt else ()  # the GEMMs' rows
        cos, sin = self._rope(positions)
        x = embeds.to(self.dtype)
        if self.mode == "fast":  # its q/k/v and gate/up weights are fused (`Fused`)
            x = self._fast_layers(x, cache, cos, sin, mask, causal, parts, calls)
        else:
            x = self._exact_layers(x, cache, cos, sin, mask, causal, parts, calls)
        cache.length = end
        x = x if all_logits else x[:, -1]
        return self.head(self._norm(x, self.norm))

    def _exact_layers(self, x: torch.Tensor, cache: KVCache, cos: torch.Tensor, sin: torch.Tensor,
                      mask: torch.Tensor | None, causal: bool, parts: list[int], calls: tuple[int, ...]
                      ) -> torch.Tensor:
        """The layers as transformers runs them, op for op (exact mode). `parts`: the positions from the
        cache's end to the new end, with the marks between (attention split there); `calls`: the GEMMs'
        rows per part, () in a decode step."""
        B, L, _ = x.shape
        start, end = cache.length, cache.length + L
        nh, nkv, hs = self.n_heads, self.n_kv, self.head_dim
        for i, layer in enumerate(self.layers):
            h = self._norm(x, layer.attn_norm)
            q, k, v = layer.qkv(h, calls)
            q = q.view(B, L, nh, hs).transpose(1, 2)  # (B, nh, L, hs)
            k = k.view(B, L, nkv, hs).transpose(1, 2)  # (B, nkv, L, hs)
            v = v.view(B, L, nkv, hs).transpose(1, 2)  # (B, nkv, L, hs)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            cache.k[i][:, :, start:end] = k
            cache.v[i][:, :, start:end] = v
            keys_i, values_i = cache.k[i][:, :, :end], cache.v[i][:, :, :end]  # (B, nkv, end, hs)
            if len(parts) > 2:
                y = self._attend_in_parts(q, keys_i, values_i, start, parts)
            else:
                y = F.scaled_dot_product_attention(q, keys_i, values_i, attn_mask=mask, is_causal=causal,
                                                   scale=self.scale, enable_gqa=True)  # (B, nh, L, hs)
            x = x + layer.o.raw(y.transpose(1, 2).reshape(B, L, nh * hs), calls)
            h = self._norm(x, layer.mlp_norm)
            gate, up = layer.gate_up(h, calls)
            x = x + layer.down.raw(F.silu(gate) * up, calls)
        return x

    def _fast_layers(self, x: torch.Tensor, cache: KVCache, cos: torch.Tensor, sin: torch.Tensor,
                     mask: torch.Tensor | None, causal: bool, parts: list[int], calls: tuple[int, ...]
                     ) -> torch.Tensor:
        """The layers in as few ops as the same arithmetic allows (fast mode, fused weights): the rows stay
        (B * L, H); q, k and v come from one GEMM, and rope turns q and k in one go (in a decode step, one
        batched product with each position's rotation, built once for all layers); a one-position step's
        attention takes each key/value head's queries as rows (no keys repeated per query head)."""
        B, L, H = x.shape
        start, end = cache.length, cache.length + L
        nh, nkv, hs = self.n_heads, self.n_kv, self.head_dim
        x = x.reshape(B * L, H)
        turn = None if calls else _rotation(cos, sin).view(B * L, hs, hs)  # a prompt keeps elementwise rope
        grouped = L == 1 and mask is None
        for i, layer in enumerate(self.layers):
            h = self._norm(x, layer.attn_norm)
            qkv = layer.qkv.linears[0].raw(h, calls).float().view(B * L, nh + 2 * nkv, hs)
            if turn is None:
                qk = qkv.view(B, L, nh + 2 * nkv, hs).transpose(1, 2)[:, :nh + nkv]
                qk = qk * cos + _rotate_half(qk) * sin  # (B, nh + nkv, L, hs)
            else:
                qk = torch.bmm(qkv[:, :nh + nkv], turn).view(B, L, nh + nkv, hs).transpose(1, 2)
            cache.k[i].narrow(2, start, L).copy_(qk[:, nh:])
            cache.v[i].narrow(2, start, L).copy_(qkv[:, nh + nkv:].view(B, L, nkv, hs).transpose(1, 2))
            keys_i, values_i = cache.k[i].narrow(2, 0, end), cache.v[i].narrow(2, 0, end)  # (B, nkv, end, hs)
            q = qk[:, :nh]
            if grouped:  # query head j uses key/value head j // (nh / nkv), as enable_gqa repeats them
                y = F.scaled_dot_product_attention(q.reshape(B, nkv, nh // nkv, hs), keys_i, values_i,
                                                   scale=self.scale)
            elif len(parts) > 2:
                y = self._attend_in_parts(q, keys_i, values_i, start, parts).transpose(1, 2)
            else:
                y = F.scaled_dot_product_attention(q, keys_i, values_i, attn_mask=mask, is_causal=causal,
                                                   scale=self.scale, enable_gqa=True).transpose(1, 2)
            x = x + layer.o.raw(y.reshape(B * L, nh * hs), calls)
            h = self._norm(x, layer.mlp_norm)
            gate, up = layer.gate_up.linears[0].raw(h, calls).float().split(layer.gate_up.sizes, dim=-1)
            x = x + layer.down.raw(F.silu(gate) * up, calls)
        return x.view(B, L, H)

    def _attend_in_parts(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, start: int,
                         bounds: list[int]) -> torch.Tensor:
        """Causal attention of queries (1, nh, L, hs) at positions start.. over keys (1, nkv, end, hs), one call
        per part [bounds[j], bounds[j + 1]), each seeing the keys up to its end: the calls separate forwards
        would make (the kernels round differently with the rows and keys they are given)."""
        parts = []
        for a, b in zip(bounds, bounds[1:]):
            qa = q[:, :, a - start:b - start]
            mask, causal = _causal(a, b)
            parts.append(F.scaled_dot_product_attention(qa, keys[:, :, :b], values[:, :, :b], attn_mask=mask,
                                                        is_causal=causal, scale=self.scale, enable_gqa=True))
        return torch.cat(parts, dim=2)

    # ---- generation ----
    def prefill(self, ids: list[int], embeds: torch.Tensor, cache: KVCache, marks: tuple[int, ...] = ()
                ) -> torch.Tensor:
        """Bring a B=1 cache to the prompt `ids` (embeddings (1, L, H)), computing only what is not
        cached already; returns the last position's logits (1, V).

        `marks`: positions where the prompt's attention and GEMMs are split, whatever the cache holds: their
        kernels round differently with the rows (and keys) of a call, so a position gets the same result bit
        for bit from a prompt computed whole and from one computed after a cached start that ends at a mark.
        A cache that holds more than the prompt shares with it is cut back to a mark."""
        n = common_prefix(cache.ids, ids)
        n = min(n, len(ids) - 1)  # at least one new position, for its logits
        if marks and n < cache.length:
            n = cut_back(n, marks)
        cache.truncate(n)
        logits = self.forward(embeds[:, n:], cache, prompt=True, marks=marks)
        cache.ids.extend(ids[n:])
        return logits

    def stream(self, logits: torch.Tensor, cache: KVCache, stop_ids: list[int], max_new_tokens: int,
               temperature: float = 0.0, top_p: float = 1.0, generator: torch.Generator | None = None,
               ) -> Iterator[int]:
        """Yield new token ids (B=1) from the prompt's last logits (1, V) until a stop token (not
        yielded) or max_new_tokens; each token is fed back through the cache before the next."""
        stops = set(stop_ids)
        if temperature <= 0 and self.mode == "fast" and self.lookahead > 0:
            yield from self._stream_lookahead(logits, cache, stops, max_new_tokens)
            return
        for step in range(max_new_tokens):
            token = int(pick(logits, temperature, top_p, generator)[0])
            if token in stops:
                return
            yield token
            if step + 1 == max_new_tokens:
                return
            logits = self.forward(self.embed(torch.tensor([[token]])), cache)
            cache.ids.append(token)

    def _stream_lookahead(self, logits: torch.Tensor, cache: KVCache, stops: set[int], max_new_tokens: int
                          ) -> Iterator[int]:
        """Greedy decoding that guesses ahead (prompt lookup): where the last few tokens occurred before,
        in the prompt or the answer so far, the tokens that followed them are run through the model with
        the new token in one call, and as many as the model itself would have picked are kept. The
        tokens are greedy's; a call costs about one token's weights however many positions it runs.
        A guess that misses makes a step dearer for nothing, so after each miss in a row guessing pauses
        for twice as many steps (2, 4, 8, up to MAX_PAUSE); a kept guess ends the pause rule."""
        made, misses, pause = 0, 0, 0
        try:
            while True:
                token = int(logits.argmax(-1)[0])
                if token in stops:
                    return
                yield token
                made += 1
                if made == max_new_tokens:
                    return
                guess = [] if pause else lookup(cache.ids + [token], min(self.lookahead, max_new_tokens - made))
                pause = max(pause - 1, 0)
                all_logits = self.forward(self.embed(torch.tensor([[token] + guess])), cache, all_logits=True)[0]
                cache.ids.append(token)
                picked = all_logits[:-1].argmax(-1).tolist() if guess else []  # greedy's pick after each position
                kept = 0
                while kept < len(guess) and picked[kept] == guess[kept]:
                    kept += 1
                if guess:
                    misses = 0 if kept else misses + 1
                    pause = min(2 ** misses, MAX_PAUSE) if misses else 0
                for t in guess[:kept]:  # each is also the model's own pick: yield it as greedy would
                    if t in stops:
                        return
                    yield t
                    made += 1
                    cache.ids.append(t)
                    if made == max_new_tokens:
                        return
                cache.truncate(len(cache.ids))  # forget the guesses that were wrong
                logits = all_logits[kept:kept + 1]
        finally:  # however it ends (a stop, the limit, the reader gone), the cache holds what was said
            cache.truncate(len(cache.ids))

    @torch.no_grad()
    def generate_batch(self, embeds: torch.Tensor, pad: torch.Tensor, stop_ids: list[int],
                       max_new_tokens: int) -> list[list[int]]:
        """Greedy tokens for B left-padded prompts (B, L, H); pad (B,) counts each row's padding."""
        B, L, _ = embeds.shape
        cache = self.new_cache(B, L + max_new_tokens)
        cache.pad = pad
        return self._greedy(self.forward(embeds, cache, prompt=True), cache, stop_ids, max_new_tokens)

    @torch.no_grad()
    def generate_shared(self, prefix: torch.Tensor, suffixes: torch.Tensor, pad: torch.Tensor,
                        stop_ids: list[int], max_new_tokens: int) -> list[list[int]]:
        """Greedy tokens for B prompts that start the same way: the shared prefix (1, P, H) is computed
        once, then each row's own suffix (B, S, H), left-padded by pad (B,) after the prefix."""
        B, S, _ = suffixes.shape
        P = prefix.shape[1]
        one = self.new_cache(1, P + S + max_new_tokens)
        self.forward(prefix, one, prompt=True)
        cache = KVCache([t.expand(B, -1, -1, -1).contiguous() for t in one.k],
                        [t.expand(B, -1, -1, -1).contiguous() for t in one.v], P, pad=pad, pad_at=P)
        return self._greedy(self.forward(suffixes, cache, prompt=True), cache, stop_ids, max_new_tokens)

    def _greedy(self, logits: torch.Tensor, cache: KVCache, stop_ids: list[int], max_new_tokens: int
                ) -> list[list[int]]:
        """Greedy decoding of a batch from its prompts' last logits (B, V), each row up to its first stop."""
        B = logits.shape[0]
        stops = torch.tensor(sorted(set(stop_ids)))
        out = torch.empty(B, 0, dtype=torch.long)
        done = torch.zeros(B, dtype=torch.bool)
        for step in range(max_new_tokens):
            token = logits.argmax(-1)  # (B,)
            done = done | torch.isin(token, stops)
            out = torch.cat([out, token[:, None]], 1)
            if bool(done.all()) or step + 1 == max_new_tokens:
                break
            logits = self.forward(self.embed(token[:, None]), cache)
        result = []
        for row in out.tolist():
            cut = next((j for j, t in enumerate(row) if t in set(stop_ids)), len(row))
            result.append(row[:cut])
        return result

    def nbytes(self) -> int:
        """Bytes of weights one token reads (the layers and the LM head)."""
        parts = [self.head] + [getattr(lay, n) for lay in self.layers for n in ("qkv", "o", "gate_up", "down")]
        return sum(part.nbytes() for part in parts)


def lookup(ids: list[int], n: int, longest: int = 3) -> list[int]:
    """Up to n tokens that followed the latest earlier occurrence of the last `longest` (then fewer,
    down to 2) tokens of ids; [] when they did not occur before."""
    for size in range(min(longest, len(ids) - 1), 1, -1):
        tail = ids[-size:]
        for at in range(len(ids) - size - 1, -1, -1):
            if ids[at:at + size] == tail:
                return ids[at + size:at + size + n]
    return []


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rotation(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rope as a product: R (B, L, hs, hs) with x @ R[b, l] = x * cos + _rotate_half(x) * sin at each
    position, for tables cos, sin (B, 1, L, hs)."""
    B, _, L, hs = cos.shape
    half, idx = hs // 2, torch.arange(hs)
    R = torch.zeros(B, L, hs, hs)
    R[:, :, idx, idx] = cos[:, 0]
    R[:, :, idx[half:], idx[:half]] = -sin[:, 0, :, :half]  # rotate_half(x)[j] = -x[j + half] for j < half
    R[:, :, idx[:half], idx[half:]] = sin[:, 0, :, half:]  # and x[j - half] from half on
    return R


def pick(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None = None
         ) -> torch.Tensor:
    """Next token per row of (B, V) logits: argmax when temperature is 0, else nucleus sampling."""
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_p < 1.0:
        sorted_logits, order = logits.sort(-1, descending=True)  # (B, V)
        probs = sorted_logits.softmax(-1)
        # drop a token once the ones before it already hold top_p of the mass (the first always stays)
        drop = probs.cumsum(-1) - probs > top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]
