"""End-to-end tests of `prepare_code` on the synthetic corpus with planted cases."""

import hashlib
import json
import sys
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest

from extensions.code_corpus import stages
from extensions.code_corpus.pipeline import PipelineConfig, run_pipeline
from extensions.code_corpus.sources import iter_records, load_optout
from extensions.code_corpus.synthetic import SyntheticCorpus, generate_corpus
from litgpt_lite.__main__ import main
from litgpt_lite.data.shards import TokenShards


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _output_docs(out: Path) -> list[dict]:
    return [doc for shard in sorted((out / "data").glob("shard-*.jsonl")) for doc in _read_jsonl(shard)]


def _manifest(out: Path) -> dict[tuple[str, str], dict]:
    return {(m["repo"], m["path"]): m for m in _read_jsonl(out / "manifest.jsonl")}


def _tree_bytes(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def corpus() -> SyntheticCorpus:
    return generate_corpus(seed=0)


@pytest.fixture(scope="module")
def inputs(corpus, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inputs")
    return {"jsonl": corpus.write_jsonl(root / "corpus.jsonl"), "optout": corpus.write_optout(root / "optout.jsonl")}


@pytest.fixture(scope="module")
def config(inputs) -> PipelineConfig:
    return PipelineConfig(licenses="all", optout=load_optout(inputs["optout"]))


@pytest.fixture(scope="module")
def out_all(inputs, config, tmp_path_factory) -> Path:
    """One run keeping every license type, so each planted case reaches the stage it tests."""
    return run_pipeline(inputs["jsonl"], tmp_path_factory.mktemp("run") / "out", config, num_workers=1).output


def test_near_dedup_precision_and_recall(corpus, out_all):
    clusters: dict[int, list] = {}
    for key, entry in _manifest(out_all).items():
        if entry["near_dup_cluster"] is not None:
            clusters.setdefault(entry["near_dup_cluster"], []).append(key)
    predicted = {pair for members in clusters.values() for pair in combinations(sorted(members), 2)}
    families: dict[int, list] = {}
    for key, family in corpus.near_dup_family.items():
        families.setdefault(family, []).append(key)
    planted = {pair for members in families.values() for pair in combinations(sorted(members), 2)}
    true_positives = len(predicted & planted)
    precision, recall = true_positives / len(predicted), true_positives / len(planted)
    print(f"near dedup on {len(planted)} planted pairs: precision {precision:.3f} recall {recall:.3f}")
    assert precision >= 0.95 and recall >= 0.95
    # One file per family survives.
    kept = {k for k, m in _manifest(out_all).items() if m["status"] == "kept"}
    assert all(len(set(members) & kept) == 1 for members in families.values())


def test_exact_dedup_keeps_the_most_starred_copy(corpus, out_all):
    manifest = _manifest(out_all)
    for dropped, kept in corpus.exact_dup_kept.items():
        assert manifest[dropped]["reason"] == "exact_duplicate"
        assert manifest[dropped]["duplicate_of"] == f"{kept[0]}:{kept[1]}"
        assert manifest[kept]["status"] == "kept"


def test_pii_redacted_and_lookalikes_untouched(corpus, out_all):
    docs = {(d["repo"], d["path"]): d["content"] for d in _output_docs(out_all)}
    everything = "\n".join(docs.values())
    for secret in corpus.secrets:
        assert secret not in everything, secret
    settings = docs[corpus.pii_files[0]]
    for lookalike in corpus.lookalikes:
        assert lookalike in settings, lookalike
    for placeholder in ("<EMAIL>", "<IP_ADDRESS>", "<KEY>", "<PASSWORD>"):
        assert placeholder in settings
    manifest = _manifest(out_all)
    assert manifest[corpus.pii_files[0]]["pii"] == {"EMAIL": 2, "IP_ADDRESS": 2, "KEY": 6, "PASSWORD": 1}


def test_license_classes(corpus, out_all):
    manifest = _manifest(out_all)
    for key, (license_type, spdx) in corpus.expected_licenses.items():
        assert (manifest[key]["license_type"], manifest[key]["licenses"]) == (license_type, spdx), key


@pytest.mark.parametrize("allowed", ["permissive", "permissive+no_license"])
def test_license_filter(inputs, corpus, allowed, tmp_path):
    config = PipelineConfig(licenses=allowed, optout=load_optout(inputs["optout"]), shard_bytes=64_000)
    out = run_pipeline(inputs["jsonl"], tmp_path / "out", config).output
    shards = sorted((out / "data").glob("shard-*.jsonl"))
    assert len(shards) > 1 and all(f.stat().st_size <= 64_000 for f in shards)
    kept_types = {doc["license_type"] for doc in _output_docs(out)}
    assert kept_types == ({"permissive"} if allowed == "permissive" else {"permissive", "no_license"})
    manifest = _manifest(out)
    assert manifest[("lic/gpl-3.0", "main.py")]["reason"] == "license:non_permissive"
    assert (manifest[("lic/none", "main.py")]["reason"] == "license:no_license") == (allowed == "permissive")


def test_vendored_generated_quality_and_optout_drops(corpus, out_all):
    manifest = _manifest(out_all)
    for key, reason in corpus.expected_drops.items():
        assert manifest[key]["reason"] == reason, key
    repos = {doc["repo"] for doc in _output_docs(out_all)}
    assert not repos & {"optout-owner/alpha", "optout-owner/beta", "someone/private-repo"}
    assert "someone/public-repo" in repos


def test_output_files_are_consistent(corpus, out_all):
    docs = _output_docs(out_all)
    assert all(list(d) == ["repo", "path", "language", "license_type", "licenses", "content"] for d in docs)
    manifest = _read_jsonl(out_all / "manifest.jsonl")
    assert [(m["repo"], m["path"]) for m in manifest] == [(r["repo"], r["path"]) for r in corpus.records]
    assert sum(m["status"] == "kept" for m in manifest) == len(docs)
    stats = json.loads((out_all / "stats.json").read_text())
    assert stats["input"]["files"] == len(corpus.records)
    assert stats["stages"][-1]["remaining"] == stats["output"]["files"] == len(docs)
    assert sum(lang["kept_files"] for lang in stats["languages"].values()) == len(docs)
    version = json.loads((out_all / "version.json").read_text())
    listed = {f["path"]: f["sha256"] for f in version["files"]}
    assert set(listed) == set(_tree_bytes(out_all)) - {"version.json"}
    assert all(hashlib.sha256((out_all / p).read_bytes()).hexdigest() == sha for p, sha in listed.items())


def test_rerun_is_byte_identical_whatever_the_worker_count(inputs, config, out_all, tmp_path):
    again = run_pipeline(inputs["jsonl"], tmp_path / "again", config, num_workers=2).output
    assert _tree_bytes(again) == _tree_bytes(out_all)


def test_directory_input_matches_jsonl_input(corpus, config, out_all, tmp_path):
    tree = corpus.write_tree(tmp_path / "repos")
    out = run_pipeline(tree, tmp_path / "out", config).output

    # The tree carries no stars or declared licenses; with every license kept, the same files survive.
    def files(out: Path) -> list[tuple]:
        return sorted((d["repo"], d["path"], d["content"]) for d in _output_docs(out))

    assert files(out) == files(out_all)


@pytest.fixture(scope="module")
def tokenizer_dir(inputs, tmp_path_factory) -> Path:
    """A tiny byte-level BPE trained on the corpus, saved as a checkpoint dir's tokenizer files."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<|endoftext|>"])
    tokenizer.train_from_iterator((r["content"] for r in iter_records(inputs["jsonl"])), trainer)
    directory = tmp_path_factory.mktemp("tokenizer")
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    return directory


def test_tokenizer_fallback_matches_litgpt_lite_tokenizer(tokenizer_dir, monkeypatch):
    from extensions.code_corpus.tokens import load_tokenizer

    text = "def add(a, b):\n    return a + b\n"
    real = load_tokenizer(tokenizer_dir)
    monkeypatch.setitem(sys.modules, "litgpt_lite.tokenizer", None)  # as if the module did not exist
    fallback = load_tokenizer(tokenizer_dir)
    assert type(fallback).__name__ == "_HFTokenizerFile"
    assert (fallback.eos_id, fallback.vocab_size) == (real.eos_id, real.vocab_size)
    assert fallback.encode(text) == real.encode(text, bos=False)


def test_tokenized_shards_feed_pretraining(inputs, config, tokenizer_dir, tmp_path):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    out = run_pipeline(inputs["jsonl"], tmp_path / "out", config, tokenizer_dir=tokenizer_dir).output
    shards = TokenShards(out)  # the prepare_code output dir itself is what `pretrain --data` is given
    eos = tokenizer.token_to_id("<|endoftext|>")
    docs = [tokenizer.encode(d["content"], add_special_tokens=False).ids for d in _output_docs(out)]
    assert (shards.eos_id, len(shards)) == (eos, sum(len(d) + 1 for d in docs))
    assert shards.dtype == np.uint16
    assert shards.read(0, len(docs[0]) + 1).tolist() == [*docs[0], eos]


def test_cli(inputs, tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["prepare_code", "--input", str(inputs["jsonl"]), "--output", str(out), "--num_workers", "1"]
    assert main([*args, "--optout", str(inputs["optout"]), "--licenses", "permissive+no_license"]) == 0
    assert (out / "stats.json").is_file()
    assert main(args) == 2  # the output exists now
    assert "--overwrite" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"repo": "a/b", "path": "x.py", "content": "x = 1"}\n{"repo": "a/b", "path": 3}\n')
    assert main(["prepare_code", "--input", str(bad), "--output", str(tmp_path / "o2"), "--num_workers", "1"]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert main(["prepare_code", "--input", str(tmp_path / "missing"), "--output", str(tmp_path / "o3")]) == 2
    assert not (tmp_path / "o2").exists() and not list(tmp_path.glob(".o2.tmp-*"))


def test_dask_runs_the_map_stages(inputs, config, out_all):
    db = pytest.importorskip("dask.bag", reason="dask[bag] is not installed: pip install 'litgpt_lite[code]'")
    from functools import partial

    from extensions.code_corpus.sources import record_from_json

    # The same plain functions the local pipeline runs, here mapped by Dask over the JSONL's lines.
    raw = db.read_text(str(inputs["jsonl"])).map(json.loads).map(record_from_json).repartition(4)
    map_config = stages.MapConfig(config.optout, config.quality, config.num_perm)
    records = raw.map(partial(stages.annotate, config=map_config)).compute(scheduler="sync")
    stages.assign_licenses(records, config.licenses)
    stages.exact_dedup(records)
    stages.near_dedup(records, config.near_dedup_threshold)
    manifest = _manifest(out_all)
    assert [(r["drop_reason"], r.get("near_dup_cluster")) for r in records] == [
        (manifest[(r["repo"], r["path"])]["reason"], manifest[(r["repo"], r["path"])]["near_dup_cluster"])
        for r in records
    ]
    contents = raw.pluck("content").compute(scheduler="sync")
    kept = [r | {"content": c} for r, c in zip(records, contents) if r["drop_reason"] is None]
    redacted = db.from_sequence(kept, npartitions=2).map(stages.redact_record).compute(scheduler="sync")
    assert [r["content"] for r in redacted] == [d["content"] for d in _output_docs(out_all)]
