"""`litgpt_lite prepare_code`: a code corpus in the spirit of The Stack v2, ready for `litgpt_lite pretrain`.

Two passes over the input keep memory to metadata: pass 1 maps every file through the per-file stages and keeps
only its metadata and MinHash signature; the global stages (licenses, exact and near dedup) run on that; pass 2
re-reads the survivors, redacts PII and writes the shards. The output directory is built under a temporary name and
renamed into place, and nothing in it depends on timing or worker count, so a re-run gives the same bytes.
"""

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal

from tqdm import tqdm

from extensions.code_corpus import dedup, stages
from extensions.code_corpus.parallel import parallel_map
from extensions.code_corpus.quality import QualityConfig
from extensions.code_corpus.sources import OptOut, iter_records, load_optout
from litgpt_lite.errors import UserError

OUTPUT_FORMAT = "litgpt_lite.code_corpus"
OUTPUT_VERSION = 1
PII_KINDS = ("EMAIL", "IP_ADDRESS", "KEY", "PASSWORD")


@dataclass(frozen=True)
class PipelineConfig:
    licenses: str = "permissive"
    near_dedup_threshold: float = 0.7
    quality: QualityConfig = field(default_factory=QualityConfig)
    optout: OptOut = field(default_factory=OptOut)
    redact_pii: bool = True
    num_perm: int = dedup.NUM_PERM
    shard_bytes: int = 256 * 2**20


@dataclass
class PipelineResult:
    output: Path
    stats: dict
    seconds: dict[str, float]  # wall time per phase; kept out of stats.json, which must not change between runs


def prepare_code(
    input: Path | None = None,
    output: Path | None = None,
    licenses: Literal["permissive", "permissive+no_license", "all"] = "permissive",
    optout: Path | None = None,
    near_dedup_threshold: float = 0.7,
    num_workers: int | None = None,
    tokenizer_dir: Path | None = None,
    max_file_size: int | None = 1_000_000,
    max_line_length: int | None = 1000,
    max_mean_line_length: float | None = 100.0,
    min_alphanum_fraction: float | None = 0.25,
    redact_pii: bool = True,
    shard_size_mb: int = 256,
    overwrite: bool = False,
) -> None:
    """Build a deduplicated, license-filtered, PII-redacted code corpus from repositories.

    Output: `data/shard-*.jsonl` (kept files), `manifest.jsonl` (every input file, kept or dropped and why),
    `stats.json`, `version.json` (a checksum of every output file), and with --tokenizer_dir `tokens/`, which
    `litgpt_lite pretrain --data` reads.

    Args:
        input: A directory of repositories laid out as <input>/<owner>/<repo>/..., or a JSONL file of
            {"repo", "path", "content"[, "license", "stars"]} records.
        output: The directory to create.
        licenses: Which license types to keep (The Stack v2 kept permissive+no_license).
        optout: A JSONL of {"optout_owners": [...], "optout_repos": [...]} records whose files are removed.
        near_dedup_threshold: Estimated Jaccard similarity (MinHash, word 5-grams) above which files are near
            duplicates; one file per cluster is kept.
        num_workers: Processes for the per-file stages (default: all CPUs).
        tokenizer_dir: A checkpoint dir with the tokenizer; writes tokenized shards for pretraining.
        max_file_size: Drop files larger than this many bytes (null: no cap).
        max_line_length: Drop files with a line longer than this (null: off).
        max_mean_line_length: Drop files whose mean line length exceeds this (null: off).
        min_alphanum_fraction: Drop files with a smaller share of letters and digits (null: off).
        redact_pii: Replace emails, public IPs and secrets with <EMAIL>, <IP_ADDRESS>, <KEY>, <PASSWORD>.
        shard_size_mb: Target size of each JSONL shard.
        overwrite: Replace an existing, non-empty output directory.
    """
    if input is None or output is None:
        raise UserError("pass both --input (repositories dir or .jsonl) and --output (a new directory)")
    _check_ranges(near_dedup_threshold, num_workers, shard_size_mb, max_file_size, max_line_length)
    config = PipelineConfig(
        licenses=licenses,
        near_dedup_threshold=near_dedup_threshold,
        quality=QualityConfig(max_file_size, max_line_length, max_mean_line_length, min_alphanum_fraction),
        optout=load_optout(optout),
        redact_pii=redact_pii,
        shard_bytes=shard_size_mb * 2**20,
    )
    workers = num_workers or os.cpu_count() or 1
    result = run_pipeline(input, output, config, num_workers=workers, tokenizer_dir=tokenizer_dir, overwrite=overwrite)
    out = result.stats["output"]
    print(f"kept {out['files']} of {result.stats['input']['files']} files ({out['bytes'] / 1e6:.1f} MB) in {output}")


def _check_ranges(threshold: float, num_workers: int | None, shard_size_mb: int, *positive: int | None) -> None:
    if not 0 < threshold <= 1:
        raise UserError(f"--near_dedup_threshold must be in (0, 1], got {threshold}")
    if num_workers is not None and num_workers < 1:
        raise UserError(f"--num_workers must be at least 1, got {num_workers}")
    if shard_size_mb < 1:
        raise UserError(f"--shard_size_mb must be at least 1, got {shard_size_mb}")
    if any(value is not None and value < 1 for value in positive):
        raise UserError("--max_file_size and --max_line_length must be positive (or null to switch them off)")


def run_pipeline(
    input_path: Path,
    output_dir: Path,
    config: PipelineConfig,
    *,
    num_workers: int = 1,
    tokenizer_dir: Path | None = None,
    overwrite: bool = False,
) -> PipelineResult:
    """All stages, input to finished output directory. The function behind `prepare_code`, for tests and scripts."""
    input_path, output_dir = Path(input_path), Path(output_dir)
    _check_paths(input_path, output_dir, overwrite)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp-", dir=output_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the finished corpus should read like any directory
    seconds: dict[str, float] = {}
    try:
        with _timed(seconds, "filter"):
            records = annotate_all(input_path, config, num_workers)
        with _timed(seconds, "dedup"):
            num_clusters = run_global_stages(records, config)
        with _timed(seconds, "write"):
            write_kept_files(input_path, records, tmp / "data", config, num_workers)
        if tokenizer_dir is not None:
            with _timed(seconds, "tokenize"):
                write_tokens(tmp / "data", Path(tokenizer_dir), tmp / "tokens", num_workers)
        _write_jsonl(tmp / "manifest.jsonl", (manifest_entry(r) for r in records))
        stats = build_stats(records, num_clusters, tmp)
        _write_json(tmp / "stats.json", stats)
        _write_json(tmp / "version.json", dataset_version(tmp, config, tokenizer_dir))
        _replace_dir(tmp, output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return PipelineResult(output_dir, stats, seconds)


@contextmanager
def _timed(seconds: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    seconds[name] = time.perf_counter() - start


def _check_paths(input_path: Path, output_dir: Path, overwrite: bool) -> None:
    if not input_path.exists():
        raise UserError(f"--input {input_path} does not exist: pass a directory of repositories or a .jsonl file")
    if input_path.is_dir() and output_dir.resolve().is_relative_to(input_path.resolve()):
        raise UserError(f"--output {output_dir} is inside --input {input_path}: a re-run would read its own output")
    if output_dir.exists() and not output_dir.is_dir():
        raise UserError(f"--output {output_dir} is a file: pass a directory")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise UserError(f"--output {output_dir} is not empty: pass --overwrite true or choose another directory")


def annotate_all(input_path: Path, config: PipelineConfig, num_workers: int = 1) -> list[dict]:
    """Pass 1: every input file through the per-file stages; returns metadata records in input order."""
    map_config = stages.MapConfig(config.optout, config.quality, config.num_perm)
    results = parallel_map(partial(stages.annotate, config=map_config), iter_records(input_path), num_workers)
    return list(tqdm(results, desc="filter + hash", unit=" files", disable=None))


def run_global_stages(records: list[dict], config: PipelineConfig) -> int:
    """Licenses, exact dedup, near dedup, in place; returns the number of near-duplicate clusters."""
    stages.assign_licenses(records, config.licenses)
    stages.exact_dedup(records)
    return stages.near_dedup(records, config.near_dedup_threshold, config.num_perm)


def _kept_with_content(input_path: Path, records: list[dict]) -> Iterator[dict]:
    changed = UserError(f"--input {input_path} changed while prepare_code ran: run it again on a stable copy")
    count = 0
    for index, raw in enumerate(iter_records(input_path)):
        if index >= len(records) or (raw["repo"], raw["path"]) != (records[index]["repo"], records[index]["path"]):
            raise changed
        count += 1
        if records[index]["drop_reason"] is None:
            yield {**raw, "index": index}
    if count != len(records):
        raise changed


def write_kept_files(
    input_path: Path, records: list[dict], data_dir: Path, config: PipelineConfig, num_workers: int = 1
) -> None:
    """Pass 2: re-read the kept files, redact PII (counts go into `records`), and write the JSONL shards."""
    kept = _kept_with_content(input_path, records)
    if config.redact_pii:
        kept = parallel_map(stages.redact_record, kept, num_workers)
    total = sum(r["drop_reason"] is None for r in records)
    with _JsonlShards(data_dir, config.shard_bytes) as shards:
        for record in tqdm(kept, desc="redact + write", unit=" files", total=total, disable=None):
            meta = records[record["index"]]
            meta["pii"] = record.get("pii")
            shards.write(output_document(meta, record["content"]))


def output_document(meta: dict, content: str) -> dict:
    return {
        "repo": meta["repo"],
        "path": meta["path"],
        "language": meta["language"],
        "license_type": meta["license_type"],
        "licenses": meta["licenses"],
        "content": content,
    }


class _JsonlShards:
    """JSONL shards of about `max_bytes` each: shard-00000.jsonl, shard-00001.jsonl..."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory, self.max_bytes = directory, max_bytes
        self.count = 0
        self._file = None
        self._bytes = 0
        directory.mkdir(parents=True, exist_ok=True)

    def write(self, doc: dict) -> None:
        line = (json.dumps(doc, ensure_ascii=False) + "\n").encode("utf-8")
        if self._file is None or (self._bytes and self._bytes + len(line) > self.max_bytes):
            self._roll()
        self._file.write(line)
        self._bytes += len(line)

    def _roll(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file = open(self.directory / f"shard-{self.count:05d}.jsonl", "wb")  # closed by _roll / __exit__
        self.count += 1
        self._bytes = 0

    def __enter__(self) -> "_JsonlShards":
        return self

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            self._file.close()


def write_tokens(data_dir: Path, tokenizer_dir: Path, out_dir: Path, num_workers: int = 1) -> None:
    """Tokenize the kept files into litgpt_lite token shards (each file followed by EOS)."""
    from extensions.code_corpus import tokens
    from litgpt_lite.data.shards import write_token_shards

    tokenizer = tokens.load_tokenizer(tokenizer_dir)  # in this process too: fail fast, and read eos_id/vocab_size
    if tokenizer.eos_id is None:
        raise UserError(f"The tokenizer in {tokenizer_dir} has no EOS token to separate files: set eos_token")
    docs = parallel_map(
        tokens.encode_document,
        tokens.iter_shard_contents(data_dir),
        num_workers,
        initializer=tokens.init_worker,
        initargs=(tokenizer_dir,),
    )
    docs = tqdm(docs, desc="tokenize", unit=" files", disable=None)
    write_token_shards(docs, out_dir, eos_id=tokenizer.eos_id, vocab_size=tokenizer.vocab_size)


def manifest_entry(record: dict) -> dict:
    """One manifest line: where the file came from, what the stages found, and whether it was kept."""
    return {
        "repo": record["repo"],
        "path": record["path"],
        "language": record.get("language"),
        "license_type": record.get("license_type"),
        "licenses": record.get("licenses", []),
        "size": record["size"],
        "sha256": record.get("sha256"),
        "near_dup_cluster": record.get("near_dup_cluster"),
        "pii": record.get("pii"),
        "status": "kept" if record["drop_reason"] is None else "dropped",
        "reason": record["drop_reason"],
        "duplicate_of": record.get("duplicate_of"),
    }


def build_stats(records: list[dict], num_clusters: int, out_dir: Path) -> dict:
    """Counts per stage (dropped by reason, files remaining), per language and license type, PII and output size."""
    kept = [r for r in records if r["drop_reason"] is None]
    dropped_by_stage: dict[str, Counter] = defaultdict(Counter)
    for r in records:
        if r["drop_reason"] is not None:
            dropped_by_stage[stages.stage_of(r["drop_reason"])][r["drop_reason"]] += 1
    remaining, stage_rows = len(records), []
    for stage in stages.STAGES:
        remaining -= sum(dropped_by_stage[stage].values())
        stage_rows.append(
            {"stage": stage, "dropped": dict(sorted(dropped_by_stage[stage].items())), "remaining": remaining}
        )
    languages: dict[str, Counter] = defaultdict(Counter)
    for r in records:
        if r.get("language"):
            languages[r["language"]].update(input_files=1, kept_files=int(r["drop_reason"] is None))
    for r in kept:
        languages[r["language"]]["kept_bytes"] += r["size"]
    pii = Counter()
    for r in kept:
        pii.update(r.get("pii") or {})
    return {
        "input": {"files": len(records), "bytes": sum(r["size"] for r in records)},
        "stages": stage_rows,
        "languages": {name: dict(sorted(c.items())) for name, c in sorted(languages.items())},
        "license_types": _license_type_counts(records),
        "near_dup_clusters": num_clusters,
        "pii": {kind: pii[kind] for kind in PII_KINDS},
        "output": _output_counts(kept, out_dir),
    }


def _license_type_counts(records: list[dict]) -> dict:
    counts: dict[str, Counter] = defaultdict(Counter)
    for r in records:
        if r["license_type"] is not None:  # opted-out files are never classified
            counts[r["license_type"]].update(input_files=1, kept_files=int(r["drop_reason"] is None))
    return {name: dict(sorted(c.items())) for name, c in sorted(counts.items())}


def _output_counts(kept: list[dict], out_dir: Path) -> dict:
    shards = sorted((out_dir / "data").glob("shard-*.jsonl"))
    counts = {"files": len(kept), "shards": len(shards), "bytes": sum(f.stat().st_size for f in shards)}
    token_manifest = out_dir / "tokens" / "manifest.json"
    if token_manifest.is_file():
        counts["tokens"] = json.loads(token_manifest.read_text(encoding="utf-8"))["num_tokens"]
    return counts


def dataset_version(out_dir: Path, config: PipelineConfig, tokenizer_dir: Path | None) -> dict:
    """The checksum of every output file, the settings that produced them, and one id over both."""
    files = [
        {"path": f.relative_to(out_dir).as_posix(), "bytes": f.stat().st_size, "sha256": _file_sha256(f)}
        for f in sorted(out_dir.rglob("*"))
        if f.is_file() and f.name != "version.json"
    ]
    settings = {
        "licenses": config.licenses,
        "near_dedup_threshold": config.near_dedup_threshold,
        "num_perm": config.num_perm,
        "shingle_size": dedup.SHINGLE_SIZE,
        "quality": asdict(config.quality),
        "redact_pii": config.redact_pii,
        "shard_bytes": config.shard_bytes,
        "optout": _optout_digest(config.optout),
        "tokenizer_sha256": _tokenizer_digest(tokenizer_dir),
    }
    listing = json.dumps({"files": files, "settings": settings}, sort_keys=True).encode()
    return {
        "format": OUTPUT_FORMAT,
        "format_version": OUTPUT_VERSION,
        "dataset_version": hashlib.sha256(listing).hexdigest()[:16],
        "settings": settings,
        "files": files,
    }


def _optout_digest(optout: OptOut) -> dict:
    names = "\n".join(sorted(optout.owners) + ["--"] + sorted(optout.repos))
    return {
        "owners": len(optout.owners),
        "repos": len(optout.repos),
        "sha256": hashlib.sha256(names.encode()).hexdigest(),
    }


def _tokenizer_digest(tokenizer_dir: Path | None) -> str | None:
    if tokenizer_dir is None:
        return None
    files = [f for f in sorted(Path(tokenizer_dir).glob("tokenizer*")) if f.is_file()]
    sha = hashlib.sha256()
    for f in files:
        sha.update(f.name.encode() + b"\0" + f.read_bytes())
    return sha.hexdigest()


def _file_sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_jsonl(path: Path, objs) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for obj in objs:
            f.write(json.dumps(obj, ensure_ascii=False) + "\n")


def _replace_dir(tmp: Path, output_dir: Path) -> None:
    if output_dir.exists():
        # Move the old output aside before renaming the new one in, so neither is ever half there.
        old = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.old-", dir=output_dir.parent))
        output_dir.rename(old / output_dir.name)
        tmp.rename(output_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(output_dir)
