"""Reading the input (a directory of repositories or a JSONL file) into records, and the opt-out list.

A record is a plain dict, so every stage runs unchanged inside Dask, Ray Data or datatrove:
`{"repo": "owner/name", "path": "src/a.py", "content": str | None, "licenses_declared": [...], "stars": int | None}`.
"""

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from extensions.code_corpus.licenses import spdx_expression_ids
from litgpt_lite.errors import UserError

# git's heuristic: a NUL byte in the first 8 KB marks a binary file.
_BINARY_SNIFF = 8192
_SKIP_DIRS = frozenset({".git", ".hg", ".svn"})


def new_record(
    repo: str, path: str, content: str | None, licenses: list[str] | None = None, stars: int | None = None
) -> dict:
    """A record in the shape every stage expects, before any stage has run."""
    return {
        "repo": repo,
        "path": path,
        "content": content,
        "size": len(content.encode("utf-8", "surrogatepass")) if content is not None else 0,
        "licenses_declared": licenses or [],
        "stars": stars,
        "drop_reason": None,
    }


def iter_records(input_path: Path) -> Iterator[dict]:
    """Records of every file under `input_path`, in a stable order (sorted paths, or the JSONL's line order)."""
    if not input_path.exists():
        raise UserError(f"--input {input_path} does not exist: pass a directory of repositories or a .jsonl file")
    if input_path.is_dir():
        yield from _iter_directory(input_path)
    else:
        yield from _iter_jsonl(input_path)


def _repo_dirs(root: Path) -> Iterator[tuple[str, Path]]:
    """`<root>/<owner>/<name>/` repositories, or `<root>/<name>/` when that directory is itself a git checkout."""
    for first in sorted(p for p in root.iterdir() if p.is_dir() and p.name not in _SKIP_DIRS):
        if (first / ".git").exists():
            yield first.name, first
            continue
        for second in sorted(p for p in first.iterdir() if p.is_dir() and p.name not in _SKIP_DIRS):
            yield f"{first.name}/{second.name}", second


def _iter_directory(root: Path) -> Iterator[dict]:
    any_repo = False
    for repo, repo_dir in _repo_dirs(root):
        any_repo = True
        for file in _walk_files(repo_dir):
            yield _read_file(repo, file.relative_to(repo_dir).as_posix(), file)
    if not any_repo:
        raise UserError(f"--input {root} holds no repositories: lay them out as <input>/<owner>/<repo>/...")


def _walk_files(repo_dir: Path) -> Iterator[Path]:
    # os.walk is unordered: sort both levels so two runs read files in the same order.
    for dirpath, dirnames, filenames in os.walk(repo_dir):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        for name in sorted(filenames):
            file = Path(dirpath, name)
            if file.is_file() and not file.is_symlink():
                yield file


def _read_file(repo: str, rel_path: str, file: Path) -> dict:
    data = file.read_bytes()
    if b"\0" in data[:_BINARY_SNIFF]:
        return {**new_record(repo, rel_path, None), "size": len(data), "drop_reason": "binary"}
    try:
        return new_record(repo, rel_path, data.decode("utf-8"))
    except UnicodeDecodeError:
        return {**new_record(repo, rel_path, None), "size": len(data), "drop_reason": "not_utf8"}


def _iter_jsonl(path: Path) -> Iterator[dict]:
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if line.strip():
                yield _parse_jsonl_record(line, f"{path}:{line_no}")


def _parse_jsonl_record(line: str, where: str) -> dict:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise UserError(f"{where}: not valid JSON ({e.msg})") from None
    return record_from_json(obj, where)


def record_from_json(obj: dict, where: str = "record") -> dict:
    """A record from one parsed input object `{repo, path, content[, license, stars]}`, validated."""
    if not isinstance(obj, dict):
        raise UserError(f"{where}: expected an object with repo, path, content")
    for key in ("repo", "path", "content"):
        if not isinstance(obj.get(key), str):
            raise UserError(f"{where}: field {key!r} must be a string")
    stars = obj.get("stars")
    if stars is not None and (not isinstance(stars, int) or isinstance(stars, bool)):
        raise UserError(f"{where}: field 'stars' must be an integer")
    record = new_record(obj["repo"], obj["path"], obj["content"], _declared_licenses(obj.get("license"), where), stars)
    try:
        obj["content"].encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate escaped in the JSON: not text we can write back out
        record.update(content=None, drop_reason="not_utf8")
    return record


def _declared_licenses(value, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return spdx_expression_ids(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return sorted({i for v in value for i in spdx_expression_ids(v)})
    raise UserError(f"{where}: field 'license' must be an SPDX expression or a list of them")


@dataclass(frozen=True)
class OptOut:
    """Owners and `owner/name` repositories whose files must not be used. GitHub names are case-insensitive."""

    owners: frozenset[str] = field(default_factory=frozenset)
    repos: frozenset[str] = field(default_factory=frozenset)

    def excludes(self, repo: str) -> bool:
        repo = repo.lower()
        return repo in self.repos or repo.split("/", 1)[0] in self.owners


def load_optout(path: Path | None) -> OptOut:
    """Merge every `{"optout_owners": [...], "optout_repos": [...]}` line of a JSONL file."""
    if path is None:
        return OptOut()
    if not path.is_file():
        raise UserError(f"--optout {path} does not exist")
    owners: set[str] = set()
    repos: set[str] = set()
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{line_no}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict) or not set(obj) <= {"optout_owners", "optout_repos"}:
            raise UserError(f"{path}:{line_no}: expected {{'optout_owners': [...], 'optout_repos': [...]}}")
        owners.update(_names(obj.get("optout_owners", []), path, line_no))
        repos.update(_names(obj.get("optout_repos", []), path, line_no))
    return OptOut(frozenset(owners), frozenset(repos))


def _names(value, path: Path, line_no: int) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UserError(f"{path}:{line_no}: opt-out entries must be lists of strings")
    return [v.strip().lower() for v in value]
