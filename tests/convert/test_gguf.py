"""GGUF import: dequantization per type against ggml's reference code, Llama / Gemma 3 / Qwen parity with transformers
on synthetic GGUF files, and the real SmolLM2-135M-Instruct Q4_1 file against the reference HF folder dequantized from
it (same weights, same token ids, same greedy answer)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as Q  # noqa: E402
from gguf import GGUFWriter  # noqa: E402
from gguf.quants import dequantize, quantize  # noqa: E402

from litgpt_lite.convert import convert_to_litgpt  # noqa: E402
from litgpt_lite.convert.gguf import convert_gguf, open_gguf, read_tensor  # noqa: E402
from litgpt_lite.errors import UserError  # noqa: E402
from litgpt_lite.loading import load_model  # noqa: E402


# ---------------------------------------------------------------- writing GGUF files
def write_gguf(path: Path, arch: str, kv, tensors: list[tuple[str, np.ndarray, Q | None]]) -> Path:
    """A GGUF file: `kv(writer)` adds the metadata; tensors are (name, array, raw type or None for float arrays)."""
    writer = GGUFWriter(str(path), arch)
    kv(writer)
    for name, array, raw in tensors:
        writer.add_tensor(name, array, raw_dtype=raw)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permutation of Llama q/k rows (the one the importer undoes)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# ---------------------------------------------------------------- dequantization, type by type
def _q4_k_reference(raw: np.ndarray) -> np.ndarray:
    """ggml's dequantize_row_q4_K, line by line (block: f16 d, f16 dmin, 12 bytes of 6-bit scales/mins, 128 qs)."""
    out = []
    for block in raw.reshape(-1, 144):
        d, dmin = block[0:2].view(np.float16)[0], block[2:4].view(np.float16)[0]
        scales, qs = block[4:16].astype(np.int32), block[16:].astype(np.int32)

        for j in range(4):  # 64 values per step: low nibbles, then high nibbles of 32 bytes
            (s1, m1), (s2, m2) = _k4_scale_min(scales, 2 * j), _k4_scale_min(scales, 2 * j + 1)
            q = qs[32 * j : 32 * j + 32]
            out += [float(d) * s1 * (v & 0xF) - float(dmin) * m1 for v in q]
            out += [float(d) * s2 * (v >> 4) - float(dmin) * m2 for v in q]
    return np.array(out, dtype=np.float32)


def _q6_k_reference(raw: np.ndarray) -> np.ndarray:
    """ggml's dequantize_row_q6_K (block: 128 bytes low 4 bits, 64 bytes high 2 bits, 16 int8 scales, f16 d)."""
    out = []
    for block in raw.reshape(-1, 210):
        ql, qh = block[:128].astype(np.int32), block[128:192].astype(np.int32)
        sc, d = block[192:208].view(np.int8).astype(np.int32), float(block[208:210].view(np.float16)[0])
        y = np.zeros(256)
        for half in range(2):
            lo, hi, s, base = ql[64 * half :], qh[32 * half :], sc[8 * half :], 128 * half
            for i in range(32):
                k = i // 16
                y[base + i] = d * s[k] * (((lo[i] & 0xF) | ((hi[i] & 3) << 4)) - 32)
                y[base + i + 32] = d * s[k + 2] * (((lo[i + 32] & 0xF) | (((hi[i] >> 2) & 3) << 4)) - 32)
                y[base + i + 64] = d * s[k + 4] * (((lo[i] >> 4) | (((hi[i] >> 4) & 3) << 4)) - 32)
                y[base + i + 96] = d * s[k + 6] * (((lo[i + 32] >> 4) | (((hi[i] >> 6) & 3) << 4)) - 32)
        out += list(y)
    return np.array(out, dtype=np.float32)


def _k4_scale_min(scales: np.ndarray, j: int) -> tuple[int, int]:
    """ggml's get_scale_min_k4: the j-th 6-bit scale and min packed in 12 bytes (Q4_K, Q5_K)."""
    if j < 4:
        return scales[j] & 63, scales[j + 4] & 63
    return (scales[j + 4] & 0xF) | ((scales[j - 4] >> 6) << 4), (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4)


def _q5_k_reference(raw: np.ndarray) -> np.ndarray:
    """ggml's dequantize_row_q5_K (f16 d, f16 dmin, 12 scale bytes, 32 bytes of 5th bits, 128 bytes of nibbles)."""
    out = []
    for block in raw.reshape(-1, 176):
        d, dmin = float(block[0:2].view(np.float16)[0]), float(block[2:4].view(np.float16)[0])
        scales, qh, ql = block[4:16].astype(np.int32), block[16:48].astype(np.int32), block[48:].astype(np.int32)
        for j in range(4):
            (s1, m1), (s2, m2) = _k4_scale_min(scales, 2 * j), _k4_scale_min(scales, 2 * j + 1)
            q = ql[32 * j : 32 * j + 32]
            out += [d * s1 * ((v & 0xF) + (16 if h & (1 << 2 * j) else 0)) - dmin * m1 for v, h in zip(q, qh)]
            out += [d * s2 * ((v >> 4) + (16 if h & (2 << 2 * j) else 0)) - dmin * m2 for v, h in zip(q, qh)]
    return np.array(out, dtype=np.float32)


def _q2_k_reference(raw: np.ndarray) -> np.ndarray:
    """ggml's dequantize_row_q2_K (16 bytes of 4-bit scale/min pairs, 64 bytes of 2-bit values, f16 d, f16 dmin)."""
    out = []
    for block in raw.reshape(-1, 84):
        scales, qs = block[:16].astype(np.int32), block[16:80].astype(np.int32)
        d, dmin = float(block[80:82].view(np.float16)[0]), float(block[82:84].view(np.float16)[0])
        k = 0
        for half in range(2):
            q = qs[32 * half : 32 * half + 32]
            for shift in (0, 2, 4, 6):
                for part in (q[:16], q[16:]):
                    sc = scales[k]
                    k += 1
                    out += [d * (sc & 0xF) * ((v >> shift) & 3) - dmin * (sc >> 4) for v in part]
    return np.array(out, dtype=np.float32)


def _q3_k_reference(raw: np.ndarray) -> np.ndarray:
    """ggml's dequantize_row_q3_K (32 bytes of high bits, 64 bytes of 2-bit values, 12 bytes of 6-bit scales, f16)."""
    out = []
    for block in raw.reshape(-1, 110):
        hmask, qs, d = (
            block[:32].astype(np.int32),
            block[32:96].astype(np.int32),
            float(block[108:110].view(np.float16)[0]),
        )
        aux = block[96:108].view("<u4").astype(np.int64)
        tmp = aux[2]
        packed = [
            (aux[0] & 0x0F0F0F0F) | (((tmp >> 0) & 0x03030303) << 4),
            (aux[1] & 0x0F0F0F0F) | (((tmp >> 2) & 0x03030303) << 4),
            ((aux[0] >> 4) & 0x0F0F0F0F) | (((tmp >> 4) & 0x03030303) << 4),
            ((aux[1] >> 4) & 0x0F0F0F0F) | (((tmp >> 6) & 0x03030303) << 4),
        ]
        scales = np.array(packed, dtype="<u4").view(np.int8).astype(np.int32)
        k, m = 0, 1
        for half in range(2):
            q = qs[32 * half : 32 * half + 32]
            for shift in (0, 2, 4, 6):
                for lo in (0, 16):
                    dl = d * (scales[k] - 32)
                    k += 1
                    out += [dl * (((q[lo + i] >> shift) & 3) - (0 if hmask[lo + i] & m else 4)) for i in range(16)]
                m <<= 1
    return np.array(out, dtype=np.float32)


def _random_k_blocks(n_blocks: int, block_bytes: int, d_offsets: list[int], rng) -> np.ndarray:
    """Random K-quant blocks whose f16 scale fields hold small finite numbers."""
    raw = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
    for off in d_offsets:
        raw[:, off : off + 2] = rng.uniform(0.001, 0.05, size=(n_blocks, 1)).astype(np.float16).view(np.uint8)
    return raw


def _read_single(tmp_path: Path, array: np.ndarray, raw: Q | None) -> torch.Tensor:
    path = write_gguf(tmp_path / "t.gguf", "llama", lambda w: None, [("t.weight", array, raw)])
    (tensor,) = open_gguf(path).tensors
    return read_tensor(tensor)


# (type, max |error| relative to the block's largest value that the format allows)
QUANTIZABLE = [
    (Q.F32, 0.0),
    (Q.F16, 1e-3),
    (Q.BF16, 8e-3),
    (Q.Q8_0, 1e-2),
    (Q.Q5_0, 7e-2),
    (Q.Q5_1, 7e-2),
    (Q.Q4_0, 0.15),
    (Q.Q4_1, 0.15),
]


@pytest.mark.parametrize(("qtype", "tolerance"), QUANTIZABLE, ids=[q.name for q, _ in QUANTIZABLE])
def test_dequantize_quantized_random_tensor(tmp_path, qtype, tolerance):
    rng = np.random.default_rng(0)
    original = rng.standard_normal((8, 256)).astype(np.float32)
    stored = quantize(original, qtype)
    got = _read_single(tmp_path, stored, None if qtype in (Q.F32, Q.F16) else qtype)
    assert got.shape == (8, 256) and got.dtype == torch.float32
    assert torch.equal(got, torch.from_numpy(dequantize(stored, qtype).reshape(8, 256)))  # the numpy reference
    err = (got - torch.from_numpy(original)).abs().max().item()  # and close to what was quantized
    assert err <= tolerance * np.abs(original).max() + 1e-7


@pytest.mark.parametrize(
    ("qtype", "block_bytes", "d_offsets", "reference"),
    [
        (Q.Q2_K, 84, [80, 82], _q2_k_reference),
        (Q.Q3_K, 110, [108], _q3_k_reference),
        (Q.Q4_K, 144, [0, 2], _q4_k_reference),
        (Q.Q5_K, 176, [0, 2], _q5_k_reference),
        (Q.Q6_K, 210, [208], _q6_k_reference),
    ],
    ids=["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"],
)
def test_dequantize_k_quants_match_ggml_reference(tmp_path, qtype, block_bytes, d_offsets, reference):
    rng = np.random.default_rng(1)
    raw = _random_k_blocks(8, block_bytes, d_offsets, rng)  # 2 rows of 4 super-blocks of 256 values
    got = _read_single(tmp_path, raw.reshape(2, 4 * block_bytes), qtype)
    assert got.shape == (2, 1024)
    expected = torch.from_numpy(reference(raw)).view(2, 1024)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- synthetic Llama (permuted q/k, quantized tensors)
def _byte_level_vocab() -> tuple[list[str], list[str], list[int]]:
    """A GPT-2 byte-level vocabulary: 256 byte symbols, a few merges, and three control tokens."""
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = sorted(ByteLevel.alphabet())
    merges = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a"]
    tokens = alphabet + [m.replace(" ", "") for m in merges] + ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
    types = [1] * (len(tokens) - 3) + [3, 3, 3]
    return tokens, merges, types


def _llama_hf_and_gguf(tmp_path: Path):
    from transformers import LlamaConfig, LlamaForCausalLM

    tokens, merges, types = _byte_level_vocab()
    rope = {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    cfg = LlamaConfig(
        vocab_size=len(tokens),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=16384,
        rms_norm_eps=1e-5,
        rope_parameters=rope,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    hf = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.copy_(1.0 + 0.1 * torch.randn_like(p) if "norm" in name else 0.05 * torch.randn_like(p))
    state = {k: v.numpy().copy() for k, v in hf.state_dict().items()}
    gguf_tensors = [
        ("token_embd.weight", state["model.embed_tokens.weight"], None),
        ("output_norm.weight", state["model.norm.weight"], None),
        ("output.weight", state["lm_head.weight"].astype(np.float16), None),
        ("rope_freqs.weight", _llama3_rope_freqs(rope, 16), None),
    ]
    store = {"q_proj": Q.Q8_0, "down_proj": Q.Q4_0}  # the rest stays float32
    gguf_names = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output"}
    gguf_names.update(gate_proj="ffn_gate", up_proj="ffn_up", down_proj="ffn_down")
    for i in range(2):
        p = f"model.layers.{i}."
        gguf_tensors += [
            (f"blk.{i}.attn_norm.weight", state[p + "input_layernorm.weight"], None),
            (f"blk.{i}.ffn_norm.weight", state[p + "post_attention_layernorm.weight"], None),
        ]
        for hf_name, ours in gguf_names.items():
            key = p + ("self_attn." if hf_name.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp.")
            w = state[key + hf_name + ".weight"]
            if hf_name in store:  # the reference model gets exactly the values the GGUF can hold
                stored = quantize(w, store[hf_name])
                state[key + hf_name + ".weight"] = dequantize(stored, store[hf_name]).reshape(w.shape)
            if hf_name in ("q_proj", "k_proj"):
                n = 4 if hf_name == "q_proj" else 2
                w = llama_cpp_permute(w, n)
            raw = store.get(hf_name)
            gguf_tensors.append((f"blk.{i}.{ours}.weight", quantize(w, raw) if raw else w, raw))
    state["lm_head.weight"] = state["lm_head.weight"].astype(np.float16).astype(np.float32)
    hf.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})

    def kv(w: GGUFWriter) -> None:
        w.add_context_length(16384)
        w.add_embedding_length(64)
        w.add_block_count(2)
        w.add_feed_forward_length(128)
        w.add_head_count(4)
        w.add_head_count_kv(2)
        w.add_rope_dimension_count(16)
        w.add_rope_freq_base(500000.0)
        w.add_layer_norm_rms_eps(1e-5)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("llama-bpe")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        w.add_bos_token_id(len(tokens) - 3)
        w.add_eos_token_id(len(tokens) - 1)
        w.add_add_bos_token(True)

    path = write_gguf(tmp_path / "tiny-llama.Q8_0.gguf", "llama", kv, gguf_tensors)
    return hf, path, tokens


def _llama3_rope_freqs(rope: dict, dim: int) -> np.ndarray:
    """What llama.cpp's converter stores for Llama 3 RoPE scaling: one divisor per frequency."""
    base, factor = rope["rope_theta"], rope["factor"]
    low, high, old = rope["low_freq_factor"], rope["high_freq_factor"], rope["original_max_position_embeddings"]
    out = []
    for f in 1.0 / base ** (np.arange(0, dim, 2) / dim):
        wavelen = 2 * np.pi / f
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def test_llama_gguf_logits_match_transformers(tmp_path):
    hf, path, tokens = _llama_hf_and_gguf(tmp_path)
    out = convert_to_litgpt(path)  # the CLI's entry point dispatches .gguf files
    assert out == tmp_path / "tiny-llama.Q8_0"
    model = load_model(out)
    assert model.config.rope_scaling["type"] == "llama3" and model.config.rope_scaling["factor"] == 8.0
    assert not model.config.tie_embeddings
    idx = torch.randint(0, len(tokens), (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(idx), hf(idx).logits, rtol=1e-4, atol=1e-4)

    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    enc = tok.encode("the theme in a<|eot_id|>")
    assert enc.ids[0] == len(tokens) - 3  # add_bos_token: true puts <|begin_of_text|> first
    assert enc.ids[-1] == tokens.index("<|eot_id|>")
    assert tok.decode(enc.ids, skip_special_tokens=True) == "the theme in a"
    assert tokens.index("Ġthe") in enc.ids  # the merges apply

    from safetensors import safe_open

    half = convert_gguf(path, out_dir=tmp_path / "bf16", dtype="bf16")
    with safe_open(str(half / "lit_model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
        expected = model.transformer.h[0].attn.qkv.weight.to(torch.bfloat16)
        assert torch.equal(f.get_tensor("transformer.h.0.attn.qkv.weight"), expected)


@pytest.mark.parametrize(("arch", "yarn"), [("qwen2", False), ("qwen2", True), ("qwen3", False)])
def test_qwen_gguf_logits_match_transformers(tmp_path, arch, yarn):
    """Qwen GGUFs keep HF's q/k row order (no permutation); Qwen 2 adds q/k/v biases, Qwen 3 q/k norms."""
    import transformers

    rope = {"rope_type": "default", "rope_theta": 1000000.0}
    if yarn:  # how Qwen 2.5's long-context GGUFs say it
        rope.update(rope_type="yarn", factor=4.0, original_max_position_embeddings=64)

    tokens, merges, types = _byte_level_vocab()
    kind = "Qwen2" if arch == "qwen2" else "Qwen3"
    cfg = getattr(transformers, f"{kind}Config")(
        vocab_size=len(tokens),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
        rope_parameters=rope,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    hf = getattr(transformers, f"{kind}ForCausalLM")(cfg).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.copy_(1.0 + 0.1 * torch.randn_like(p) if "norm" in name else 0.05 * torch.randn_like(p))
    names = {
        "input_layernorm.weight": "attn_norm.weight",
        "post_attention_layernorm.weight": "ffn_norm.weight",
        "self_attn.o_proj.weight": "attn_output.weight",
        "mlp.gate_proj.weight": "ffn_gate.weight",
        "mlp.up_proj.weight": "ffn_up.weight",
        "mlp.down_proj.weight": "ffn_down.weight",
        "self_attn.q_norm.weight": "attn_q_norm.weight",
        "self_attn.k_norm.weight": "attn_k_norm.weight",
    }
    for p in "qkv":
        names.update({f"self_attn.{p}_proj.weight": f"attn_{p}.weight", f"self_attn.{p}_proj.bias": f"attn_{p}.bias"})
    gguf_tensors = [
        ("token_embd.weight", hf.model.embed_tokens.weight.detach().numpy(), None),
        ("output_norm.weight", hf.model.norm.weight.detach().numpy(), None),
    ]
    for key, value in hf.model.layers.state_dict().items():
        i, rest = key.split(".", 1)
        gguf_tensors.append((f"blk.{i}.{names[rest]}", value.numpy(), None))

    def kv(w: GGUFWriter) -> None:
        w.add_context_length(256)
        w.add_embedding_length(64)
        w.add_block_count(2)
        w.add_feed_forward_length(128)
        w.add_head_count(4)
        w.add_head_count_kv(2)
        w.add_key_length(16)
        w.add_rope_freq_base(1000000.0)
        if yarn:
            w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
            w.add_rope_scaling_factor(4.0)
            w.add_rope_scaling_orig_ctx_len(64)
        w.add_layer_norm_rms_eps(1e-6)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("qwen2")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        w.add_eos_token_id(len(tokens) - 2)

    path = write_gguf(tmp_path / f"tiny-{arch}.gguf", arch, kv, gguf_tensors)
    model = load_model(convert_gguf(path))
    assert model.config.attn_bias == (arch == "qwen2") and model.config.norm_qk == (arch == "qwen3")
    assert (model.config.rope_scaling or {}).get("type") == ("yarn" if yarn else None)
    idx = torch.randint(0, len(tokens), (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(idx), hf(idx).logits, rtol=1e-4, atol=1e-4)


def test_reader_agrees_with_gguf_package(tmp_path):
    """Our fast header parser against gguf.GGUFReader: every metadata value and every tensor's bytes."""
    from gguf import GGUFReader

    _, path, _ = _llama_hf_and_gguf(tmp_path)
    ours, ref = open_gguf(path), GGUFReader(path)
    expected = {k: f.contents() for k, f in ref.fields.items() if not k.startswith("GGUF.")}
    assert ours.metadata == expected
    assert [t.name for t in ours.tensors] == [t.name for t in ref.tensors]
    for mine, theirs in zip(ours.tensors, ref.tensors):
        assert mine.tensor_type == theirs.tensor_type and list(mine.shape) == theirs.shape.tolist()
        assert mine.data.tobytes() == np.asarray(theirs.data).tobytes(), mine.name


def test_truncated_file(tmp_path):
    _, path, _ = _llama_hf_and_gguf(tmp_path)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(UserError, match="truncated GGUF file: tensor .* runs past its end"):
        convert_gguf(cut)
    cut.write_bytes(path.read_bytes()[:200])
    with pytest.raises(UserError, match="truncated GGUF file"):
        convert_gguf(cut)


# ---------------------------------------------------------------- synthetic Gemma 3 (SentencePiece vocab, 1 + w norms)
GEMMA_TEXTS = [
    "Hello world, this is a test.",
    "The quick brown fox jumps over the lazy dog 1234567890",
    "  two leading spaces and trailing  ",
    "Ünïcödé ß and 中文 fall back to bytes",
    "line one\nline two\n\ttabbed",
]


def _sentencepiece_model(add_dummy_prefix: bool = False):
    """A real SentencePiece BPE model trained here, with Gemma's special ids and byte fallback."""
    import sentencepiece as spm

    corpus = [
        "the quick brown fox jumps over the lazy dog",
        "hello world this is a small corpus for a test tokenizer",
        "line one line two numbers 123 456 7890 and punctuation, like this.",
        "there is the theme of the thesis in these other things",
    ] * 20
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_writer=buf,
        model_type="bpe",
        vocab_size=330,
        byte_fallback=True,
        add_dummy_prefix=add_dummy_prefix,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        bos_piece="<bos>",
        eos_piece="<eos>",
        user_defined_symbols=["<start_of_turn>", "<end_of_turn>"],
        minloglevel=2,
    )
    return spm.SentencePieceProcessor(model_proto=buf.getvalue())


def _spm_vocab(sp) -> tuple[list[str], list[float], list[int]]:
    tokens, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        if sp.is_control(i):
            types.append(3)
        elif sp.is_unknown(i):
            types.append(2)
        elif sp.is_byte(i):
            types.append(6)
        elif tokens[-1] in ("<start_of_turn>", "<end_of_turn>"):
            types.append(3)  # Gemma's GGUFs mark the turn markers as control tokens
        else:
            types.append(1)
    return tokens, scores, types


def _gemma3_hf_and_gguf(tmp_path: Path, sp, add_space_prefix: bool = False):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    tokens, scores, types = _spm_vocab(sp)
    cfg = Gemma3TextConfig(
        vocab_size=len(tokens),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=6,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        query_pre_attn_scalar=16,
        sliding_window=4,
        max_position_embeddings=128,
        rms_norm_eps=1e-6,
        rope_parameters={
            "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        },
        final_logit_softcapping=None,
        attn_logit_softcapping=None,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    assert cfg.layer_types[:6] == ["sliding_attention"] * 5 + ["full_attention"]
    torch.manual_seed(0)
    hf = Gemma3ForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.copy_(0.3 * torch.randn_like(p) if "norm" in name else 0.05 * torch.randn_like(p))
        # the GGUF stores the embedding as F16: give the reference the same values
        hf.model.embed_tokens.weight.copy_(hf.model.embed_tokens.weight.half().float())
    state = {k: v.numpy().copy() for k, v in hf.state_dict().items()}
    plus_one = lambda a: (a + 1.0).astype(np.float32)  # noqa: E731 - llama.cpp folds Gemma's 1 + w into the file
    gguf_tensors = [
        ("token_embd.weight", state["model.embed_tokens.weight"].astype(np.float16), None),
        ("output_norm.weight", plus_one(state["model.norm.weight"]), None),
    ]
    names = {
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "post_attention_norm",
        "pre_feedforward_layernorm": "ffn_norm",
        "post_feedforward_layernorm": "post_ffw_norm",
        "self_attn.q_norm": "attn_q_norm",
        "self_attn.k_norm": "attn_k_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    for i in range(6):
        for hf_name, ours in names.items():
            w = state[f"model.layers.{i}.{hf_name}.weight"]
            gguf_tensors.append((f"blk.{i}.{ours}.weight", plus_one(w) if "norm" in ours else w, None))

    def kv(w: GGUFWriter) -> None:
        w.add_context_length(128)
        w.add_embedding_length(32)
        w.add_block_count(6)
        w.add_feed_forward_length(64)
        w.add_head_count(2)
        w.add_head_count_kv(1)
        w.add_key_length(16)
        w.add_value_length(16)
        w.add_rope_freq_base(1000000.0)
        w.add_layer_norm_rms_eps(1e-6)
        w.add_sliding_window(4)
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_bos_token_id(2)
        w.add_eos_token_id(1)
        w.add_unk_token_id(3)
        w.add_pad_token_id(0)
        w.add_add_bos_token(True)
        w.add_add_eos_token(False)
        w.add_add_space_prefix(add_space_prefix)
        w.add_chat_template("{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['content'] }}{% endfor %}")
        w.add_eot_token_id(tokens.index("<end_of_turn>"))

    path = write_gguf(tmp_path / "tiny-gemma3.gguf", "gemma3", kv, gguf_tensors)
    return hf, path, tokens


@pytest.fixture(scope="module")
def spm_model():
    pytest.importorskip("sentencepiece")
    return _sentencepiece_model()


def test_gemma3_gguf_logits_match_transformers(tmp_path, spm_model):
    hf, path, tokens = _gemma3_hf_and_gguf(tmp_path, spm_model)
    out = convert_gguf(path, out_dir=tmp_path / "ckpt")
    model = load_model(out)
    c = model.config
    assert (c.sliding_window_size, c.sliding_window_layers, c.rope_local_base) == (4, [0, 1, 2, 3, 4], 10000.0)
    assert c.attention_scores_scalar == 16 and c.tie_embeddings and c.norm_unit_offset
    idx = torch.randint(0, len(tokens), (2, 12), generator=torch.Generator().manual_seed(0))  # longer than the window
    with torch.no_grad():
        torch.testing.assert_close(model(idx), hf(idx).logits, rtol=1e-4, atol=1e-4)

    # bf16: the +1 comes off in float32 first, so the norms round like HF's own weights do
    half = load_model(convert_gguf(path, out_dir=tmp_path / "bf16", dtype="bf16"))
    ours = half.transformer.h[0].post_attention_norm.weight
    theirs = hf.model.layers[0].post_attention_layernorm.weight.to(torch.bfloat16)
    assert ours.dtype == torch.bfloat16 and (ours == theirs).float().mean() > 0.95


def test_gemma2_gguf_logits_match_transformers(tmp_path, spm_model):
    """Gemma 2: local/global layers alternate, softcaps come from the GGUF, no q/k norms, 1 + w norms."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    tokens, scores, types = _spm_vocab(spm_model)
    cfg = Gemma2Config(
        vocab_size=len(tokens),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        query_pre_attn_scalar=16,
        sliding_window=4,
        max_position_embeddings=128,
        rms_norm_eps=1e-6,
        attn_logit_softcapping=2.0,  # small caps, so that they bite on random weights
        final_logit_softcapping=3.0,
    )
    assert cfg.layer_types == ["sliding_attention", "full_attention"] * 2
    torch.manual_seed(0)
    hf = Gemma2ForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.copy_(0.3 * torch.randn_like(p) if "norm" in name else 0.2 * torch.randn_like(p))
    names = {
        "input_layernorm.weight": "attn_norm.weight",
        "post_attention_layernorm.weight": "post_attention_norm.weight",
        "pre_feedforward_layernorm.weight": "ffn_norm.weight",
        "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
        "self_attn.q_proj.weight": "attn_q.weight",
        "self_attn.k_proj.weight": "attn_k.weight",
        "self_attn.v_proj.weight": "attn_v.weight",
        "self_attn.o_proj.weight": "attn_output.weight",
        "mlp.gate_proj.weight": "ffn_gate.weight",
        "mlp.up_proj.weight": "ffn_up.weight",
        "mlp.down_proj.weight": "ffn_down.weight",
    }
    gguf_tensors = [
        ("token_embd.weight", hf.model.embed_tokens.weight.detach().numpy(), None),
        ("output_norm.weight", hf.model.norm.weight.detach().numpy() + 1.0, None),
    ]
    for key, value in hf.model.layers.state_dict().items():
        i, rest = key.split(".", 1)
        gguf_tensors.append((f"blk.{i}.{names[rest]}", value.numpy() + (1.0 if "norm" in rest else 0.0), None))

    def kv(w: GGUFWriter) -> None:
        w.add_context_length(128)
        w.add_embedding_length(32)
        w.add_block_count(4)
        w.add_feed_forward_length(64)
        w.add_head_count(2)
        w.add_head_count_kv(1)
        w.add_key_length(16)
        w.add_layer_norm_rms_eps(1e-6)
        w.add_sliding_window(4)
        w.add_attn_logit_softcapping(2.0)
        w.add_final_logit_softcapping(3.0)
        w.add_tokenizer_model("llama")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_add_space_prefix(False)

    path = write_gguf(tmp_path / "tiny-gemma2.gguf", "gemma2", kv, gguf_tensors)
    model = load_model(convert_gguf(path))
    c = model.config
    assert (c.sliding_window_layers, c.attention_logit_softcapping, c.final_logit_softcapping) == ([0, 2], 2.0, 3.0)
    assert not c.norm_qk and c.rope_local_base is None
    idx = torch.randint(0, len(tokens), (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = hf(idx).logits
        assert logits.abs().max() > 2.0  # the final cap is in play
        torch.testing.assert_close(model(idx), logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("space_prefix", [False, True], ids=["gemma-no-prefix", "llama-space-prefix"])
def test_sentencepiece_vocab_tokenizes_like_sentencepiece(tmp_path, spm_model, space_prefix):
    sp = _sentencepiece_model(add_dummy_prefix=True) if space_prefix else spm_model
    _, path, tokens = _gemma3_hf_and_gguf(tmp_path, sp, add_space_prefix=space_prefix)
    out = convert_gguf(path, out_dir=tmp_path / "ckpt")
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    for text in GEMMA_TEXTS:
        ids = tok.encode(text).ids
        assert ids[0] == 2, "add_bos_token: true"
        assert ids[1:] == sp.encode(text), text
        assert tok.decode(ids, skip_special_tokens=True) == text
    turn = tok.encode("<start_of_turn>hi<end_of_turn>").ids
    assert turn[1] == tokens.index("<start_of_turn>") and turn[-1] == tokens.index("<end_of_turn>")
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert (config["bos_token"], config["eos_token"], config["pad_token"]) == ("<bos>", "<eos>", "<pad>")
    assert config["add_bos_token"] is True and "<start_of_turn>" in config["chat_template"]
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation == {"bos_token_id": 2, "eos_token_id": [1, tokens.index("<end_of_turn>")], "pad_token_id": 0}

    from litgpt_lite.tokenizer import Tokenizer as LitTokenizer

    lit = LitTokenizer(out)  # our own tokenizer reads the files: BOS added, both ids stop generation
    assert lit.encode("hi")[0] == 2 and lit.stop_ids == {1, tokens.index("<end_of_turn>")}


# ---------------------------------------------------------------- the GGUF weight map, run backwards
@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_gguf_weight_map_runs_back_to_the_files_tensors(tmp_path, arch, request):
    """The table the importer reads, run ours -> GGUF by the same engine (q/k rows permuted again, the 1 put back
    into Gemma's norms, qkv split), gives back the file's own tensors: what a GGUF export starts from."""
    from safetensors.torch import load_file

    from litgpt_lite.config import Config
    from litgpt_lite.convert.engine import convert_tensors

    if arch == "llama":
        _, path, _ = _llama_hf_and_gguf(tmp_path)
    else:
        _, path, _ = _gemma3_hf_and_gguf(tmp_path, request.getfixturevalue("spm_model"))
    out = convert_gguf(path, out_dir=tmp_path / "ckpt")
    config = Config.from_file(out / "model_config.yaml")
    ours = load_file(str(out / "lit_model.safetensors"))
    back = dict(convert_tensors(arch, config, ours.items(), to="gguf"))
    in_file = {t.name: read_tensor(t) for t in open_gguf(path).tensors if t.name != "rope_freqs.weight"}
    assert sorted(back) == sorted(in_file)
    for name, tensor in in_file.items():
        if arch == "llama":  # a pure reordering: exact
            assert torch.equal(back[name], tensor), name
        else:  # (1 + w) - 1 + 1 in float32 may move the last bit
            torch.testing.assert_close(back[name], tensor, rtol=0, atol=2e-7, msg=name)


# ---------------------------------------------------------------- the real SmolLM2-135M-Instruct Q4_1 file
@pytest.fixture(scope="module")
def smollm2_gguf_ckpt(smollm2_gguf, tmp_path_factory) -> Path:
    return convert_gguf(smollm2_gguf, out_dir=tmp_path_factory.mktemp("gguf") / "smollm2")


def test_smollm2_weights_equal_reference(smollm2_gguf_ckpt, smollm2_lit):
    from safetensors import safe_open

    with (
        safe_open(str(smollm2_gguf_ckpt / "lit_model.safetensors"), "pt") as ours,
        safe_open(str(smollm2_lit / "lit_model.safetensors"), "pt") as ref,
    ):
        assert set(ours.keys()) == set(ref.keys())
        for name in ref.keys():  # both were dequantized from the same Q4_1 file
            a, b = ours.get_tensor(name), ref.get_tensor(name)
            assert torch.equal(a, b) or (a - b).abs().max().item() <= 1e-6, name
    ours_cfg, ref_cfg = (load_model_config(d) for d in (smollm2_gguf_ckpt, smollm2_lit))
    for field in ("n_layer", "n_embd", "n_head", "n_query_groups", "intermediate_size", "rope_base", "norm_eps"):
        assert getattr(ours_cfg, field) == getattr(ref_cfg, field), field
    assert ours_cfg.tie_embeddings and ours_cfg.block_size == 8192 and ours_cfg.padded_vocab_size == 49152


def load_model_config(checkpoint_dir: Path):
    from litgpt_lite.checkpoint import load_config

    return load_config(checkpoint_dir)


SMOLLM2_TEXTS = [
    "Hello, world! How are you today?",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n",
    "Numbers 1234567 and 3.14159, dates 2024-01-31.",
    "def f(x):\n    return x ** 2  # squared\n\n\n",
    "Ünïcödé, emoji 🤗, 中文, and  double  spaces\t\ttabs",
    "<|endoftext|>tail",
]


def test_smollm2_tokenizer_equals_reference(smollm2_gguf_ckpt, smollm2_hf):
    from tokenizers import Tokenizer

    ours = Tokenizer.from_file(str(smollm2_gguf_ckpt / "tokenizer.json"))
    ref = Tokenizer.from_file(str(smollm2_hf / "tokenizer.json"))
    for text in SMOLLM2_TEXTS:
        assert ours.encode(text).ids == ref.encode(text).ids, text
    assert ours.encode("<|im_start|>").ids == [1]
    for name in ("tokenizer_config.json", "generation_config.json"):
        ours_cfg = json.loads((smollm2_gguf_ckpt / name).read_text())
        ref_cfg = json.loads((smollm2_hf / name).read_text())
        assert ours_cfg == ref_cfg, name

    from litgpt_lite.tokenizer import Tokenizer as LitTokenizer

    tok = LitTokenizer(smollm2_gguf_ckpt)
    assert (tok.bos_id, tok.eos_id, tok.add_bos) == (1, 2, False)  # the GGUF says: no BOS, <|im_end|> ends a turn


@pytest.fixture
def one_thread():
    """One intra-op thread: on a shared 2-core machine, two threads per process make decoding several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_smollm2_greedy_answer_equals_transformers(smollm2_gguf_ckpt, smollm2_hf, one_thread):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from litgpt_lite.generate import greedy_tokens
    from litgpt_lite.tokenizer import Tokenizer

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ours_tok = AutoTokenizer.from_pretrained(smollm2_gguf_ckpt)  # transformers reads our tokenizer files as they are
    ref_tok = AutoTokenizer.from_pretrained(smollm2_hf)
    prompt = ours_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt == ref_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = ours_tok(prompt, return_tensors="pt").input_ids
    assert ids.tolist() == ref_tok(prompt, return_tensors="pt").input_ids.tolist()

    with torch.no_grad():
        ours = greedy_tokens(load_model(smollm2_gguf_ckpt), Tokenizer(smollm2_gguf_ckpt), ids[0].tolist(), 16)
    hf = AutoModelForCausalLM.from_pretrained(smollm2_hf, dtype=torch.float32).eval()
    hf.generation_config.eos_token_id = None  # 16 tokens on both sides, past <|im_end|>
    ref = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False)
    assert ours == ref[0, ids.shape[1] :].tolist()
    assert ours_tok.decode(ours, skip_special_tokens=True).startswith("The capital of France is Paris.")


# ---------------------------------------------------------------- bad input: one-line UserErrors
def test_not_a_gguf_file(tmp_path):
    bogus = tmp_path / "model.gguf"
    bogus.write_text("this is not a GGUF file")
    with pytest.raises(UserError, match="is not a GGUF file"):
        convert_gguf(bogus)
    with pytest.raises(UserError, match="does not exist"):
        convert_gguf(tmp_path / "missing.gguf")
    with pytest.raises(UserError, match="Unknown dtype 'int3'"):
        convert_gguf(bogus, dtype="int3")


def test_cli_prints_one_line_error(tmp_path, capsys):
    from litgpt_lite.__main__ import main

    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(b"\x00" * 64)
    assert main(["convert_to_litgpt", str(bogus), "--out_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "is not a GGUF file" in err


def _minimal_kv():
    def kv(w: GGUFWriter) -> None:
        w.add_block_count(1)
        w.add_context_length(64)
        w.add_embedding_length(32)
        w.add_feed_forward_length(64)
        w.add_head_count(2)
        w.add_layer_norm_rms_eps(1e-6)

    return kv


def test_unsupported_architecture(tmp_path):
    path = write_gguf(
        tmp_path / "bert.gguf", "bert", _minimal_kv(), [("token_embd.weight", np.ones((4, 32), np.float32), None)]
    )
    with pytest.raises(UserError, match="GGUF architecture 'bert' is not supported .supported: llama, gemma3"):
        convert_gguf(path)
    assert not (tmp_path / "bert").exists()


def test_unsupported_tensor_type_fails_before_writing(tmp_path):
    raw = np.zeros((4, 18), dtype=np.uint8)  # one IQ4_NL block (32 values) per row
    path = write_gguf(tmp_path / "iq.gguf", "llama", _minimal_kv(), [("token_embd.weight", raw, Q.IQ4_NL)])
    with pytest.raises(UserError, match="IQ4_NL"):
        convert_gguf(path)
    assert not (tmp_path / "iq").exists()


def test_out_dir_defaults_and_foreign_directories_are_kept(tmp_path, spm_model):
    _, path, _ = _gemma3_hf_and_gguf(tmp_path, spm_model)
    keep = tmp_path / "precious"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not a checkpoint directory"):
        convert_gguf(path, out_dir=keep)
    assert (keep / "notes.txt").read_text() == "mine"
    blob = tmp_path / "sha256-0123abcd"  # how Ollama stores a model: no .gguf suffix
    blob.write_bytes(path.read_bytes())
    assert convert_gguf(blob) == tmp_path / "sha256-0123abcd-litgpt"
    assert convert_gguf(path) == tmp_path / "tiny-gemma3"
    assert convert_gguf(path) == tmp_path / "tiny-gemma3"  # converting again replaces our own checkpoint


def test_incomplete_or_foreign_tensors_fail_before_dequantizing(tmp_path):
    embd = ("token_embd.weight", np.ones((8, 32), np.float32), None)
    incomplete = write_gguf(tmp_path / "incomplete.gguf", "llama", _minimal_kv(), [embd])
    with pytest.raises(UserError, match="lacks .* weight"):
        convert_gguf(incomplete)
    router = ("blk.0.ffn_gate_inp.weight", np.ones((4, 32), np.float32), None)  # a mixture-of-experts router
    foreign = write_gguf(tmp_path / "foreign.gguf", "llama", _minimal_kv(), [embd, router])
    with pytest.raises(UserError, match="blk.0.ffn_gate_inp.weight has no counterpart"):
        convert_gguf(foreign)
    assert not (tmp_path / "incomplete").exists() and not (tmp_path / "foreign").exists()


def test_tokenizer_bos_defaults_and_unsupported_vocabularies():
    from tokenizers import Tokenizer

    from litgpt_lite.convert.gguf_tokenizer import tokenizer_files

    tokens, merges, types = _byte_level_vocab()
    meta = {
        "general.architecture": "llama",
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.bos_token_id": len(tokens) - 3,
    }

    def first_id(extra: dict) -> int:
        files = tokenizer_files({**meta, **extra})
        return Tokenizer.from_str(files["tokenizer.json"]).encode("the").ids[0]

    bos = len(tokens) - 3
    assert first_id({"tokenizer.ggml.pre": "llama-bpe"}) == bos  # llama.cpp adds BOS for Llama 3 by default
    assert first_id({"tokenizer.ggml.pre": "qwen2"}) != bos  # and not for other byte-level vocabularies
    assert first_id({"tokenizer.ggml.pre": "qwen2", "tokenizer.ggml.add_bos_token": True}) == bos
    with pytest.raises(UserError, match="pre-tokenizer 'mystery' is not supported"):
        tokenizer_files({**meta, "tokenizer.ggml.pre": "mystery"})
    with pytest.raises(UserError, match="says to add a eos token but names none"):
        tokenizer_files({**meta, "tokenizer.ggml.add_eos_token": True})
    with pytest.raises(UserError, match="tokenizer model 'rwkv' is not supported"):
        tokenizer_files({**meta, "tokenizer.ggml.model": "rwkv"})
    with pytest.raises(UserError, match="has no tokenizer"):
        tokenizer_files({"general.architecture": "llama"})
