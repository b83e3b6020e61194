"""`litgpt_lite download` against a local Hub (tests/hub_server.py): real HTTP, real huggingface_hub, no mocks."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from hub_server import HubServer  # noqa: E402

from litgpt_lite.download import download, ensure_checkpoint  # noqa: E402
from litgpt_lite.errors import UserError  # noqa: E402
from litgpt_lite.loading import load_model  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
GATED_TOKEN = "hf_the_right_token"
NEEDED = {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"}


def _tokenizer_json() -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(["hello world, the quick brown fox jumps over the lazy dog"] * 20, trainer)
    return tok.to_str()


@pytest.fixture(scope="module")
def repos(tmp_path_factory) -> Path:
    """A folder of fake Hub repos around one tiny random-init transformers Llama (2 layers)."""
    root = tmp_path_factory.mktemp("hub")
    llama = root / "tiny" / "llama"
    llama.mkdir(parents=True)
    tokenizer = _tokenizer_json()
    (llama / "tokenizer.json").write_text(tokenizer)
    (llama / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=json.loads(tokenizer)["model"]["vocab"].__len__(),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(llama)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    # files a checkpoint does not need: they must never be fetched
    torch.save(state, llama / "pytorch_model.bin")
    (llama / "original").mkdir()
    torch.save(state, llama / "original" / "consolidated.00.pth")
    (llama / "README.md").write_text("# tiny llama\n")
    (llama / ".gitattributes").write_text("*.safetensors filter=lfs\n")

    bin_only = root / "tiny" / "llama-bin"
    shutil.copytree(llama, bin_only, ignore=shutil.ignore_patterns("*.safetensors", "original"))
    sharded = root / "tiny" / "llama-sharded"
    model.save_pretrained(sharded, max_shard_size="20KB")
    shutil.copy(llama / "tokenizer.json", sharded)
    shutil.copytree(llama, root / "tiny" / "gated", ignore=shutil.ignore_patterns("*.bin", "original"))
    bert = root / "tiny" / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"architectures": ["BertForMaskedLM"], "model_type": "bert"}))
    (bert / "model.safetensors").write_bytes(b"\0" * 1024)
    return root


@pytest.fixture(scope="module")
def server(repos):
    with HubServer(repos, gated_tokens={"tiny/gated": GATED_TOKEN}) as hub:
        yield hub


@pytest.fixture
def hub(server, monkeypatch, tmp_path):
    """The running local Hub, with the environment pointing huggingface_hub at it and a clean request log."""
    for key, value in _hub_env(server, tmp_path).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    server.clear()
    return server


def _hub_env(server: HubServer, tmp_path: Path) -> dict[str, str]:
    return {
        "HF_ENDPOINT": server.url,
        "HF_HOME": str(tmp_path / "hf_home"),
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }


def _hf_logits(repo: Path, ids: torch.Tensor) -> torch.Tensor:
    model = transformers.AutoModelForCausalLM.from_pretrained(repo, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(ids).logits


# ---------------------------------------------------------------- the happy path
def test_download_converts_and_matches_transformers(hub, repos, tmp_path):
    out = download("tiny/llama", checkpoint_dir=tmp_path / "checkpoints")

    assert out == tmp_path / "checkpoints" / "tiny" / "llama"
    assert set(hub.fetched("GET")) == NEEDED  # safetensors preferred: no .bin, no README, no original/
    assert {p.name for p in out.iterdir()} == NEEDED | {"lit_model.safetensors", "model_config.yaml"}
    ids = torch.tensor([[1, 40, 7, 99, 120, 3]])
    with torch.no_grad():
        ours = load_model(out)(ids)
    torch.testing.assert_close(ours, _hf_logits(repos / "tiny" / "llama", ids), rtol=1e-5, atol=1e-5)
    assert (out / "model.safetensors").read_bytes() == (repos / "tiny" / "llama" / "model.safetensors").read_bytes()


def test_bin_only_repo_downloads_the_bin(hub, repos, tmp_path):
    out = download("tiny/llama-bin", checkpoint_dir=tmp_path)
    assert "pytorch_model.bin" in hub.fetched("GET")
    assert not any(f.startswith("original/") for f in hub.fetched("GET") + hub.fetched("HEAD"))
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        torch.testing.assert_close(load_model(out)(ids), _hf_logits(repos / "tiny" / "llama", ids))


def test_sharded_repo_follows_the_index(hub, repos, tmp_path):
    out = download("tiny/llama-sharded", checkpoint_dir=tmp_path)
    index = json.loads((repos / "tiny" / "llama-sharded" / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 1
    assert shards | {"model.safetensors.index.json"} <= set(hub.fetched("GET"))
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        torch.testing.assert_close(load_model(out)(ids), _hf_logits(repos / "tiny" / "llama", ids))


def test_no_conversion_keeps_the_hf_folder(hub, tmp_path):
    out = download("tiny/llama", checkpoint_dir=tmp_path, convert_checkpoint=False)
    assert (out / "model.safetensors").is_file()
    assert not (out / "lit_model.safetensors").exists()


def test_tokenizer_only(hub, tmp_path):
    out = download("tiny/llama", checkpoint_dir=tmp_path, tokenizer_only=True)
    assert set(hub.fetched("GET")) == {"tokenizer.json", "tokenizer_config.json"}
    assert {p.name for p in out.iterdir()} == {"tokenizer.json", "tokenizer_config.json"}


def test_second_download_fetches_nothing(hub, tmp_path):
    download("tiny/llama", checkpoint_dir=tmp_path, convert_checkpoint=False)
    hub.clear()
    download("tiny/llama", checkpoint_dir=tmp_path, convert_checkpoint=False)
    assert hub.fetched("GET") == []


# ---------------------------------------------------------------- resume
def test_resumes_a_partial_file(hub, repos, tmp_path):
    source = (repos / "tiny" / "llama" / "model.safetensors").read_bytes()
    out = tmp_path / "tiny" / "llama"
    out.mkdir(parents=True)
    half = len(source) // 2
    (out / "model.safetensors.incomplete").write_bytes(source[:half])

    download("tiny/llama", checkpoint_dir=tmp_path, convert_checkpoint=False)

    weight_gets = [r for r in hub.requests if r.method == "GET" and r.file == "model.safetensors"]
    assert [(r.range, r.status) for r in weight_gets] == [(f"bytes={half}-", 206)]
    assert (out / "model.safetensors").read_bytes() == source
    assert not (out / "model.safetensors.incomplete").exists()


def test_a_corrupt_partial_file_is_fetched_again(hub, repos, tmp_path):
    source = (repos / "tiny" / "llama" / "model.safetensors").read_bytes()
    out = tmp_path / "tiny" / "llama"
    out.mkdir(parents=True)
    (out / "model.safetensors.incomplete").write_bytes(b"x" * 100)  # not a prefix of the file: sha256 fails

    download("tiny/llama", checkpoint_dir=tmp_path, convert_checkpoint=False)

    assert (out / "model.safetensors").read_bytes() == source
    ranges = [r.range for r in hub.requests if r.method == "GET" and r.file == "model.safetensors"]
    assert ranges == ["bytes=100-", None]


def test_a_dropped_connection_is_resumed(hub, repos, tmp_path):
    source = (repos / "tiny" / "llama" / "model.safetensors").read_bytes()
    hub.cut_after["model.safetensors"] = 1000

    out = download("tiny/llama", checkpoint_dir=tmp_path, convert_checkpoint=False)

    assert (out / "model.safetensors").read_bytes() == source
    gets = [r for r in hub.requests if r.method == "GET" and r.file == "model.safetensors"]
    assert len(gets) == 2  # the cut one, then the retry (from where the client's buffer had got to)


# ---------------------------------------------------------------- errors, each one line before any weight moves
def test_gated_repo_without_token(hub, tmp_path):
    with pytest.raises(UserError, match=r"tiny/gated is gated: accept its license .* --access_token or set HF_TOKEN"):
        download("tiny/gated", checkpoint_dir=tmp_path)
    assert hub.fetched("GET") == [] and hub.fetched("HEAD") == []


def test_gated_repo_with_a_token_without_access(hub, tmp_path):
    with pytest.raises(UserError, match="Your token has no access to the gated repo tiny/gated"):
        download("tiny/gated", checkpoint_dir=tmp_path, access_token="hf_someone_else")
    assert "model.safetensors" not in hub.fetched("GET")


def test_gated_repo_with_the_token_from_the_environment(hub, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_TOKEN", GATED_TOKEN)
    out = download("tiny/gated", checkpoint_dir=tmp_path)
    assert (out / "lit_model.safetensors").is_file()
    assert {r.authorization for r in hub.requests if r.file} == {f"Bearer {GATED_TOKEN}"}


def test_gated_repo_with_access_token_argument(hub, tmp_path):
    out = download("tiny/gated", checkpoint_dir=tmp_path, access_token=GATED_TOKEN, convert_checkpoint=False)
    assert (out / "model.safetensors").is_file()


def test_missing_repo(hub, tmp_path):
    with pytest.raises(UserError, match=r"Repo tiny/nothing was not found on http://127\.0\.0\.1:\d+"):
        download("tiny/nothing", checkpoint_dir=tmp_path)
    assert not (tmp_path / "tiny" / "nothing").exists()


def test_unsupported_architecture_fails_before_the_weights(hub, tmp_path):
    with pytest.raises(UserError, match="tiny/bert: Unsupported architecture 'BertForMaskedLM'"):
        download("tiny/bert", checkpoint_dir=tmp_path)
    assert hub.fetched("GET") == ["config.json"]


def test_bad_repo_id(tmp_path):
    with pytest.raises(UserError, match="not a Hub repo id"):
        download("just-a-name", checkpoint_dir=tmp_path)


def test_unknown_model_name_fails_before_downloading(hub, tmp_path):
    with pytest.raises(UserError, match="Unknown model name"):
        download("tiny/llama", checkpoint_dir=tmp_path, model_name="no-such-model")
    assert hub.requests == []


def test_unknown_dtype_fails_before_downloading(hub, tmp_path):
    with pytest.raises(UserError, match="Unknown dtype 'int3'"):
        download("tiny/llama", checkpoint_dir=tmp_path, dtype="int3")
    assert hub.requests == []


def test_tokenizer_only_on_a_repo_without_one(hub, tmp_path):
    with pytest.raises(UserError, match="tiny/bert has no tokenizer files"):
        download("tiny/bert", checkpoint_dir=tmp_path, tokenizer_only=True)


def test_unreachable_endpoint(monkeypatch, tmp_path):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(UserError, match=f"Cannot reach http://127.0.0.1:{port}"):
        download("tiny/llama", checkpoint_dir=tmp_path)


# ---------------------------------------------------------------- ensure_checkpoint (LLM.load)
def test_ensure_checkpoint_downloads_once_then_reuses(hub, tmp_path):
    first = ensure_checkpoint("tiny/llama", checkpoint_dir=tmp_path)
    assert first == tmp_path / "tiny" / "llama" and (first / "lit_model.safetensors").is_file()
    hub.clear()
    assert ensure_checkpoint("tiny/llama", checkpoint_dir=tmp_path) == first
    assert hub.requests == []  # an already converted checkpoint needs no network
    assert ensure_checkpoint(first) == first  # a local directory is returned as is


def test_ensure_checkpoint_rejects_a_non_checkpoint(tmp_path):
    with pytest.raises(UserError, match="has no model_config.yaml"):
        ensure_checkpoint(tmp_path)
    with pytest.raises(UserError, match="neither a checkpoint directory nor a Hub repo id"):
        ensure_checkpoint("no/such/dir")


# ---------------------------------------------------------------- the CLI
def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "litgpt_lite", *args],
        cwd=REPO_ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_missing_repo_is_one_line(server, tmp_path):
    proc = _cli(["download", "tiny/nothing", "--checkpoint_dir", str(tmp_path)], _hub_env(server, tmp_path))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: Repo tiny/nothing was not found"), proc.stderr


def test_cli_list_prints_the_registry_without_torch():
    code = (
        "import sys; from litgpt_lite.__main__ import main; rc = main(['download', 'list']); "
        "assert rc == 0 and 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)[:3]"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    names = proc.stdout.split()
    assert "SmolLM2-135M-Instruct" in names and "Llama-3.2-1B" in names and "gemma-3-27b-it" in names
