"""File names that come from outside (a Hub listing, an index file, a GGUF, an archive) made safe to write under.

A name from outside is a relative POSIX path: segments joined by `/`, none of them empty, `.` or `..`, with no
backslash, no NUL byte, no leading `/` and no drive letter. `safe_join` checks that, then resolves the target
(following the symlinks that already exist under the destination, and the destination's own) and refuses one that
would land outside the destination. Call it for every name before the first byte is written.

Imports only `litgpt_lite.errors` (which imports nothing), so any module can use it.
"""

from __future__ import annotations

import re
from pathlib import Path

from litgpt_lite.errors import UserError

_DRIVE = re.compile(r"^[A-Za-z]:")


class UnsafePathError(UserError):
    """A file name from outside that is not a plain relative path inside its destination folder."""


def unsafe_reason(name: object) -> str | None:
    """Why `name` is not a plain relative POSIX path (no filesystem access), or None when it is one."""
    if not isinstance(name, str):
        return "it is not a string"
    if not name:
        return "it is empty"
    if "\0" in name:
        return "it contains a NUL byte"
    if "\\" in name:
        return "it contains a backslash"
    if name.startswith("/"):
        return "it is an absolute path"
    if _DRIVE.match(name):
        return "it starts with a drive letter"
    segments = name.split("/")
    if ".." in segments:
        return "it has a '..' segment"
    if "" in segments:
        return "it has an empty segment"
    if "." in segments:
        return "it has a '.' segment"
    return None


def safe_join(root: str | Path, name: object, source: str) -> Path:
    """`root / name`, once `name` is known to stay inside `root`.

    Args:
        root: the destination folder (it need not exist yet).
        name: the file name as it came from outside.
        source: where the name came from, for the error ("model.safetensors.index.json of org/repo").

    Raises:
        UnsafePathError: one line naming the bad name, its source and the reason.
    """
    reason = unsafe_reason(name)
    if reason is None:
        assert isinstance(name, str)
        real_root = Path(root).resolve()
        target = (real_root / name).resolve()
        if target == real_root or real_root not in target.parents:
            reason = f"it resolves to {target} through a symlink"
    if reason is not None:
        raise UnsafePathError(
            f"{source} names an unsafe file path {name!r} ({reason}): every file must stay inside {root}"
        )
    return Path(root) / name
