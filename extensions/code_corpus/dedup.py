"""Exact dedup on a whitespace-normalized SHA-256, and near dedup with MinHash LSH plus connected components.

Near dedup follows BigCode's recipe: word 5-gram shingles, 256 MinHash permutations (datasketch), LSH with the
band/row split datasketch derives from the threshold, then union-find over candidate pairs. Each candidate pair is
checked against the threshold with the signatures' estimated Jaccard first, so one unlucky band collision does not
chain two unrelated files into a cluster. The per-file signature is a map step; only the grouping is global, and it
needs the signatures alone, never the content.
"""

import hashlib
import re
from collections import defaultdict
from itertools import accumulate

import numpy as np

from litgpt_lite.errors import UserError

_INSTALL_HINT = "the code-corpus pipeline needs its extra: pip install 'litgpt_lite[code]'"
try:
    import xxhash
except ModuleNotFoundError as e:  # an optional dependency: say how to install it rather than show a traceback
    raise UserError(_INSTALL_HINT) from e

NUM_PERM = 256
SHINGLE_SIZE = 5
SEED = 1
_SCHEME = "affine32"
_WORD = re.compile(r"\w+")
_templates: dict = {}  # (num_perm, seed) -> MinHash holding the drawn permutations


def _datasketch():
    # Imported on first use, not with this module: it loads scipy (~1 s), which the redaction workers never need.
    try:
        import datasketch
    except ModuleNotFoundError as e:
        raise UserError(_INSTALL_HINT) from e
    return datasketch


def normalized_sha256(content: str) -> str:
    """SHA-256 of the content with every whitespace run collapsed to one space: re-indented copies hash alike."""
    return hashlib.sha256(" ".join(content.split()).encode("utf-8", "surrogatepass")).hexdigest()


def word_shingles(content: str, size: int = SHINGLE_SIZE) -> list[bytes]:
    """The `size`-word windows, as UTF-8 (with repeats); a file shorter than one window is one shingle."""
    words = _WORD.findall(content)
    if len(words) <= size:
        return [" ".join(words).encode()] if words else []
    # Slice one joined buffer instead of joining every window: this runs for every word of the corpus.
    data = " ".join(words).encode()
    lengths = [len(w) for w in words] if data.isascii() else [len(w.encode()) for w in words]
    starts = list(accumulate((n + 1 for n in lengths[:-1]), initial=0))
    last = size - 1
    return [data[starts[i] : starts[i + last] + lengths[i + last]] for i in range(len(words) - last)]


def minhash_signature(content: str, num_perm: int = NUM_PERM, seed: int = SEED) -> np.ndarray | None:
    """The MinHash signature (uint32, one value per permutation), or None for a file without words.

    Shingles are hashed with xxh32 rather than datasketch's default SHA-1: a C call per shingle instead of a
    Python wrapper, several times faster, and as good for MinHash, which needs only well-mixed 32-bit values.
    """
    datasketch = _datasketch()
    shingles = word_shingles(content)
    if not shingles:
        return None
    # Drawing 256 permutations costs more than hashing a small file: draw them once per process.
    key = (num_perm, seed)
    if key not in _templates:
        _templates[key] = datasketch.MinHash(num_perm=num_perm, seed=seed, scheme=_SCHEME)
    minhash = datasketch.MinHash(
        num_perm=num_perm,
        seed=seed,
        hashfunc=xxhash.xxh32_intdigest,
        permutations=_templates[key].permutations,
        scheme=_SCHEME,
    )
    minhash.update_batch(shingles)
    return minhash.hashvalues.astype(np.uint32)


def estimated_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.count_nonzero(a == b)) / len(a)


def _keep_order(record: dict, index: int) -> tuple:
    """Which copy survives: most stars, then the smallest (repo, path), so the choice never depends on input order."""
    return (-(record.get("stars") or 0), record["repo"], record["path"], index)


def _mark_duplicate(record: dict, reason: str, kept: dict) -> None:
    record["drop_reason"] = reason
    record["duplicate_of"] = f"{kept['repo']}:{kept['path']}"


def exact_dedup(records: list[dict]) -> int:
    """Drop all but one copy of each normalized SHA-256 among the surviving records; returns how many were dropped."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, record in enumerate(records):
        if record["drop_reason"] is None:
            groups[record["sha256"]].append(i)
    dropped = 0
    for members in groups.values():
        keep = min(members, key=lambda i: _keep_order(records[i], i))
        for i in members:
            if i != keep:
                _mark_duplicate(records[i], "exact_duplicate", records[keep])
                dropped += 1
    return dropped


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]  # path halving keeps the trees flat
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def near_duplicate_clusters(
    signatures: dict[int, np.ndarray], threshold: float = 0.7, num_perm: int = NUM_PERM, verify: bool = True
) -> list[list[int]]:
    """Connected components (of two or more) of the LSH candidate graph over `signatures`, each sorted."""
    datasketch = _datasketch()
    lsh = datasketch.MinHashLSH(threshold=threshold, num_perm=num_perm)
    lean = {i: datasketch.LeanMinHash(seed=SEED, hashvalues=sig, scheme=_SCHEME) for i, sig in signatures.items()}
    with lsh.insertion_session() as session:
        for i, minhash in lean.items():
            session.insert(i, minhash, check_duplication=False)
    components = _UnionFind()
    for i, minhash in lean.items():
        for j in lsh.query(minhash):
            if j > i and (not verify or estimated_jaccard(signatures[i], signatures[j]) >= threshold):
                components.union(i, j)
    groups: dict[int, list[int]] = defaultdict(list)
    for i in components.parent:
        groups[components.find(i)].append(i)
    return [sorted(members) for members in groups.values() if len(members) > 1]


def near_dedup(records: list[dict], threshold: float = 0.7, num_perm: int = NUM_PERM, verify: bool = True) -> int:
    """Cluster the surviving records by MinHash similarity; keep one per cluster. Returns the number of clusters.

    Every member gets `near_dup_cluster` (numbered by the cluster's first file in (repo, path) order), and all but
    the kept one are dropped as `near_duplicate`.
    """
    signatures = {
        i: r["minhash"] for i, r in enumerate(records) if r["drop_reason"] is None and r.get("minhash") is not None
    }
    clusters = near_duplicate_clusters(signatures, threshold, num_perm, verify)
    clusters.sort(key=lambda members: min((records[i]["repo"], records[i]["path"], i) for i in members))
    for cluster_id, members in enumerate(clusters):
        keep = min(members, key=lambda i: _keep_order(records[i], i))
        for i in members:
            records[i]["near_dup_cluster"] = cluster_id
            if i != keep:
                _mark_duplicate(records[i], "near_duplicate", records[keep])
    return len(clusters)
