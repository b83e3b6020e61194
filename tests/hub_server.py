"""A local Hugging Face Hub: a real HTTP server (stdlib, one thread) that serves model repos from a folder.

It speaks the part of the Hub protocol that huggingface_hub's downloads use:

- `GET /api/models/{org}/{name}[/revision/{rev}]`: repo info (`sha`, `siblings` with sizes and LFS sha256, `gated`)
- `GET /api/models/{org}/{name}/tree/{rev}`: the file listing `snapshot_download` reads
- `HEAD|GET /{org}/{name}/resolve/{rev}/{path}`: small files directly; weight files (LFS) answer 302 to
  `/cdn/{sha256}` with `X-Linked-Etag` / `X-Linked-Size`, as the Hub does. Every answer carries `X-Repo-Commit`.
- `GET /cdn/{sha256}`: the bytes, with `Range: bytes=N-` answered by 206.

Gated repos answer 401 (no token) or 403 (another token) with `X-Error-Code: GatedRepo` on `resolve`; an
unknown repo answers 404 `RepoNotFound`. No Xet headers are ever sent, so clients use plain HTTP.
Every request is recorded in `server.requests` so tests can assert what was (not) fetched.

Layout of the folder: `<root>/<org>/<name>/<files...>`; `gated_tokens` maps a repo id to the token it accepts.

A hostile endpoint: `listed_files[repo_id] = {name: bytes}` adds files a folder cannot hold (`../../x`, `/abs`,
`a\\b`) to a repo's listings, and serves them at whatever path the client's request for `name` arrives as (HTTP
clients remove the dot segments of a URL: `.../resolve/main/sub/../../x` comes in as `.../resolve/x`).
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".gguf", ".onnx", ".model")


@dataclass
class Request:
    method: str
    path: str
    range: str | None
    authorization: str | None
    file: str | None = None  # the repo file the request was about (resolve or CDN), once known
    status: int | None = None


@dataclass
class Repo:
    root: Path
    files: dict[str, Path | bytes]  # a file of the folder, or the bytes of a listed name no folder can hold
    sha: str
    gated_token: str | None = None
    _sha256: dict[str, str] = field(default_factory=dict)

    def read(self, name: str) -> bytes:
        source = self.files[name]
        return source if isinstance(source, bytes) else source.read_bytes()

    def size(self, name: str) -> int:
        return len(self.read(name))

    def sha256(self, name: str) -> str:
        if name not in self._sha256:
            self._sha256[name] = hashlib.sha256(self.read(name)).hexdigest()
        return self._sha256[name]

    def is_lfs(self, name: str) -> bool:
        return isinstance(name, str) and name.endswith(LFS_SUFFIXES)

    def git_oid(self, name: str) -> str:
        data = self.read(name)
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubServer:
    """Serve the repos under `root` on 127.0.0.1 (a free port); use as a context manager or call `close()`."""

    def __init__(self, root: Path, gated_tokens: dict[str, str] | None = None) -> None:
        self.root = Path(root)
        self.gated_tokens = dict(gated_tokens or {})
        self.requests: list[Request] = []
        self.cut_after: dict[str, int] = {}  # file name -> bytes to send before dropping the next GET of it
        self.listed_files: dict[str, dict[str, bytes]] = {}  # repo id -> {name: bytes}, listed on top of the folder
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_class(self))
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> HubServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- what tests read
    def fetched(self, method: str = "GET") -> list[str]:
        """Repo file names whose bytes (GET) or metadata (HEAD) were asked for, in order (CDN requests included)."""
        return [r.file for r in self.requests if r.method == method and r.file is not None]

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    # ---- repo lookup
    def repo(self, repo_id: str) -> Repo | None:
        folder = self.root / repo_id
        if repo_id.count("/") != 1 or not folder.is_dir():
            return None
        files: dict[str, Path | bytes] = {
            p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()
        }
        files.update(self.listed_files.get(repo_id, {}))
        digest = hashlib.sha1()
        for name, source in files.items():
            size = len(source) if isinstance(source, bytes) else source.stat().st_size
            digest.update(str(name).encode() + b"\0" + str(size).encode() + b"\0")
        return Repo(folder, files, digest.hexdigest(), self.gated_tokens.get(repo_id))

    def record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)


def _handler_class(server: HubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(_HubHandler):
        hub = server

    return Handler


class _HubHandler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:  # keep test output clean
        pass

    def do_HEAD(self) -> None:
        self._route(head=True)

    def do_GET(self) -> None:
        self._route(head=False)

    # ---- routing
    def _route(self, head: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        self.request_log = Request(self.command, path, self.headers.get("Range"), self.headers.get("Authorization"))
        self.hub.record(self.request_log)
        parts = path.strip("/").split("/")
        listed = self._listed_file(path)
        if listed is not None:
            self._resolve(*listed, head)
        elif parts[:2] == ["api", "models"] and len(parts) >= 4:
            self._api(parts[2:], head)
        elif parts[0] == "cdn" and len(parts) == 2:
            self._cdn(parts[1], head)
        elif len(parts) >= 5 and parts[2] == "resolve":
            self._resolve(f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]), head)
        else:
            self._error(404, "EntryNotFound", "Not found", head)

    def _listed_file(self, path: str) -> tuple[str, str, str] | None:
        """(repo id, revision, name) of an extra listed file that a request for `path` asks for, or None."""
        for repo_id, names in self.hub.listed_files.items():
            repo = self.hub.repo(repo_id)
            for name in names if repo is not None else ():
                for revision in ("main", repo.sha):
                    if posixpath.normpath(f"/{repo_id}/resolve/{revision}/{name}") == posixpath.normpath(path):
                        return repo_id, revision, name
        return None

    def _api(self, parts: list[str], head: bool) -> None:
        repo = self.hub.repo("/".join(parts[:2]))
        if repo is None:
            return self._error(404, "RepoNotFound", "Repository not found", head)
        rest = parts[2:]
        if rest[:1] == ["tree"]:
            entries = [self._tree_entry(repo, name) for name in repo.files]
            return self._json(entries, head, repo)
        if rest and rest[0] != "revision":
            return self._error(404, "EntryNotFound", "Not found", head)
        if len(rest) >= 2 and rest[1] not in ("main", repo.sha):
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rest[1]}", head)
        siblings = []
        for name in repo.files:
            sibling = {"rfilename": name, "size": repo.size(name), "blobId": repo.git_oid(name)}
            if repo.is_lfs(name):
                sibling["lfs"] = {"sha256": repo.sha256(name), "size": sibling["size"], "pointerSize": 134}
            siblings.append(sibling)
        info = {
            "_id": repo.sha[:24],
            "id": "/".join(parts[:2]),
            "modelId": "/".join(parts[:2]),
            "sha": repo.sha,
            "private": False,
            "disabled": False,
            "gated": "manual" if repo.gated_token else False,
            "siblings": siblings,
            "tags": [],
        }
        self._json(info, head, repo)

    def _tree_entry(self, repo: Repo, name: str) -> dict:
        size = repo.size(name)
        entry = {"type": "file", "path": name, "size": size, "oid": repo.git_oid(name)}
        if repo.is_lfs(name):
            entry["lfs"] = {"oid": repo.sha256(name), "size": size, "pointerSize": 134}
        return entry

    def _resolve(self, repo_id: str, revision: str, name: str, head: bool) -> None:
        repo = self.hub.repo(repo_id)
        if repo is None:
            return self._error(404, "RepoNotFound", "Repository not found", head)
        if revision not in ("main", repo.sha):
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", head, repo)
        self.request_log.file = name
        if repo.gated_token and not self._authorized(repo, repo_id, head):
            return
        if name not in repo.files:
            return self._error(404, "EntryNotFound", f"Entry not found: {name}", head, repo)
        if repo.is_lfs(name):  # the Hub sends LFS files from its CDN
            size = repo.size(name)
            self.send_response(302)
            self.send_header("Location", f"{self.hub.url}/cdn/{repo.sha256(name)}")
            self.send_header("X-Repo-Commit", repo.sha)
            self.send_header("X-Linked-Etag", f'"{repo.sha256(name)}"')
            self.send_header("X-Linked-Size", str(size))
            self.send_header("ETag", f'"{repo.git_oid(name)}"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._send_file(repo.read(name), name, head, {"X-Repo-Commit": repo.sha, "ETag": f'"{repo.git_oid(name)}"'})

    def _authorized(self, repo: Repo, repo_id: str, head: bool) -> bool:
        auth = self.headers.get("Authorization")
        if auth is None:
            message = f"Access to model {repo_id} is restricted. You must be authenticated to access it."
            self._error(401, "GatedRepo", message, head, repo)
            return False
        if auth != f"Bearer {repo.gated_token}":
            message = f"Access to model {repo_id} is restricted and you are not in the authorized list."
            self._error(403, "GatedRepo", message, head, repo)
            return False
        return True

    def _cdn(self, sha256: str, head: bool) -> None:
        for repo_dir in sorted(p for p in self.hub.root.glob("*/*") if p.is_dir()):
            repo = self.hub.repo(repo_dir.relative_to(self.hub.root).as_posix())
            if repo is None:
                continue
            for name in repo.files:
                if repo.is_lfs(name) and repo.sha256(name) == sha256:
                    self.request_log.file = name
                    return self._send_file(repo.read(name), name, head, {"ETag": f'"{sha256}"'})
        self._error(404, "EntryNotFound", "Not found", head)

    # ---- responses
    def send_response(self, code: int, message: str | None = None) -> None:
        self.request_log.status = code
        super().send_response(code, message)

    def _send_file(self, data: bytes, name: str, head: bool, headers: dict[str, str]) -> None:
        start = _range_start(self.headers.get("Range"))
        if start is not None and start >= len(data):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = data[start or 0 :]
        self.send_response(206 if start else 200)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Accept-Ranges", "bytes")
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if head:
            return
        cut = self.hub.cut_after.pop(name, None) if self.command == "GET" else None
        if cut is not None:  # a dropped connection mid-file: send part of the body, then close
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def _json(self, data, head: bool, repo: Repo | None = None) -> None:
        body = json.dumps(data).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if repo is not None:
            self.send_header("X-Repo-Commit", repo.sha)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _error(self, status: int, code: str, message: str, head: bool, repo: Repo | None = None) -> None:
        body = json.dumps({"error": message}).encode()
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        if repo is not None:
            self.send_header("X-Repo-Commit", repo.sha)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)


def _range_start(header: str | None) -> int | None:
    """The first byte of `Range: bytes=N-` (the only form download clients send), or None."""
    if not header or not header.startswith("bytes="):
        return None
    first = header[len("bytes=") :].split(",")[0].split("-")[0]
    return int(first) if first.isdigit() else None
