"""`litgpt_lite download`: fetch a model from the Hugging Face Hub and convert it into a checkpoint directory.

Only the files a checkpoint needs are fetched: config.json, generation_config.json, the tokenizer files and the
weights (safetensors when the repo has them, `.bin` otherwise), each into `<checkpoint_dir>/<org>/<name>`. The
architecture is checked from config.json before any weight is fetched. Every file name the Hub lists, and every
shard an index file names, must be a plain relative path that stays inside the checkpoint folder: a listing or index
that names anything else (`../x`, `/abs`, `a\\b`) is refused before the first byte is written, as is a repo whose
config.json or index is unusable (they are read into memory and written only with the rest). A weight file grows in
`<file>.incomplete` next to its final place and is renamed only once its size and sha256 match the Hub's, so an
interrupted download resumes where it stopped (HTTP Range) on the next run, and a finished file is never fetched
again.

Talks to `HF_ENDPOINT` (read when the command runs) with `HF_TOKEN` or `--access_token`.
This module imports neither torch nor huggingface_hub until it needs them: `litgpt_lite download list` stays fast.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from litgpt_lite.errors import UserError
from litgpt_lite.safe_paths import safe_join

if TYPE_CHECKING:
    from huggingface_hub import HfFileMetadata

DEFAULT_ENDPOINT = "https://huggingface.co"
CONFIG_FILES = ("config.json", "generation_config.json")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"
# org/name as the Hub spells it: each part starts and ends with a word character, no `--` or `..` anywhere
_REPO_ID = re.compile(r"^(?!.*(?:--|\.\.))\w(?:[\w.\-]*\w)?/\w(?:[\w.\-]{0,94}\w)?$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_MAX_JSON_BYTES = 64 << 20  # config.json and the index files are read into memory; the largest real index is ~10 MB


def download(
    repo_id: str,
    access_token: str | None = None,
    tokenizer_only: bool = False,
    checkpoint_dir: Path = Path("checkpoints"),
    convert_checkpoint: bool = True,
    model_name: str | None = None,
    dtype: str | None = None,
    revision: str = "main",
) -> Path | None:
    """Download a model from the Hugging Face Hub and convert it into a litgpt_lite checkpoint directory.

    Args:
        repo_id: the Hub repository, `org/name` (for example `HuggingFaceTB/SmolLM2-135M-Instruct`).
            `list` prints the names of the registered model configs instead.
        access_token: Hugging Face token for gated or private repos; defaults to the `HF_TOKEN` environment
            variable (or the token saved by `hf auth login`).
        tokenizer_only: fetch only the tokenizer files, no weights, no conversion.
        checkpoint_dir: the files go into `<checkpoint_dir>/<org>/<name>`.
        convert_checkpoint: convert the HF weights into `lit_model.safetensors` + `model_config.yaml` in place.
        model_name: a registered config name to use for the conversion instead of reading config.json.
        dtype: store the converted weights in this dtype (float32, bf16, fp16); default keeps the Hub's dtype.
        revision: branch, tag or commit of the repo.
    """
    if repo_id == "list":
        print_registered_names()
        return None
    if not _REPO_ID.match(repo_id):
        raise UserError(f"{repo_id!r} is not a Hub repo id: expected `org/name`, e.g. HuggingFaceTB/SmolLM2-135M")
    if dtype is not None:
        from litgpt_lite.precision import DTYPE_NAMES as DTYPES

        if dtype not in DTYPES:
            raise UserError(f"Unknown dtype {dtype!r}. Choose one of: {', '.join(DTYPES)}")
    if model_name is not None:
        from litgpt_lite.config import Config

        Config.from_name(model_name)  # an unknown name fails here, before any download
    hub = Hub(repo_id, token=_token(access_token), revision=revision)
    out_dir = Path(checkpoint_dir) / repo_id
    files = _listed_files(hub, out_dir)
    if tokenizer_only:
        wanted = [f for f in TOKENIZER_FILES if f in files]
        if not wanted:
            raise UserError(f"{repo_id} has no tokenizer files (looked for {', '.join(TOKENIZER_FILES)})")
        hub.fetch(wanted, out_dir)
        print(f"Saved the tokenizer of {repo_id} to {out_dir}")
        return out_dir
    if "config.json" not in files:
        raise UserError(f"{repo_id} has no config.json: it is not a transformers model repo")
    _check_architecture(hub.read_json("config.json", out_dir), repo_id)
    weights = _weight_files(hub, files, out_dir)
    hub.fetch([f for f in CONFIG_FILES + TOKENIZER_FILES if f in files] + weights, out_dir)  # the first write
    print(f"Saved {repo_id} to {out_dir}")
    if convert_checkpoint:
        from litgpt_lite.convert import convert_to_litgpt

        convert_to_litgpt(out_dir, model_name=model_name, dtype=dtype)
    return out_dir


def ensure_checkpoint(
    path_or_repo_id: str | Path, access_token: str | None = None, checkpoint_dir: str | Path = "checkpoints"
) -> Path:
    """A litgpt_lite checkpoint directory for `path_or_repo_id`, downloading and converting it when needed.

    Args:
        path_or_repo_id: a local checkpoint directory, or a Hub repo id `org/name`.
        access_token: Hugging Face token for gated or private repos (default: `HF_TOKEN`).
        checkpoint_dir: where Hub models live: `<checkpoint_dir>/<org>/<name>` is reused once it is converted.
    """
    from litgpt_lite.checkpoint import CONFIG, WEIGHTS, validate_checkpoint_dir

    path = Path(path_or_repo_id)
    if path.exists():
        return validate_checkpoint_dir(path)
    repo_id = str(path_or_repo_id)
    if not _REPO_ID.match(repo_id):
        raise UserError(f"{repo_id} is neither a checkpoint directory nor a Hub repo id (`org/name`)")
    local = Path(checkpoint_dir) / repo_id
    if (local / WEIGHTS).is_file() and (local / CONFIG).is_file():
        return local
    out = download(repo_id, access_token=access_token, checkpoint_dir=Path(checkpoint_dir))
    assert out is not None
    return validate_checkpoint_dir(out)


def print_registered_names() -> None:
    """Print every registered model config name, one per line (torch-free)."""
    from litgpt_lite.configs import name_to_config

    for name in sorted(name_to_config, key=str.lower):
        print(name)


# ---------------------------------------------------------------- which files
def _listed_files(hub: Hub, out_dir: Path) -> dict[str, int]:
    """The repo's {path: size}, once every listed path is known to stay inside `out_dir`."""
    files = hub.list_files()
    for name in files:  # a hostile or broken endpoint: refuse the whole repo before anything is written
        safe_join(out_dir, name, f"The file list of {hub.repo_id} on {hub.endpoint}")
    return files


def _weight_files(hub: Hub, files: dict[str, int], out_dir: Path) -> list[str]:
    """The weight files to fetch: safetensors when there are any, else PyTorch `.bin`; an index names the shards."""
    for index, single, suffix in (
        (SAFETENSORS_INDEX, "model.safetensors", ".safetensors"),
        (BIN_INDEX, "pytorch_model.bin", ".bin"),
    ):
        if index in files:
            weight_map = hub.read_json(index, out_dir).get("weight_map", {})
            if not isinstance(weight_map, dict):
                raise UserError(f"{hub.repo_id}: the weight_map of {index} is not a JSON object")
            for shard in weight_map.values():
                safe_join(out_dir, shard, f"{index} of {hub.repo_id}")
            shards = sorted(set(weight_map.values()))
            missing = [s for s in shards if s not in files]
            if missing:
                raise UserError(f"{hub.repo_id}: {index} names shards the repo does not have: {', '.join(missing)}")
            return [index, *shards]
        if single in files:
            return [single]
        # top-level files only: `original/` and `consolidated.*` hold other formats of the same weights
        loose = sorted(f for f in files if f.endswith(suffix) and "/" not in f and not f.startswith("consolidated"))
        loose = [f for f in loose if f != "training_args.bin"]
        if loose:
            return loose
    raise UserError(f"{hub.repo_id} has no *.safetensors or *.bin weights at the top of the repo")


def _check_architecture(hf_config: dict, repo_id: str) -> None:
    from litgpt_lite.convert.hf_config import architecture_of

    try:
        architecture_of(hf_config)
    except UserError as e:
        raise UserError(f"{repo_id}: {e}") from None


def _token(access_token: str | None) -> str | None:
    if access_token:
        return access_token
    from huggingface_hub import get_token

    return get_token()  # HF_TOKEN, then the token saved by `hf auth login`


# ---------------------------------------------------------------- the Hub
@dataclass
class Hub:
    """One model repo on the Hub at one revision: lists its files and fetches them with resume."""

    repo_id: str
    token: str | None
    revision: str = "main"

    def __post_init__(self) -> None:
        # huggingface_hub reads HF_ENDPOINT when it is imported; read it now so a changed environment counts
        self.endpoint = (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
        self.commit: str | None = None
        self.gated = False
        self.sha256: dict[str, str] = {}
        self._in_memory: dict[str, bytes] = {}  # verified files read by `read_json`, written by `fetch`

    def list_files(self) -> dict[str, int]:
        """{path: size} of every file at the revision; pins the revision to its commit for the fetches."""
        from huggingface_hub import HfApi

        api = HfApi(endpoint=self.endpoint, token=self.token or False)
        with self._errors():
            info = api.model_info(self.repo_id, revision=self.revision, files_metadata=True)
        self.commit = info.sha or self.revision
        self.gated = bool(getattr(info, "gated", False))
        if self.gated and not self.token:
            raise UserError(
                f"{self.repo_id} is gated: accept its license at {self.endpoint}/{self.repo_id}, then pass "
                "--access_token or set HF_TOKEN"
            )
        files = {}
        for sibling in info.siblings or []:
            if not isinstance(sibling.rfilename, str):  # the paths themselves are checked by the caller
                raise UserError(f"The file list of {self.repo_id} on {self.endpoint} names a non-string file")
            files[sibling.rfilename] = sibling.size or 0
            if sibling.lfs is not None:
                self.sha256[sibling.rfilename] = sibling.lfs.sha256
        return files

    def fetch(self, names: list[str], out_dir: Path) -> None:
        """Download `names` into `out_dir`, skipping finished files and resuming partial ones.

        Every name is checked to stay inside `out_dir` before the first one is written.
        """
        dests = {name: safe_join(out_dir, name, f"The file list of {self.repo_id}") for name in names}
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, dest in dests.items():
            if dest.is_file():
                continue
            if name in self._in_memory:
                partial = dest.with_name(dest.name + ".incomplete")
                with self._errors(name):
                    partial.write_bytes(self._in_memory.pop(name))
                    partial.rename(dest)
            else:
                self._fetch_one(name, dest)

    def read_json(self, name: str, out_dir: Path) -> dict:
        """A small JSON file of the repo as a dict, read without writing anything.

        The finished copy in `out_dir` when there is one, else the Hub's bytes, verified and kept in memory until
        `fetch` writes them.
        """
        path = safe_join(out_dir, name, f"The file list of {self.repo_id}")
        local = path.is_file()
        data = path.read_bytes() if local else self._fetch_bytes(name)
        where = path if local else f"{self.repo_id}/{name}"
        try:
            parsed = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{where} is not valid JSON: {e}") from None
        if not isinstance(parsed, dict):
            raise UserError(f"{where} is not a JSON object")
        return parsed

    def _fetch_bytes(self, name: str) -> bytes:
        from huggingface_hub.file_download import http_get
        from huggingface_hub.utils import build_hf_headers

        meta, expected_sha = self._metadata(name)
        if meta.size is not None and meta.size > _MAX_JSON_BYTES:
            raise UserError(f"{self.repo_id}/{name} is {meta.size} bytes, too large for a JSON metadata file")
        buffer = io.BytesIO()
        with self._errors(name):
            http_get(meta.location, buffer, headers=build_hf_headers(token=self.token or False),
                     expected_size=meta.size, displayed_filename=name)  # fmt: skip
        data = buffer.getvalue()
        if (meta.size is not None and len(data) != meta.size) or (
            expected_sha is not None and hashlib.sha256(data).hexdigest() != expected_sha
        ):
            raise UserError(f"{self.repo_id}/{name} does not match the size or sha256 the Hub announces: run again")
        self._in_memory[name] = data
        return data

    def _metadata(self, name: str) -> tuple[HfFileMetadata, str | None]:
        """The file's metadata from the Hub and the sha256 its bytes must have (None when the Hub gives none)."""
        from huggingface_hub import get_hf_file_metadata, hf_hub_url

        url = hf_hub_url(self.repo_id, name, revision=self.commit or self.revision, endpoint=self.endpoint)
        with self._errors(name):
            meta = get_hf_file_metadata(url, token=self.token or False, endpoint=self.endpoint)
        return meta, self.sha256.get(name) or (meta.etag if meta.etag and _SHA256.match(meta.etag) else None)

    def _fetch_one(self, name: str, dest: Path) -> None:
        from huggingface_hub.file_download import http_get
        from huggingface_hub.utils import build_hf_headers

        meta, expected_sha = self._metadata(name)
        partial = dest.with_name(dest.name + ".incomplete")
        headers = build_hf_headers(token=self.token or False)
        for _attempt in range(2):  # a partial file from another revision fails its checksum: start over once
            resume = partial.stat().st_size if partial.is_file() else 0
            if meta.size is not None and resume > meta.size:
                partial.unlink()
                resume = 0
            with self._errors(name), partial.open("ab") as f:
                http_get(meta.location, f, resume_size=resume, headers=headers, expected_size=meta.size,
                         displayed_filename=name)  # fmt: skip
            if _verified(partial, meta.size, expected_sha):
                partial.rename(dest)
                return
            partial.unlink()
        raise UserError(f"{self.repo_id}/{name} does not match the size or sha256 the Hub announces: run again")

    @contextmanager
    def _errors(self, filename: str | None = None) -> Iterator[None]:
        """Turn huggingface_hub's errors into one line that says what to do."""
        from huggingface_hub.errors import (
            GatedRepoError,
            HfHubHTTPError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        where = f"{self.repo_id}/{filename}" if filename else self.repo_id
        try:
            yield
        except GatedRepoError:
            if self.token:
                raise UserError(
                    f"Your token has no access to the gated repo {self.repo_id}: accept its license at "
                    f"{self.endpoint}/{self.repo_id} with the account the token belongs to"
                ) from None
            raise UserError(
                f"{self.repo_id} is gated: accept its license at {self.endpoint}/{self.repo_id}, then pass "
                "--access_token or set HF_TOKEN"
            ) from None
        except RepositoryNotFoundError:
            hint = "" if self.token else " (if it is private, pass --access_token or set HF_TOKEN)"
            raise UserError(f"Repo {self.repo_id} was not found on {self.endpoint}{hint}") from None
        except RevisionNotFoundError:
            raise UserError(f"Repo {self.repo_id} has no revision {self.revision!r}") from None
        except HfHubHTTPError as e:
            status = e.response.status_code if e.response is not None else "?"
            if status == 401:
                message = f"The Hub rejected the token for {where} (HTTP 401): check --access_token / HF_TOKEN"
                raise UserError(message) from None
            if status == 404:
                raise UserError(f"{where} was not found on {self.endpoint} (HTTP 404)") from None
            raise UserError(f"Downloading {where} failed: HTTP {status}") from None
        except _network_errors() as e:
            raise UserError(
                f"Cannot reach {self.endpoint} for {where} ({type(e).__name__}): check your network, HF_ENDPOINT "
                "and HF_HUB_OFFLINE; run again to resume"
            ) from None
        except OSError as e:  # a short read the client could not resume, a full disk, a read-only checkpoint_dir
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise UserError(f"Downloading {where} failed: {reason}. Run again to resume") from None


def _verified(path: Path, size: int | None, sha256: str | None) -> bool:
    if size is not None and path.stat().st_size != size:
        return False
    if sha256 is None:
        return True
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest() == sha256


def _network_errors() -> tuple[type[BaseException], ...]:
    """Connection-level exceptions of the HTTP client huggingface_hub uses (httpx2, httpx or requests)."""
    import importlib

    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module, name in (("httpx2", "TransportError"), ("httpx", "TransportError"), ("requests", "ConnectionError")):
        try:
            errors.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(errors)
