"""The pipeline's stages as plain functions over record dicts.

Map stages take one record and return a new one; a record some stage dropped carries `drop_reason` and passes
through the later stages untouched, so the manifest can say why every file left. Because they are plain functions
over dicts, `dask.bag.map`, `ray.data.Dataset.map` and a datatrove step run them unchanged (see README.md).

The global stages (`assign_licenses`, `exact_dedup`, `near_dedup`) need all records at once, but only their
metadata: `annotate` drops the content after the map stages, and `redact_record` runs on the survivors afterwards.
"""

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from extensions.code_corpus import dedup, licenses, pii
from extensions.code_corpus.languages import detect_language, is_generated, is_minified, is_vendored
from extensions.code_corpus.quality import QualityConfig, quality_drop_reason
from extensions.code_corpus.sources import OptOut

# Stage order, for the stats and for reading the manifest: a file reports the first stage that dropped it.
STAGES = ("ingest", "optout", "language", "quality", "license", "exact_dedup", "near_dedup")
_STAGE_OF_REASON = {
    "binary": "ingest",
    "not_utf8": "ingest",
    "optout": "optout",
    "license_file": "language",
    "vendored": "language",
    "generated": "language",
    "minified": "language",
    "unsupported_language": "language",
    "exact_duplicate": "exact_dedup",
    "near_duplicate": "near_dedup",
}


def stage_of(reason: str) -> str:
    """The stage that emits a drop reason (`quality:max_line_length` -> quality)."""
    return _STAGE_OF_REASON.get(reason) or reason.split(":", 1)[0]


@dataclass(frozen=True)
class MapConfig:
    """Everything the per-file stages need; small and picklable, so it ships to every worker once."""

    optout: OptOut = field(default_factory=OptOut)
    quality: QualityConfig = field(default_factory=QualityConfig)
    num_perm: int = dedup.NUM_PERM


def apply_optout(record: dict, optout: OptOut) -> dict:
    """Drop every file of an opted-out owner or repository before anything reads its content."""
    if record["drop_reason"] is None and optout.excludes(record["repo"]):
        return {**record, "drop_reason": "optout"}
    return record


def hash_content(record: dict) -> dict:
    """The whitespace-normalized SHA-256 that exact dedup groups on (and the manifest reports)."""
    if record["drop_reason"] is not None or record["content"] is None:
        return {**record, "sha256": None}
    return {**record, "sha256": dedup.normalized_sha256(record["content"])}


def classify_file(record: dict) -> dict:
    """Language detection, and the drops that come with it: license files, vendored, generated, minified, unknown."""
    if record["drop_reason"] is not None:
        return {**record, "language": None}
    path, content = record["path"], record["content"]
    if licenses.is_license_file(path):
        found = licenses.detect_licenses(content)
        return {**record, "language": None, "license_file_licenses": found, "drop_reason": "license_file"}
    language = detect_language(path, content)
    if is_vendored(path):
        reason = "vendored"
    elif is_generated(path, content):
        reason = "generated"
    elif is_minified(language, content):
        reason = "minified"
    else:
        reason = None if language else "unsupported_language"
    return {**record, "language": language, "drop_reason": reason}


def apply_quality_filters(record: dict, quality: QualityConfig) -> dict:
    """StarCoder's line-length, alphanumeric and size filters."""
    if record["drop_reason"] is not None:
        return record
    return {**record, "drop_reason": quality_drop_reason(record["content"], record["size"], quality)}


def compute_minhash(record: dict, num_perm: int = dedup.NUM_PERM) -> dict:
    """The MinHash signature near dedup groups on; only files still in the running pay for it."""
    if record["drop_reason"] is not None:
        return {**record, "minhash": None}
    return {**record, "minhash": dedup.minhash_signature(record["content"], num_perm)}


def annotate(record: dict, config: MapConfig) -> dict:
    """All per-file stages before the global ones, in order; returns the metadata, without the content."""
    record = apply_optout(record, config.optout)
    record = hash_content(record)
    record = classify_file(record)
    record = apply_quality_filters(record, config.quality)
    record = compute_minhash(record, config.num_perm)
    return {key: value for key, value in record.items() if key != "content"}


def redact_record(record: dict) -> dict:
    """PII redaction of a kept file: the content with placeholders, and the count per kind."""
    content, counts = pii.redact(record["content"])
    return {**record, "content": content, "pii": counts}


def assign_licenses(records: list[dict], allowed: str = "permissive") -> None:
    """Give every record its licenses and license type (The Stack v2 rule); drop types `allowed` does not name."""
    license_dirs: dict[str, dict[str, list[str]]] = defaultdict(dict)
    declared: dict[str, set[str]] = defaultdict(set)
    for record in records:
        declared[record["repo"]].update(record.get("licenses_declared") or ())
        if record.get("license_file_licenses"):
            directory = str(PurePosixPath(record["path"]).parent)
            found = license_dirs[record["repo"]].setdefault("" if directory == "." else directory, [])
            found.extend(record["license_file_licenses"])
    keep = licenses.ALLOWED_TYPES[allowed]
    for record in records:
        repo = record["repo"]
        if record["drop_reason"] == "optout":  # never read, so never classified
            record["licenses"], record["license_type"] = [], None
            continue
        record["licenses"] = licenses.licenses_for_path(record["path"], license_dirs[repo], declared[repo])
        record["license_type"] = licenses.license_type(record["licenses"])
        if record["drop_reason"] is None and record["license_type"] not in keep:
            record["drop_reason"] = f"license:{record['license_type']}"


def exact_dedup(records: list[dict]) -> int:
    """Keep one copy per normalized SHA-256 (the most-starred repository's); returns how many were dropped."""
    return dedup.exact_dedup(records)


def near_dedup(records: list[dict], threshold: float = 0.7, num_perm: int = dedup.NUM_PERM) -> int:
    """MinHash LSH clusters over the survivors, one file kept per cluster; returns the number of clusters."""
    return dedup.near_dedup(records, threshold, num_perm)
