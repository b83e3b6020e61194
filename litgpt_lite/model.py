"""The one decoder-only GPT. Read it top to bottom: GPT, Block, attention, MLPs, norms, RoPE, KV cache.

Every family (Llama, Gemma, Phi, Falcon, ...) is this same code with different `Config` switches.
Shapes: B batch, T new tokens, S cached tokens, C n_embd, H heads, G key/value groups, D head size.

Positions and the KV cache. A batch of prompts of different lengths is left-padded, so each row has its own
`pad_lens[b]`: the cache slot (time) `t` of row b holds position `t - pad_lens[b]`. A key at time `tk` is visible
to a query at time `tq` when `pad_lens[b] <= tk <= tq` (and `tq - tk < window` in sliding layers). Packed training
rows instead pass `segment_ids`: a token sees only earlier tokens of its own segment, and positions restart.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from litgpt_lite.config import Config


class GPT(nn.Module):
    """Token embedding, `n_layer` Blocks, a final norm and the LM head (tied to the embedding where configured)."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=make_embedding(config.padded_vocab_size, config.n_embd),
                h=nn.ModuleList(Block(config, i) for i in range(config.n_layer)),
                ln_f=make_norm(config, config.n_embd),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=config.lm_head_bias)
        if config.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
        self.rope = RoPE(config)
        self.decode_step: Any = None  # set by `compile_decode`

    def forward(
        self,
        idx: torch.Tensor,
        input_pos: int | None = None,
        pad_lens: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        return_hidden: bool = False,
    ) -> torch.Tensor:
        """Logits (B, T, padded_vocab) for token ids `idx` (B, T).

        Args:
            idx: token ids.
            input_pos: with a KV cache (`set_kv_cache`), the cache time of `idx[:, 0]`; None means no cache. A
                0-dim tensor selects static shapes: every layer attends over its whole cache under a mask, so one
                compiled graph serves every step (`compile_decode`).
            pad_lens: (B,) number of left-padding slots per row (cache mode).
            segment_ids: (B, T) packed-sample ids; attention stays within a segment.
            positions: (B, T) RoPE positions; derived from the other arguments when None.
            return_hidden: return the final hidden states (B, T, C) instead of logits (chunked losses use it).
        """
        B, T = idx.shape
        times = self._times(T, input_pos, idx.device)  # (T,) cache times of the new tokens
        if positions is None:
            positions = self._positions(B, times, pad_lens, segment_ids)
        start = None if isinstance(input_pos, torch.Tensor) else input_pos or 0  # None: static shapes
        mask = MaskSpec(times, pad_lens, segment_ids, cached=input_pos is not None, start=start)

        x = self.transformer.wte(idx)  # (B, T, C)
        cos_sin = self.rope(positions, idx.device, x.dtype)
        if self.config.scale_embeddings:
            x = x * torch.tensor(self.config.n_embd**0.5, dtype=x.dtype)
        for block in self.transformer.h:
            x = block(x, cos_sin, mask)
        x = self.transformer.ln_f(x)
        if return_hidden:
            return x
        return self.logits(x)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """lm_head (plus final softcapping) over hidden states."""
        logits = self.lm_head(x)
        if self.config.final_logit_softcapping is not None:
            cap = self.config.final_logit_softcapping
            logits = torch.tanh(logits / cap) * cap
        return logits

    def compile_decode(self, mode: str | None = None) -> None:
        """Compile the one-token decode step with static shapes (the generation core calls `decode_step` with a
        tensor position). `mode="reduce-overhead"` replays it as a CUDA graph on GPUs; the prefill stays eager."""
        self.decode_step = torch.compile(self.forward, mode=mode, dynamic=False)

    @staticmethod
    def _times(T: int, input_pos: int | torch.Tensor | None, device: torch.device) -> torch.Tensor:
        if isinstance(input_pos, torch.Tensor):
            return input_pos.view(1) + torch.arange(T, device=device)
        start = input_pos or 0
        return torch.arange(start, start + T, device=device)

    @staticmethod
    def _positions(B: int, times: torch.Tensor, pad_lens, segment_ids) -> torch.Tensor:
        if segment_ids is not None:  # positions restart at every new segment
            T = segment_ids.shape[1]
            idx = torch.arange(T, device=segment_ids.device).expand_as(segment_ids)
            starts = torch.ones_like(segment_ids, dtype=torch.bool)
            starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
            seg_start = torch.cummax(torch.where(starts, idx, torch.zeros_like(idx)), dim=1).values
            return idx - seg_start
        positions = times.unsqueeze(0).expand(B, -1)
        if pad_lens is not None:
            positions = (positions - pad_lens.unsqueeze(1)).clamp(min=0)
        return positions

    # ---- KV cache
    def set_kv_cache(self, batch_size: int, max_seq_length: int | None = None, dtype: torch.dtype | None = None):
        """Allocate a static KV cache in every attention layer (ring buffers in sliding-window layers)."""
        max_seq_length = max_seq_length or self.config.block_size
        if max_seq_length > self.config.block_size:
            raise ValueError(f"max_seq_length {max_seq_length} exceeds block_size {self.config.block_size}")
        param = self.lm_head.weight
        if dtype is None:  # the activations' dtype: the embedding's output, whatever dtype the weights are stored in
            dtype = self.transformer.wte(torch.zeros(1, dtype=torch.long, device=param.device)).dtype
        for block in self.transformer.h:
            block.attn.kv_cache = KVCache(
                self.config, block.attn.layer, batch_size, max_seq_length, param.device, dtype
            )

    def keep_kv_cache_rows(self, rows: torch.Tensor) -> None:
        """Shrink every layer's KV cache to the batch rows `rows` (in that order), e.g. when some rows finished."""
        for block in self.transformer.h:
            block.attn.kv_cache.keep_rows(rows)

    def clear_kv_cache(self) -> None:
        for block in self.transformer.h:
            block.attn.kv_cache = None

    @property
    def max_seq_length(self) -> int:
        cache = self.transformer.h[0].attn.kv_cache
        return cache.max_seq_length if cache is not None else self.config.block_size


def make_embedding(vocab: int, dim: int) -> nn.Embedding:
    """nn.Embedding, initialised like torch's own except on the meta device, where `normal_` would import dynamo
    (seconds of every checkpoint load) to initialise weights that are about to be replaced anyway."""
    wte = nn.Embedding(vocab, dim, _weight=torch.empty(vocab, dim))
    if wte.weight.device.type != "meta":
        nn.init.normal_(wte.weight)
    return wte


class Block(nn.Module):
    """One transformer layer: attention and MLP, with pre- or post-norms, sequential or parallel residual."""

    def __init__(self, config: Config, layer: int) -> None:
        super().__init__()
        self.config = config
        self.norm_1 = make_norm(config, config.n_embd) if config.pre_norm else nn.Identity()
        self.attn = CausalSelfAttention(config, layer)
        # absent post-norms are None and skipped, not Identity modules called for nothing (60 calls a decode step)
        self.post_attention_norm = make_norm(config, config.n_embd) if config.post_attention_norm else None
        needs_norm_2 = config.pre_norm and not config.shared_attention_norm
        self.norm_2 = make_norm(config, config.n_embd) if needs_norm_2 else nn.Identity()
        self.mlp = make_mlp(config)
        self.post_mlp_norm = make_norm(config, config.n_embd) if config.post_mlp_norm else None

    def forward(self, x: torch.Tensor, cos_sin, mask: MaskSpec) -> torch.Tensor:
        x_normed = self.norm_1(x)
        attn_out = self.attn(x_normed, cos_sin, mask)
        if self.post_attention_norm is not None:
            attn_out = self.post_attention_norm(attn_out)
        post_mlp = self.post_mlp_norm
        if self.config.parallel_residual:
            mlp_out = self.mlp(x_normed if self.config.shared_attention_norm else self.norm_2(x))
            return x + attn_out + (mlp_out if post_mlp is None else post_mlp(mlp_out))
        x = x + attn_out
        mlp_out = self.mlp(self.norm_2(x))
        return x + (mlp_out if post_mlp is None else post_mlp(mlp_out))


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention: fused q/k/v projection, grouped key/value heads, RoPE, optional KV cache."""

    def __init__(self, config: Config, layer: int) -> None:
        super().__init__()
        self.config, self.layer = config, layer
        D, H, G = config.head_size, config.n_head, config.n_query_groups
        self.qkv = nn.Linear(config.n_embd, (H + 2 * G) * D, bias=config.attn_bias)  # fused [Q; K; V]
        self.proj = nn.Linear(H * D, config.n_embd, bias=config.attn_proj_bias)
        if config.norm_qk:
            qk_dims = (D, D) if config.norm_qk_type == "head" else (H * D, G * D)
            self.norm_q = make_norm(config, qk_dims[0])
            self.norm_k = make_norm(config, qk_dims[1])
        self.window = config.sliding_window_size if config.is_sliding(layer) else None
        self.local_rope = config.is_sliding(layer) and config.rope_local_base is not None
        self.scale = 1.0 / math.sqrt(config.attention_scores_scalar or config.head_size)
        # packed rows can attend one segment at a time unless a window or a softcap needs the full score matrix
        self.segmentwise = self.window is None and config.attention_logit_softcapping is None
        self.kv_cache: KVCache | None = None

    def forward(self, x: torch.Tensor, cos_sin, mask: MaskSpec) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self._project(x, *cos_sin["local" if self.local_rope else "global"])  # (B, H|G|G, T, D)
        key_times, all_valid = mask.times, False
        if self.kv_cache is not None and mask.cached:
            k, v, key_times, all_valid = self.kv_cache.update(mask.times, k, v, mask.start)
        runs = mask.segment_runs() if self.segmentwise else None
        if runs is not None:
            y = self._attend_segments(q, k, v, runs)
        else:
            y = self.attend(q, k, v, mask.build(key_times, self.window, x.device, all_valid))  # (B, H, T, D)
        return self.proj(y.transpose(1, 2).reshape(B, T, -1))

    def _project(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """Queries, keys and values (B, heads, T, D), with RoPE applied to queries and keys."""
        B, T, _ = x.shape
        D, H, G = self.config.head_size, self.config.n_head, self.config.n_query_groups
        qkv = self.qkv(x)
        if self.config.clip_qkv is not None:
            qkv = qkv.clamp(-self.config.clip_qkv, self.config.clip_qkv)
        if not self.config.norm_qk:  # rotate queries and keys in one pass: half the small ops of a decode step
            qk, v = qkv.view(B, T, H + 2 * G, D).split((H + G, G), dim=2)
            q, k = self.rotate(qk, cos, sin).split((H, G), dim=2)
        else:
            q, k, v = qkv.split((H * D, G * D, G * D), dim=-1)
            if self.config.norm_qk_type == "all":
                q, k = self.norm_q(q), self.norm_k(k)
            q, k, v = (t.view(B, T, -1, D) for t in (q, k, v))
            if self.config.norm_qk_type == "head":
                q, k = self.norm_q(q), self.norm_k(k)
            q, k = self.rotate(q, cos, sin), self.rotate(k, cos, sin)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """RoPE on queries and/or keys x (B, T, heads, D)."""
        return apply_rope(x, cos, sin)

    def attend(self, q, k, v, mask: torch.Tensor | None) -> torch.Tensor:
        """Scaled dot-product attention (B, H, T, D) of queries (B, H, T, D) over keys and values (B, G, S, D);
        `mask` (B or 1, 1, T, S) says which keys each query sees, None plain causal."""
        H, G = q.shape[1], k.shape[1]
        cap = self.config.attention_logit_softcapping
        if cap is None:  # SDPA shares each key/value head among H // G query heads itself (no copies)
            causal = mask is None and q.shape[2] > 1
            return F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=causal, scale=self.scale, enable_gqa=G != H
            )
        if G != H:
            k = k.repeat_interleave(H // G, dim=1)
            v = v.repeat_interleave(H // G, dim=1)
        scores = (q @ k.transpose(-2, -1)) * self.scale  # (B, H, T, S)
        scores = torch.tanh(scores / cap) * cap
        if mask is None:
            T, S = scores.shape[-2:]
            mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        return torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype) @ v

    def _attend_segments(self, q, k, v, runs: list[list[int]]) -> torch.Tensor:
        """Causal attention within each packed segment, one SDPA call per segment. The masked call over the whole
        row computes every (query, key) pair and throws most away; this computes only the pairs a segment has, and
        `split` (unlike slicing) gives backward one concatenation instead of a zero-filled gradient per piece:
        fwd + bwd of a SmolLM2 layer at 4 x 512 with Alpaca-length segments, 70 -> 33 ms on 2 cores."""
        gqa = q.shape[1] != k.shape[1]
        sdpa = functools.partial(F.scaled_dot_product_attention, is_causal=True, scale=self.scale, enable_gqa=gqa)
        rows = []
        for qb, kb, vb, lengths in zip(q.unbind(0), k.unbind(0), v.unbind(0), runs):
            pieces = zip(qb.split(lengths, 1), kb.split(lengths, 1), vb.split(lengths, 1))
            # 4-d pieces: SDPA takes its flash kernel only for (batch, heads, time, dim) inputs (math for 3-d)
            outs = [sdpa(qs[None], ks[None], vs[None]) for qs, ks, vs in pieces]
            rows.append(torch.cat(outs, dim=2))
        return torch.cat(rows)


class MaskSpec:
    """What decides which keys a query may see; `build` turns it into a boolean mask (or None for plain causal)."""

    def __init__(self, times: torch.Tensor, pad_lens, segment_ids, cached: bool, start: int | None = 0) -> None:
        self.times, self.pad_lens, self.segment_ids, self.cached = times, pad_lens, segment_ids, cached
        self.start = start  # the cache time of the first new token as a host int; None: static shapes
        self._memo: dict[Any, torch.Tensor | None] = {}

    def segment_runs(self) -> list[list[int]] | None:
        """Per row, the lengths of its packed segments in order, when attention can run segment by segment: packed
        rows without a cache, each segment one contiguous run, in eager mode (under `torch.compile` the host lengths
        would recompile the graph for every new packing). None otherwise: the boolean mask handles it."""
        if self.segment_ids is None or self.cached or self.pad_lens is not None or torch.compiler.is_compiling():
            return None
        return self._runs

    @functools.cached_property
    def _runs(self) -> list[list[int]] | None:
        runs = []
        for row in self.segment_ids.cpu():  # one host copy per forward; every layer reuses the answer
            ids, counts = torch.unique_consecutive(row, return_counts=True)
            if len(set(ids.tolist())) != len(ids):  # a segment id in two runs: they see each other
                return None
            runs.append(counts.tolist())
        return runs

    def build(self, key_times: torch.Tensor, window: int | None, device, all_valid: bool = False):
        """The mask for these keys; `all_valid` says every key slot holds a stored entry (no empty slot)."""
        memo_key = (key_times.shape[0], window, all_valid)  # layers of one kind see the same keys in a forward
        if memo_key not in self._memo:
            self._memo[memo_key] = self._build(key_times, window, device, all_valid)
        return self._memo[memo_key]

    def _build(self, key_times: torch.Tensor, window: int | None, device, all_valid: bool) -> torch.Tensor | None:
        tq = self.times.view(-1, 1)  # (T, 1)
        tk = key_times.view(1, -1)  # (1, S)
        plain = self.pad_lens is None and self.segment_ids is None and window is None
        if plain and not self.cached:
            return None  # SDPA's own causal path
        if plain and tq.shape[0] == 1 and all_valid:
            return None  # one new token sees every cached key
        allowed = (tk <= tq) & (tk >= 0)  # (T, S); empty ring slots carry time -1
        if window is not None:
            allowed = allowed & (tq - tk < window)
        allowed = allowed.unsqueeze(0)  # (1, T, S)
        if self.pad_lens is not None:
            allowed = allowed & (tk.unsqueeze(0) >= self.pad_lens.view(-1, 1, 1))
            allowed = allowed | (tq == tk).unsqueeze(0)  # padding queries see themselves: no all-masked rows
        if self.segment_ids is not None:
            seg = self.segment_ids
            allowed = allowed & (seg.unsqueeze(2) == seg.unsqueeze(1))
        return allowed.unsqueeze(1)  # (B or 1, 1, T, S)


# ---------------------------------------------------------------- MLPs
class GptNeoxMLP(nn.Module):
    """fc -> GELU -> proj (GPT-NeoX, Phi-2, Falcon)."""

    def __init__(self, config: Config, intermediate_size: int | None = None) -> None:
        super().__init__()
        size = intermediate_size or config.intermediate_size
        self.fc = nn.Linear(config.n_embd, size, bias=config.mlp_bias)
        self.proj = nn.Linear(size, config.n_embd, bias=config.mlp_bias)
        self.approximate = config.gelu_approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x), approximate=self.approximate))


class LLaMAMLP(nn.Module):
    """SwiGLU: proj(silu(fc_1(x)) * fc_2(x))."""

    def __init__(self, config: Config, intermediate_size: int | None = None) -> None:
        super().__init__()
        size = intermediate_size or config.intermediate_size
        self.fc_1 = nn.Linear(config.n_embd, size, bias=config.mlp_bias)  # gate
        self.fc_2 = nn.Linear(config.n_embd, size, bias=config.mlp_bias)  # up
        self.proj = nn.Linear(size, config.n_embd, bias=config.mlp_bias)  # down
        self.config = config

    def act(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.act(self.fc_1(x)) * self.fc_2(x))


class GemmaMLP(LLaMAMLP):
    """GeGLU: like SwiGLU with GELU as the gate."""

    def act(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate=self.config.gelu_approximate)


class LLaMAMoE(nn.Module):
    """Mixture of SwiGLU experts with a top-k softmax router."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.gate = nn.Linear(config.n_embd, config.n_expert, bias=False)
        self.experts = nn.ModuleList(LLaMAMLP(config, config.expert_intermediate_size) for _ in range(config.n_expert))
        self.config = config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        x = x.reshape(-1, C)  # (N, C)
        probs = torch.softmax(self.gate(x), dim=-1, dtype=torch.float)  # (N, E)
        weights, chosen = probs.topk(self.config.n_expert_per_token, dim=-1)  # (N, k)
        if self.config.moe_norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        weights = weights.to(x.dtype)
        y = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            token, slot = torch.where(chosen == e)
            if token.numel():
                y.index_add_(0, token, expert(x[token]) * weights[token, slot, None])
        return y.view(B, T, C)


def make_mlp(config: Config) -> nn.Module:
    return {"GptNeoxMLP": GptNeoxMLP, "LLaMAMLP": LLaMAMLP, "GemmaMLP": GemmaMLP, "LLaMAMoE": LLaMAMoE}[
        config.mlp_class
    ](config)


# ---------------------------------------------------------------- norms
class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in float32; Gemma scales by (1 + weight)."""

    def __init__(self, size: int, eps: float = 1e-6, unit_offset: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(size) if unit_offset else torch.ones(size))
        self.eps, self.unit_offset = eps, unit_offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        # torch's rms_norm runs transformers' float32 ops (x * rsqrt(mean(x^2) + eps)) in one call from Python
        x = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        if self.unit_offset:  # Gemma multiplies in float32, Llama in the input dtype
            return (x * (1 + self.weight.float())).to(dtype)
        weight = self.weight if self.weight.dtype == dtype else self.weight.to(dtype)
        return weight * x.to(dtype)


def make_norm(config: Config, size: int) -> nn.Module:
    if config.norm_class == "RMSNorm":
        return RMSNorm(size, eps=config.norm_eps, unit_offset=config.norm_unit_offset)
    return nn.LayerNorm(size, eps=config.norm_eps, elementwise_affine=config.norm_affine, bias=config.norm_affine)


# ---------------------------------------------------------------- rotary position embedding
class RoPE(nn.Module):
    """cos/sin for given positions, computed on the fly in float32 (as transformers does)."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config
        dim = config.rope_n_elem
        with torch.device("cpu"):  # real numbers even under a meta-device build; `.to()` moves them later
            self._build(config, dim)

    def _build(self, config: Config, dim: int) -> None:
        inv_freq, self.attention_scaling = rope_inv_freq(dim, config.rope_base, config.rope_scaling, config.block_size)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        long = None
        if config.rope_scaling and config.rope_scaling.get("type") == "longrope":
            long, _ = rope_inv_freq(dim, config.rope_base, config.rope_scaling, config.block_size, long=True)
        self.register_buffer("long_inv_freq", long, persistent=False)
        local_base = config.rope_local_base
        self.register_buffer(
            "local_inv_freq", rope_inv_freq(dim, local_base, None, 0)[0] if local_base else None, persistent=False
        )

    def forward(self, positions: torch.Tensor, device, dtype) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """cos/sin (B, T, 1, rope dims) per kind of layer, computed in float32 and cast once to `dtype` (the
        activations' dtype), as transformers does, rather than in every layer."""
        inv_freq = self.inv_freq
        if self.long_inv_freq is not None:
            original = self.config.rope_scaling["original_max_position_embeddings"]
            if int(positions.max()) + 1 > original:
                inv_freq = self.long_inv_freq
        out = {"global": _cos_sin(positions, inv_freq, self.attention_scaling, dtype)}
        out["local"] = (
            _cos_sin(positions, self.local_inv_freq, 1.0, dtype) if self.local_inv_freq is not None else out["global"]
        )
        return out


def _cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor, scaling: float, dtype: torch.dtype):
    """cos and signed sin (B, T, 1, dim) for `apply_rope`; the sin's first half is negated (see there)."""
    freqs = positions.unsqueeze(-1).float() * inv_freq.float().to(positions.device)  # (B, T, dim/2)
    emb = torch.cat((freqs, freqs), dim=-1).unsqueeze(2)  # (B, T, 1, dim)
    sin = emb.sin() * scaling
    sin[..., : freqs.shape[-1]].neg_()
    return (emb.cos() * scaling).to(dtype), sin.to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first `cos.shape[-1]` dims of x (B, T, heads, D) by the positions' angles (half-split layout).

    transformers computes `x * cos + rotate_half(x) * sin` with `rotate_half(x) = [-x2, x1]`. Here the sign lives in
    the sin (`_cos_sin` negates its first half once per forward), so `rotate_half` is a plain roll of the halves:
    `[x2, x1] * [-sin, sin]` equals `[-x2, x1] * [sin, sin]` exactly, in one copy instead of a negation and a cat.
    """
    n = cos.shape[-1]
    if n == 0:
        return x
    rot = x[..., :n] if n < x.shape[-1] else x
    out = rot * cos + torch.roll(rot, n // 2, dims=-1) * sin
    return torch.cat((out, x[..., n:]), dim=-1) if n < x.shape[-1] else out


def rope_inv_freq(dim: int, base: float, scaling: dict | None, block_size: int, long: bool = False):
    """Inverse frequencies (dim/2,) and the attention scaling factor for a RoPE variant."""
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
    inv_freq = 1.0 / (base**exponents)
    if not scaling:
        return inv_freq, 1.0
    kind = scaling["type"]
    if kind == "linear":
        return inv_freq / scaling["factor"], 1.0
    if kind == "llama3":
        return _llama3_inv_freq(inv_freq, scaling), 1.0
    if kind == "yarn":
        return _yarn_inv_freq(dim, base, scaling, block_size)
    if kind == "longrope":
        original = scaling["original_max_position_embeddings"]
        factors = torch.tensor(scaling["long_factor" if long else "short_factor"], dtype=torch.float32)
        factor = block_size / original
        attn = scaling.get("attention_factor")
        if attn is None:
            attn = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
        return 1.0 / (factors * base**exponents), attn
    raise ValueError(f"unknown rope scaling type {kind!r}")


def _llama3_inv_freq(inv_freq: torch.Tensor, s: dict) -> torch.Tensor:
    factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    old_len = s["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old_len / high) & ~(wavelen > old_len / low)
    return torch.where(medium, smoothed, scaled)


def _yarn_inv_freq(dim: int, base: float, s: dict, block_size: int):
    factor = s["factor"]
    original = s.get("original_max_position_embeddings") or block_size

    def mscale(scale: float, m: float = 1.0) -> float:
        return 0.1 * m * math.log(scale) + 1.0 if scale > 1 else 1.0

    attn = s.get("attention_factor")
    if attn is None:
        if s.get("mscale") and s.get("mscale_all_dim"):
            attn = mscale(factor, s["mscale"]) / mscale(factor, s["mscale_all_dim"])
        else:
            attn = mscale(factor)

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(s.get("beta_fast") or 32), correction_dim(s.get("beta_slow") or 1)
    if s.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    pos_freqs = base ** (torch.arange(0, dim, 2).float() / dim)
    extrapolation = 1 - ramp
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolation) + (1.0 / pos_freqs) * extrapolation
    return inv_freq, attn


# ---------------------------------------------------------------- KV cache
class KVCache(nn.Module):
    """Static key/value buffers. Sliding-window layers keep a ring of `window` slots, tagged with their times."""

    def __init__(self, config: Config, layer: int, batch_size: int, max_seq_length: int, device, dtype) -> None:
        super().__init__()
        self.max_seq_length = max_seq_length
        window = config.sliding_window_size if config.is_sliding(layer) else None
        self.ring = window is not None and window < max_seq_length
        slots = window if self.ring else max_seq_length
        shape = (batch_size, config.n_query_groups, slots, config.head_size)
        self.register_buffer("k", torch.zeros(shape, device=device, dtype=dtype), persistent=False)
        self.register_buffer("v", torch.zeros(shape, device=device, dtype=dtype), persistent=False)
        self.register_buffer("slot_times", torch.full((slots,), -1, device=device, dtype=torch.long), persistent=False)
        self.filled = 0  # slots [0, filled) hold entries (non-ring caches), tracked on the host

    def keep_rows(self, rows: torch.Tensor) -> None:
        self.k = self.k.index_select(0, rows)
        self.v = self.v.index_select(0, rows)

    def update(self, times: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int | None):
        """Store the new keys/values at `times` (`start` = times[0] as a host int); return the keys, values and
        times to attend over, and whether every returned slot holds an entry. With `start` None (static shapes), the
        whole buffers: their shapes never change, and empty slots are masked by their time -1."""
        B = k.shape[0]
        if k.dtype != self.k.dtype:
            k, v = k.to(self.k.dtype), v.to(self.v.dtype)
        if start is None and not self.ring:
            keys, values = self.k[:B], self.v[:B]
            keys.index_copy_(2, times, k)
            values.index_copy_(2, times, v)
            self.slot_times.index_copy_(0, times, times)
            return keys, values, self.slot_times, False
        if not self.ring:  # times are consecutive: write a slice, not an index list (`narrow`: no indexing machinery)
            T, end = times.shape[0], start + times.shape[0]
            keys, values = self.k, self.v
            if B != keys.shape[0]:  # fewer rows than the cache was built for
                keys, values = keys.narrow(0, 0, B), values.narrow(0, 0, B)
            keys.narrow(2, start, T).copy_(k)
            values.narrow(2, start, T).copy_(v)
            self.slot_times.narrow(0, start, T).copy_(times)
            if start <= self.filled:
                self.filled = max(self.filled, end)
            times = self.slot_times.narrow(0, 0, end)
            return keys.narrow(2, 0, end), values.narrow(2, 0, end), times, end <= self.filled
        # ring: attend over the old ring plus the new chunk, then keep the newest `slots` entries
        all_k = torch.cat((self.k[:B], k), dim=2)
        all_v = torch.cat((self.v[:B], v), dim=2)
        all_t = torch.cat((self.slot_times, times))
        slots = self.slot_times.shape[0]
        keep = times[-slots:]
        self.k[:B, :, keep % slots] = k[:, :, -slots:]
        self.v[:B, :, keep % slots] = v[:, :, -slots:]
        self.slot_times[keep % slots] = keep
        return all_k, all_v, all_t, False
