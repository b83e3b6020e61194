"""GGUF export (`convert_from_litgpt --format gguf`): f32 exports read back bit-exactly by our importer for tiny
random-init Llama, Qwen 2 and Gemma 3 checkpoints and the real SmolLM2-135M-Instruct; f16 / bf16 / q8_0 within their
formats' error; clear one-line refusals; and, where llama-cpp-python is installed, a real llama.cpp tokenizing and
generating exactly as we do."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from test_gguf import GEMMA_TEXTS, SMOLLM2_TEXTS, _byte_level_vocab, _spm_vocab  # noqa: E402

from litgpt_lite.checkpoint import CONFIG, WEIGHTS, load_config, save_state_dict  # noqa: E402
from litgpt_lite.config import Config  # noqa: E402
from litgpt_lite.convert import convert_from_litgpt, convert_to_litgpt  # noqa: E402
from litgpt_lite.convert.gguf import convert_gguf, open_gguf  # noqa: E402
from litgpt_lite.convert.gguf_tokenizer import tokenizer_files  # noqa: E402
from litgpt_lite.errors import UserError  # noqa: E402
from litgpt_lite.model import GPT  # noqa: E402
from litgpt_lite.tokenizer import Tokenizer  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- tiny random-init checkpoints
def _byte_level_meta(pre: str) -> dict:
    tokens, merges, types = _byte_level_vocab()
    return {
        "general.architecture": "llama",
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.bos_token_id": len(tokens) - 3,
        "tokenizer.ggml.eos_token_id": len(tokens) - 1,
        "tokenizer.ggml.add_bos_token": pre == "llama-bpe",
        "tokenizer.chat_template": "{% for m in messages %}<|begin_of_text|>{{ m['content'] }}{% endfor %}",
    }


def _spm_meta(sp) -> dict:
    tokens, scores, types = _spm_vocab(sp)
    return {
        "general.architecture": "gemma3",
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.bos_token_id": 2,
        "tokenizer.ggml.eos_token_id": 1,
        "tokenizer.ggml.unknown_token_id": 3,
        "tokenizer.ggml.padding_token_id": 0,
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_space_prefix": False,
        "tokenizer.ggml.eot_token_id": tokens.index("<end_of_turn>"),
        "tokenizer.chat_template": "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m.content }}{% endfor %}",
    }


def _tiny_config(arch: str, n_vocab: int) -> Config:
    common = dict(
        vocab_size=n_vocab,
        padded_vocab_size=n_vocab,
        n_embd=64,
        n_head=4,
        n_query_groups=2,
        head_size=16,
        intermediate_size=128,
        norm_class="RMSNorm",
        mlp_class="LLaMAMLP",
    )
    if arch == "llama":  # untied, Llama 3 RoPE scaling (written as the rope_freqs tensor)
        scaling = {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}
        scaling["original_max_position_embeddings"] = 8192
        return Config(
            name="tiny-llama", architecture="LlamaForCausalLM", block_size=16384, n_layer=2, rope_base=500000.0,
            norm_eps=1e-5, rope_scaling=scaling, **common,
        )  # fmt: skip
    if arch == "qwen2":  # q/k/v biases, tied, YaRN
        return Config(
            name="tiny-qwen2", architecture="Qwen2ForCausalLM", block_size=256, n_layer=2, rope_base=1000000.0,
            norm_eps=1e-6, attn_bias=True, tie_embeddings=True,
            rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}, **common,
        )  # fmt: skip
    common.update(n_embd=32, n_head=2, n_query_groups=1, intermediate_size=64, mlp_class="GemmaMLP")
    return Config(
        name="tiny-gemma3", architecture="Gemma3ForCausalLM", block_size=128, n_layer=6, rope_base=1000000.0,
        rope_local_base=10000.0, norm_eps=1e-6, gelu_approximate="tanh", norm_unit_offset=True, scale_embeddings=True,
        post_attention_norm=True, post_mlp_norm=True, norm_qk=True, attention_scores_scalar=16,
        sliding_window_size=4, sliding_window_layers=[0, 1, 2, 3, 4], tie_embeddings=True, **common,
    )  # fmt: skip


def _tiny_checkpoint(path: Path, arch: str, meta: dict) -> Path:
    """A checkpoint directory of a random-init model, with tokenizer files built from GGUF-style vocab `meta`.

    Gemma's norm weights are rounded to bf16, as real Gemma checkpoints ship them: llama.cpp stores Gemma's norms as
    (1 + w), and only a w with no bits below 2^-23 survives (1 + w) - 1 exactly in float32.
    """
    config = _tiny_config(arch, len(meta["tokenizer.ggml.tokens"]))
    torch.manual_seed(0)
    model = GPT(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(0.3 * torch.randn_like(p) if "norm" in name else 0.05 * torch.randn_like(p))
            if arch == "gemma3" and p.ndim == 1:  # every vector of Gemma is a norm weight
                p.copy_(p.to(torch.bfloat16).float())
    state = model.state_dict()
    if config.tie_embeddings:
        state.pop("lm_head.weight")
    path.mkdir(parents=True)
    save_state_dict(state, path / WEIGHTS)
    config.save(path / CONFIG)
    for name, text in tokenizer_files({**meta, f"{arch}.context_length": config.block_size}).items():
        (path / name).write_text(text)
    return path


@pytest.fixture(scope="module")
def spm_model():
    pytest.importorskip("sentencepiece")
    from test_gguf import _sentencepiece_model

    return _sentencepiece_model()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, spm_model):
    """Build (and cache per module) the tiny checkpoint of one architecture."""
    made: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in made:
            meta = {"llama": _byte_level_meta("llama-bpe"), "qwen2": _byte_level_meta("qwen2")}.get(arch)
            meta = meta or _spm_meta(spm_model)
            made[arch] = _tiny_checkpoint(tmp_path_factory.mktemp(arch) / "ckpt", arch, meta)
        return made[arch]

    return get


def _tensors(checkpoint_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(checkpoint_dir / WEIGHTS))


def _same_config(a: Config, b: Config) -> None:
    da, db = a.to_dict(), b.to_dict()
    for d in (da, db):
        d.pop("name")
    assert da == db


# ---------------------------------------------------------------- f32: bit-exact through our importer
@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_f32_export_reads_back_bit_exact(tmp_path, tiny, arch):
    ckpt = tiny(arch)
    out = convert_from_litgpt(ckpt, tmp_path / f"{arch}.gguf", dtype="f32", format="gguf")
    meta = open_gguf(out).metadata
    assert meta["general.architecture"] == arch and meta["general.file_type"] == 0
    back = convert_to_litgpt(out, out_dir=tmp_path / "back")
    ours, theirs = _tensors(ckpt), _tensors(back)
    assert sorted(ours) == sorted(theirs)
    for name, tensor in ours.items():
        assert theirs[name].dtype == torch.float32 and torch.equal(theirs[name], tensor), name
    _same_config(load_config(ckpt), load_config(back))
    texts = GEMMA_TEXTS + ["the theme in a<|eot_id|>", "<start_of_turn>hi<end_of_turn>"]
    tok, tok_back = Tokenizer(ckpt), Tokenizer(back)
    for text in texts:
        assert tok_back.encode(text) == tok.encode(text), text
    assert (tok_back.bos_id, tok_back.eos_id, tok_back.stop_ids) == (tok.bos_id, tok.eos_id, tok.stop_ids)
    assert tok_back.chat_template == tok.chat_template


def test_export_writes_the_vocabulary_llama_cpp_reads(tmp_path, tiny):
    """gpt2 vocab: the tokens, types and merges the tokenizer files came from; the pre-tokenizer by llama.cpp's name;
    llama (SentencePiece) vocab: scores that rank merges as the tokenizer.json does, byte and control token types."""
    meta = open_gguf(convert_from_litgpt(tiny("qwen2"), tmp_path / "q.gguf", format="gguf")).metadata
    source = _byte_level_meta("qwen2")
    for key in ("tokens", "token_type", "merges", "pre", "model", "bos_token_id", "eos_token_id", "add_bos_token"):
        assert meta[f"tokenizer.ggml.{key}"] == source[f"tokenizer.ggml.{key}"], key
    assert meta["qwen2.vocab_size"] == len(source["tokenizer.ggml.tokens"])
    meta = open_gguf(convert_from_litgpt(tiny("gemma3"), tmp_path / "g.gguf", format="gguf")).metadata
    source = _spm_meta_types(meta)
    assert source["tokenizer.ggml.token_type"] == meta["tokenizer.ggml.token_type"]
    assert meta["tokenizer.ggml.add_space_prefix"] is False and meta["tokenizer.ggml.eot_token_id"] > 3
    assert (meta["tokenizer.ggml.unknown_token_id"], meta["tokenizer.ggml.padding_token_id"]) == (3, 0)


def _spm_meta_types(meta: dict) -> dict:
    """The token types a GGUF of the test SentencePiece model carries (our importer writes the turn markers as
    special tokens, so they come back as control tokens)."""
    tokens = meta["tokenizer.ggml.tokens"]
    types = []
    for i, t in enumerate(tokens):
        if i == 3:
            types.append(2)  # <unk>
        elif t.startswith("<0x") and len(t) == 6:
            types.append(6)
        elif i < 3 or t in ("<start_of_turn>", "<end_of_turn>"):
            types.append(3)
        else:
            types.append(1)
    return {"tokenizer.ggml.token_type": types}


def test_sentencepiece_model_checkpoint_exports_its_pieces_and_scores(tmp_path, tiny, spm_model):
    """A checkpoint with tokenizer.model and no tokenizer.json (as Gemma and Llama 2 ship): the GGUF gets the
    SentencePiece pieces, scores and types, and the turn markers of added_tokens_decoder as control tokens."""
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny("gemma3"), ckpt)
    (ckpt / "tokenizer.json").unlink()
    (ckpt / "tokenizer.model").write_bytes(spm_model.serialized_model_proto())
    turns = {
        str(spm_model.piece_to_id(t)): {"content": t, "special": True} for t in ("<start_of_turn>", "<end_of_turn>")
    }
    config = dict(bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>", add_bos_token=True)
    (ckpt / "tokenizer_config.json").write_text(json.dumps({**config, "added_tokens_decoder": turns}))
    meta = open_gguf(convert_from_litgpt(ckpt, tmp_path / "g.gguf", format="gguf")).metadata
    n = spm_model.get_piece_size()
    assert meta["tokenizer.ggml.tokens"][:n] == [spm_model.id_to_piece(i) for i in range(n)]
    scores = [spm_model.get_score(i) for i in range(n)]
    turn_ids = {int(i) for i in turns}
    assert all(meta["tokenizer.ggml.scores"][i] == np.float32(s) for i, s in enumerate(scores) if i not in turn_ids)
    assert [meta["tokenizer.ggml.token_type"][i] for i in sorted(turn_ids)] == [3, 3]
    assert meta["tokenizer.ggml.add_bos_token"] is True and meta["tokenizer.ggml.bos_token_id"] == 2
    back = convert_to_litgpt(tmp_path / "g.gguf", out_dir=tmp_path / "back")
    tok = Tokenizer(back)
    for text in GEMMA_TEXTS:  # what llama.cpp will make of the file, read back by our importer
        assert tok.encode(text) == [2, *spm_model.encode(text)], text
    assert tok.encode("<start_of_turn>hi")[:2] == [2, spm_model.piece_to_id("<start_of_turn>")]


# ---------------------------------------------------------------- f16 / bf16 / q8_0
@pytest.mark.parametrize(
    ("dtype", "ggml", "tolerance"), [("f16", "F16", 1e-3), ("bf16", "BF16", 8e-3), ("q8_0", "Q8_0", 1e-2)]
)
def test_reduced_precision_exports(tmp_path, tiny, dtype, ggml, tolerance):
    ckpt = tiny("llama")
    out = convert_from_litgpt(ckpt, tmp_path / f"m.{dtype}.gguf", dtype=dtype, format="gguf")
    f = open_gguf(out)
    expected_type = {"F16": 1, "BF16": 32, "Q8_0": 7}[ggml]
    assert f.metadata["general.file_type"] == expected_type
    for t in f.tensors:  # matrices in the chosen type; norms and RoPE factors stay f32, as llama.cpp writes them
        assert t.tensor_type.name == (ggml if len(t.shape) == 2 else "F32"), t.name
    back = _tensors(convert_to_litgpt(out, out_dir=tmp_path / "back"))
    for name, tensor in _tensors(ckpt).items():
        err = (back[name] - tensor).abs().max().item()
        if tensor.ndim == 1:
            assert err == 0.0, name
        else:  # relative to the tensor's largest value (q8_0: to each 32-value block's, which is smaller)
            assert err <= tolerance * tensor.abs().max().item(), (name, err)
            assert err > 0.0, name  # it really was stored at lower precision


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_bf16_checkpoint_exports_as_bf16_by_default_and_reads_back_exactly(tmp_path, tiny, arch):
    ckpt = tmp_path / "bf16"
    convert_to_litgpt(convert_from_litgpt(tiny(arch), tmp_path / "f32.gguf", format="gguf"), dtype="bf16", out_dir=ckpt)
    out = convert_from_litgpt(ckpt, tmp_path / "m.gguf", format="gguf")  # no --dtype: the checkpoint's own
    assert open_gguf(out).metadata["general.file_type"] == 32
    back = _tensors(convert_to_litgpt(out, dtype="bf16", out_dir=tmp_path / "back"))
    for name, tensor in _tensors(ckpt).items():
        assert tensor.dtype == torch.bfloat16 and torch.equal(back[name], tensor), name


def test_q8_0_keeps_rows_that_are_not_whole_blocks_in_f16():
    from litgpt_lite.convert.gguf_export import encode_tensor

    rows = torch.randn(5, 48)
    assert encode_tensor(rows, "F16").dtype == np.float16
    packed = encode_tensor(torch.randn(3, 64), "Q8_0")
    assert packed.dtype == np.uint8 and packed.shape == (3, 2 * 34)
    from litgpt_lite.convert.gguf_export import _tensor_type

    assert _tensor_type((5, 48), "Q8_0") == "F16" and _tensor_type((5, 64), "Q8_0") == "Q8_0"
    assert _tensor_type((64,), "Q8_0") == "F32"


# ---------------------------------------------------------------- refusals: one line, exit code 2
def _cli(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "litgpt_lite", "convert_from_litgpt", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)


def test_cli_refuses_unknown_dtype_and_format(tmp_path, tiny):
    ckpt = tiny("llama")
    run = _cli(str(ckpt), str(tmp_path / "m.gguf"), "--format", "gguf", "--dtype", "q4_k")
    assert run.returncode == 2, run.stderr
    assert "Unknown GGUF dtype 'q4_k'. Choose one of: f32, f16, bf16, q8_0" in run.stderr
    assert "Traceback" not in run.stderr and not (tmp_path / "m.gguf").exists()
    run = _cli(str(ckpt), str(tmp_path / "m.gguf"), "--format", "onnx")
    assert run.returncode == 2 and "Unknown --format 'onnx': choose hf or gguf" in run.stderr


def test_cli_refuses_an_architecture_without_a_gguf_export(tmp_path):
    config = Config(name="tiny-neox", architecture="GPTNeoXForCausalLM", n_layer=1, n_embd=32, n_head=4,
                    vocab_size=64, padded_vocab_size=64, block_size=32)  # fmt: skip
    ckpt = tmp_path / "neox"
    ckpt.mkdir()
    save_state_dict(GPT(config).state_dict(), ckpt / WEIGHTS)
    config.save(ckpt / CONFIG)
    run = _cli(str(ckpt), str(tmp_path / "m.gguf"), "--format", "gguf")
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "GGUF export does not support GPTNeoXForCausalLM (supported: Gemma3ForCausalLM" in run.stderr


def test_a_config_field_the_gguf_cannot_carry_is_refused_by_name(tmp_path, tiny):
    ckpt = tmp_path / "ckpt"
    import shutil

    shutil.copytree(tiny("llama"), ckpt)
    config = load_config(ckpt)
    config.final_logit_softcapping = 30.0  # not something llama.cpp's llama architecture does
    config.save(ckpt / CONFIG)
    with pytest.raises(UserError, match=r"final_logit_softcapping=30.0 cannot be expressed in a GGUF 'llama' file"):
        convert_from_litgpt(ckpt, tmp_path / "m.gguf", format="gguf")
    assert not (tmp_path / "m.gguf").exists()


# ---------------------------------------------------------------- the real SmolLM2-135M-Instruct
@pytest.fixture(scope="module")
def smollm2_ckpt(smollm2_gguf, tmp_path_factory) -> Path:
    return convert_gguf(smollm2_gguf, out_dir=tmp_path_factory.mktemp("smol") / "ckpt")


@pytest.fixture(scope="module")
def smollm2_f32_gguf(smollm2_ckpt, tmp_path_factory) -> Path:
    return convert_from_litgpt(smollm2_ckpt, tmp_path_factory.mktemp("smol_gguf") / "smollm2.f32.gguf", format="gguf")


def test_smollm2_f32_export_round_trip(smollm2_ckpt, smollm2_f32_gguf, smollm2_gguf, tmp_path):
    back = convert_to_litgpt(smollm2_f32_gguf, out_dir=tmp_path / "back")
    ours, theirs = _tensors(smollm2_ckpt), _tensors(back)
    assert sorted(ours) == sorted(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    _same_config(load_config(smollm2_ckpt), load_config(back))
    exported, original = open_gguf(smollm2_f32_gguf).metadata, open_gguf(smollm2_gguf).metadata
    same = [k for k in original if k.startswith(("llama.", "tokenizer.")) and k != "tokenizer.ggml.add_space_prefix"]
    assert len(same) > 20
    for key in same:  # what llama.cpp's own converter wrote, we write too
        assert exported[key] == original[key], key


# ---------------------------------------------------------------- a real llama.cpp (llama-cpp-python)
def _llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        pytest.skip("llama_cpp is not importable: `pip install -e .[llamacpp]` builds llama.cpp (many minutes)")
    return llama_cpp


@pytest.mark.slow
def test_llama_cpp_tokenizes_like_us(smollm2_ckpt, smollm2_f32_gguf):
    llama = _llama_cpp().Llama(model_path=str(smollm2_f32_gguf), vocab_only=True, verbose=False)
    ours = Tokenizer(smollm2_ckpt)
    texts = SMOLLM2_TEXTS + ["   leading and trailing   ", "a\n\n\n\nb\r\n", "<|im_start|><|im_end|><|endoftext|>"]
    for text in texts:
        assert llama.tokenize(text.encode(), add_bos=False, special=True) == ours.encode(text), text


PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,"]


@pytest.mark.slow
def test_llama_cpp_greedy_tokens_equal_ours(smollm2_ckpt, smollm2_f32_gguf):
    from litgpt_lite.generate import greedy_tokens
    from litgpt_lite.loading import load_model

    llama_cpp = _llama_cpp()
    llama = llama_cpp.Llama(
        model_path=str(smollm2_f32_gguf), n_ctx=256, n_threads=2, type_k=0, type_v=0, seed=0, verbose=False
    )  # type 0 = GGML f32: the KV cache in f32 too (its default is f16)
    model = load_model(smollm2_ckpt).eval()
    tokenizer = Tokenizer(smollm2_ckpt)
    for prompt in PROMPTS:
        ids = tokenizer.encode(prompt)
        with torch.no_grad():
            ours = greedy_tokens(model, tokenizer, ids, max_new_tokens=32)
        llama.reset()
        theirs = []
        for token in llama.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
            theirs.append(token)
            if len(theirs) == 32:
                break
        assert theirs == ours, prompt


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_llama_cpp_runs_tiny_exports_like_us(tmp_path, tiny, arch):
    """llama.cpp loads each architecture's f32 export (Llama 3 rope_freqs, Qwen 2 biases, Gemma 3's 1 + w norms and
    sliding layers), gives our logits, and tokenizes as our Tokenizer does."""
    from litgpt_lite.loading import load_model

    llama_cpp = _llama_cpp()
    ckpt = tiny(arch)
    path = convert_from_litgpt(ckpt, tmp_path / f"{arch}.gguf", dtype="f32", format="gguf")
    llama = llama_cpp.Llama(
        model_path=str(path), n_ctx=64, n_threads=2, type_k=0, type_v=0, logits_all=True, verbose=False
    )
    ours = Tokenizer(ckpt)
    for text in ["the theme in a test", "Hello world, this is a test.", "line one\nline two"]:
        assert llama.tokenize(text.encode(), add_bos=ours.add_bos, special=True) == ours.encode(text), text
    ids = torch.randint(0, ours.vocab_size, (12,), generator=torch.Generator().manual_seed(0)).tolist()
    llama.reset()
    llama.eval(ids)
    theirs = torch.from_numpy(np.array(llama.scores[: len(ids)]))
    with torch.no_grad():
        expected = load_model(ckpt)(torch.tensor([ids]))[0]
    # ggml's CPU GELU reads a float16 table: Gemma's logits move by up to ~1e-3; SiLU models agree to ~1e-7
    tolerance = 5e-3 if arch == "gemma3" else 1e-4
    torch.testing.assert_close(theirs, expected, rtol=tolerance, atol=tolerance)
