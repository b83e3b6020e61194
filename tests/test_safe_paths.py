"""safe_join: a file name from outside lands inside its folder or is refused, on the real filesystem (symlinks too)."""

import re
from pathlib import Path

import pytest

from litgpt_lite.errors import UserError
from litgpt_lite.safe_paths import UnsafePathError, safe_join, unsafe_reason


@pytest.mark.parametrize(
    "name",
    [
        "config.json",
        "original/params.json",
        "a b/c d.safetensors",
        "..x",
        "x..",
        ".hidden",
        "a/.b/..c",
        "model-00001-of-00002.safetensors",
        "ünï/cødé.json",
    ],
)
def test_plain_relative_names_are_joined(tmp_path, name):
    assert unsafe_reason(name) is None
    assert safe_join(tmp_path / "out", name, "test") == tmp_path / "out" / name  # the folder need not exist


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("../x", "it has a '..' segment"),
        ("sub/../../x", "it has a '..' segment"),
        ("a/..", "it has a '..' segment"),
        ("..", "it has a '..' segment"),
        ("/etc/passwd", "it is an absolute path"),
        ("//server/share", "it is an absolute path"),
        ("..\\x", "it contains a backslash"),
        ("a\\b", "it contains a backslash"),
        ("C:/Windows/x", "it starts with a drive letter"),
        ("c:x", "it starts with a drive letter"),
        ("a//b", "it has an empty segment"),
        ("a/", "it has an empty segment"),
        ("./x", "it has a '.' segment"),
        ("a/./b", "it has a '.' segment"),
        (".", "it has a '.' segment"),
        ("", "it is empty"),
        ("a\0b", "it contains a NUL byte"),
        (5, "it is not a string"),
        (None, "it is not a string"),
        (["a"], "it is not a string"),
    ],
)
def test_unsafe_names_are_refused_in_one_line(tmp_path, name, reason):
    assert unsafe_reason(name) == reason
    with pytest.raises(UnsafePathError) as info:
        safe_join(tmp_path, name, "index.json of org/repo")
    expected = f"index.json of org/repo names an unsafe file path {name!r} ({reason}): every file must stay inside "
    assert str(info.value) == expected + str(tmp_path)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, UserError)  # the CLI prints it as one line with exit code 2
    assert list(tmp_path.iterdir()) == []


def test_a_symlink_under_the_folder_that_leads_outside_is_refused(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "sub").symlink_to(outside)
    (root / "file").symlink_to(outside / "file")
    (root / "inner").symlink_to(root / "real")  # a symlink that stays inside is fine

    with pytest.raises(UnsafePathError, match=re.escape(f"'sub/x' (it resolves to {outside / 'x'} through a symlink)")):
        safe_join(root, "sub/x", "test")
    with pytest.raises(UnsafePathError, match="'file' \\(it resolves to .* through a symlink\\)"):
        safe_join(root, "file", "test")
    assert safe_join(root, "inner/x", "test") == root / "inner" / "x"


def test_a_symlinked_folder_is_followed_first(tmp_path):
    """A checkpoint folder that is itself a symlink (to a bigger disk) is the folder: names stay inside its target."""
    real = tmp_path / "disk" / "checkpoints"
    real.mkdir(parents=True)
    link = tmp_path / "checkpoints"
    link.symlink_to(real)

    assert safe_join(link / "org" / "name", "config.json", "test") == link / "org" / "name" / "config.json"
    with pytest.raises(UnsafePathError):
        safe_join(link, "../disk/x", "test")


def test_the_folder_itself_is_not_a_file_name(tmp_path):
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (root / "a" / "up").symlink_to(root)
    with pytest.raises(UnsafePathError, match="resolves to .* through a symlink"):
        safe_join(root, "a/up", "test")
    assert safe_join(Path(str(root)), "a/up/x", "test") == root / "a" / "up" / "x"
