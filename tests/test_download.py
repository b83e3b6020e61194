"""`litgpt_lite download` against a local Hub (tests/hub_server.py): real HTTP, real huggingface_hub, no mocks."""

import json
import os
import re
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
from litgpt_lite.safe_paths import UnsafePathError  # noqa: E402

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
    # hostile repos: the tests add the names no folder can hold through `HubServer.listed_files`
    shutil.copytree(llama, root / "tiny" / "evil", ignore=shutil.ignore_patterns("*.bin", "original"))
    for name, keep in (("evil-index", ("config.json", "tokenizer.json")), ("evil-loose", ("config.json",))):
        (root / "tiny" / name).mkdir()
        for file in keep:
            shutil.copy(llama / file, root / "tiny" / name)
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
    server.listed_files.clear()
    yield server
    server.listed_files.clear()


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


# ---------------------------------------------------------------- a hostile endpoint: names that leave the folder
def _unsafe_names(tmp_path: Path) -> dict[str, str]:
    """Names an endpoint could list, each aimed at a place outside `<tmp_path>/ckpt/tiny/<repo>`."""
    victim = tmp_path / "victim"
    return {
        "climbs": "../" * 30 + (victim / "pwned").relative_to("/").as_posix(),
        "dotdot_inside": "sub/../../x",
        "absolute": (victim / "abs").as_posix(),
        "backslash": "..\\x",
    }


def _refusal(source: str, name: object) -> str:
    return f"^{re.escape(source)} names an unsafe file path {re.escape(repr(name))} \\(it "


class _Disk:
    """What a refused download may not change: the test's tmp folder, its parent, the victim folder, the targets."""

    def __init__(self, tmp_path: Path, out_dir: Path, names: list) -> None:
        self.tmp_path, self.out_dir = tmp_path, out_dir
        (tmp_path / "victim").mkdir(exist_ok=True)
        self.targets = [Path(os.path.normpath(out_dir / n)) for n in names if isinstance(n, str)]
        self.before = self._listing()

    def _listing(self) -> tuple[set[str], set[str]]:
        ours = {p.name for p in self.tmp_path.iterdir()} - {"hf_home"}
        return ours, {p.name for p in self.tmp_path.parent.iterdir()}

    def assert_untouched(self) -> None:
        assert not (self.tmp_path / "ckpt").exists()  # no checkpoint folder, not even an empty one
        assert list((self.tmp_path / "victim").iterdir()) == []
        assert [t for t in self.targets if os.path.lexists(t)] == []
        assert self._listing() == self.before


@pytest.mark.parametrize("kind", ["climbs", "dotdot_inside", "absolute", "backslash"])
def test_a_listing_with_an_unsafe_name_is_refused_before_any_request(hub, tmp_path, kind):
    name = _unsafe_names(tmp_path)[kind]
    hub.listed_files["tiny/evil"] = {name: b"pwned"}  # a file the download does not need: still refused
    disk = _Disk(tmp_path, tmp_path / "ckpt" / "tiny" / "evil", [name])

    source = f"The file list of tiny/evil on {hub.url}"
    with pytest.raises(UnsafePathError, match=_refusal(source, name)):
        download("tiny/evil", checkpoint_dir=tmp_path / "ckpt")

    assert hub.fetched("GET") == [] and hub.fetched("HEAD") == []
    disk.assert_untouched()


def test_a_listing_with_a_non_string_name_is_one_line(hub, tmp_path):
    hub.listed_files["tiny/evil"] = {5: b"pwned"}
    with pytest.raises(UserError, match=f"^The file list of tiny/evil on {hub.url} names a non-string file$"):
        download("tiny/evil", checkpoint_dir=tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists()


@pytest.mark.parametrize("repo_id", ["../..", "org/..", "./x", "org/.", ".x/y", "org/a..b", "org/-x", "org/x."])
def test_a_repo_id_the_hub_cannot_have_is_refused_before_any_request(hub, tmp_path, repo_id):
    with pytest.raises(UserError, match="is not a Hub repo id"):
        download(repo_id, checkpoint_dir=tmp_path / "a" / "b")
    assert hub.requests == []
    assert list(tmp_path.iterdir()) == []


def test_a_loose_weight_with_a_backslash_is_refused(hub, repos, tmp_path):
    """A top-level `*.safetensors` is fetched by its listed name: `..\\model.safetensors` is not a plain name."""
    name = "..\\model.safetensors"
    hub.listed_files["tiny/evil-loose"] = {name: (repos / "tiny" / "llama" / "model.safetensors").read_bytes()}
    disk = _Disk(tmp_path, tmp_path / "ckpt" / "tiny" / "evil-loose", [name])

    with pytest.raises(UnsafePathError, match=re.escape(f"{name!r} (it contains a backslash)")):
        download("tiny/evil-loose", checkpoint_dir=tmp_path / "ckpt")
    disk.assert_untouched()


def test_tokenizer_only_refuses_an_unsafe_listing(hub, tmp_path):
    name = _unsafe_names(tmp_path)["climbs"]
    hub.listed_files["tiny/evil"] = {name: b"pwned"}
    disk = _Disk(tmp_path, tmp_path / "ckpt" / "tiny" / "evil", [name])
    with pytest.raises(UnsafePathError, match="The file list of tiny/evil"):
        download("tiny/evil", checkpoint_dir=tmp_path / "ckpt", tokenizer_only=True)
    disk.assert_untouched()


@pytest.mark.parametrize("listed", [True, False], ids=["listed", "index_only"])
@pytest.mark.parametrize("index", ["model.safetensors.index.json", "pytorch_model.bin.index.json"])
@pytest.mark.parametrize("kind", ["climbs", "dotdot_inside", "absolute", "backslash", "not_a_string"])
def test_an_index_naming_a_shard_outside_is_refused_before_any_write(hub, tmp_path, kind, index, listed):
    """The shard names of an index are checked when the index is read (in memory), before anything is written."""
    name = _unsafe_names(tmp_path).get(kind, 5)
    legit = "model-00001-of-00002" + (".safetensors" if index.startswith("model.safetensors") else ".bin")
    weight_map = {"model.embed_tokens.weight": legit, "lm_head.weight": name}
    files = {index: json.dumps({"metadata": {}, "weight_map": weight_map}).encode(), legit: b"legit shard"}
    if listed and isinstance(name, str):
        files[name] = b"pwned"  # the endpoint also lists and serves it: the index then passes the "in repo" check
    hub.listed_files["tiny/evil-index"] = files
    disk = _Disk(tmp_path, tmp_path / "ckpt" / "tiny" / "evil-index", [name])

    source = f"The file list of tiny/evil-index on {hub.url}" if name in files else f"{index} of tiny/evil-index"
    with pytest.raises(UnsafePathError, match=_refusal(source, name)):
        download("tiny/evil-index", checkpoint_dir=tmp_path / "ckpt")

    assert set(hub.fetched("GET")) <= {"config.json", index}  # read into memory, never written; no shard fetched
    disk.assert_untouched()


@pytest.mark.parametrize(
    ("index", "message"),
    [(b"[1, 2]", "model.safetensors.index.json is not a JSON object"), (b'{"weight_map": []}', "is not a JSON object")],
)
def test_a_malformed_index_is_one_line_and_writes_nothing(hub, tmp_path, index, message):
    hub.listed_files["tiny/evil-index"] = {"model.safetensors.index.json": index}
    with pytest.raises(UserError, match=message):
        download("tiny/evil-index", checkpoint_dir=tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists()


def test_an_oversized_index_is_refused_before_its_bytes_are_read(hub, tmp_path, monkeypatch):
    """config.json and the index are read into memory: their announced size is capped (64 MiB; 1000 bytes here)."""
    import litgpt_lite.download as download_module

    monkeypatch.setattr(download_module, "_MAX_JSON_BYTES", 1000)  # config.json is ~700 bytes
    index = json.dumps({"weight_map": {f"layer.{i}.weight": "model.safetensors" for i in range(100)}}).encode()
    hub.listed_files["tiny/evil-index"] = {"model.safetensors.index.json": index}
    message = f"tiny/evil-index/model.safetensors.index.json is {len(index)} bytes, too large for a JSON metadata file"
    with pytest.raises(UserError, match=message):
        download("tiny/evil-index", checkpoint_dir=tmp_path / "ckpt")
    assert "model.safetensors.index.json" not in hub.fetched("GET")
    assert not (tmp_path / "ckpt").exists()


def test_refused_download_keeps_earlier_files_and_writes_no_new_ones(hub, tmp_path):
    """A folder left by an earlier run is not touched; the index is read from the local copy when it is there."""
    out = tmp_path / "ckpt" / "tiny" / "evil-index"
    out.mkdir(parents=True)
    (out / "config.json").write_bytes((hub.root / "tiny" / "evil-index" / "config.json").read_bytes())
    (out / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "/etc/x.safetensors"}}))
    hub.listed_files["tiny/evil-index"] = {"model.safetensors.index.json": b"{}"}

    with pytest.raises(UnsafePathError, match="model.safetensors.index.json of tiny/evil-index names an unsafe"):
        download("tiny/evil-index", checkpoint_dir=tmp_path / "ckpt")
    assert hub.fetched("GET") == []
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors.index.json"]


@pytest.mark.parametrize(("kind", "placement"), [("climbs", "index"), ("absolute", "listing")])
def test_cli_refuses_an_unsafe_name_in_one_line(server, tmp_path, kind, placement):
    name = _unsafe_names(tmp_path)[kind]
    repo = "tiny/evil-index" if placement == "index" else "tiny/evil"
    files = {name: b"pwned"}
    if placement == "index":
        files["model.safetensors.index.json"] = json.dumps({"weight_map": {"lm_head.weight": name}}).encode()
    server.listed_files[repo] = files
    disk = _Disk(tmp_path, tmp_path / "ckpt" / repo, [name])
    try:
        proc = _cli(["download", repo, "--checkpoint_dir", str(tmp_path / "ckpt")], _hub_env(server, tmp_path))
    finally:
        server.listed_files.clear()

    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: The file list of {repo} on {server.url} names an unsafe")
    assert repr(name) in lines[0]
    disk.assert_untouched()
