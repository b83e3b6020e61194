"""Language detection from file name, extension and shebang, and the vendored / generated file rules.

The table follows GitHub linguist's `languages.yml` in spirit (same language names, the common extensions and file
names, the usual interpreters) without its statistical classifier: where an extension is shared (`.h`, `.m`) one
cheap content check decides, as linguist's heuristics do.
"""

import re
from dataclasses import dataclass
from pathlib import PurePosixPath


@dataclass(frozen=True)
class Language:
    name: str
    extensions: tuple[str, ...] = ()
    filenames: tuple[str, ...] = ()
    interpreters: tuple[str, ...] = ()


LANGUAGES: tuple[Language, ...] = (
    Language("Python", (".py", ".pyi", ".pyw"), ("SConstruct", "SConscript"), ("python", "pypy")),
    Language("JavaScript", (".js", ".mjs", ".cjs", ".jsx"), ("Jakefile",), ("node", "nodejs")),
    Language("TypeScript", (".ts", ".tsx", ".mts", ".cts"), (), ("ts-node", "deno", "bun")),
    Language("Java", (".java",)),
    Language("C", (".c", ".h")),
    Language("C++", (".cpp", ".cc", ".cxx", ".c++", ".hpp", ".hh", ".hxx", ".h++", ".ipp", ".tpp", ".inl")),
    Language("C#", (".cs", ".csx")),
    Language("Go", (".go",)),
    Language("Rust", (".rs",)),
    Language("Ruby", (".rb", ".rake", ".gemspec"), ("Gemfile", "Rakefile", "Vagrantfile", "Guardfile"), ("ruby",)),
    Language("PHP", (".php", ".phtml"), (), ("php",)),
    Language("Swift", (".swift",)),
    Language("Kotlin", (".kt", ".kts")),
    Language("Scala", (".scala", ".sc"), (), ("scala",)),
    Language(
        "Shell", (".sh", ".bash", ".zsh", ".ksh"), (".bashrc", ".zshrc", ".profile"), ("sh", "bash", "zsh", "ksh")
    ),
    Language("PowerShell", (".ps1", ".psm1", ".psd1"), (), ("pwsh", "powershell")),
    Language("Batchfile", (".bat", ".cmd")),
    Language("Perl", (".pl", ".pm"), (), ("perl",)),
    Language("Lua", (".lua",), (), ("lua", "luajit")),
    Language("R", (".r",), (".Rprofile",), ("Rscript",)),
    Language("Julia", (".jl",), (), ("julia",)),
    Language("Haskell", (".hs", ".lhs"), (), ("runhaskell", "runghc")),
    Language("OCaml", (".ml", ".mli"), (), ("ocaml",)),
    Language("F#", (".fs", ".fsi", ".fsx")),
    Language("Elixir", (".ex", ".exs"), (), ("elixir",)),
    Language("Erlang", (".erl", ".hrl"), (), ("escript",)),
    Language("Clojure", (".clj", ".cljs", ".cljc")),
    Language("Dart", (".dart",)),
    Language("Objective-C", (".m", ".mm")),
    Language("MATLAB", ()),  # shares `.m` with Objective-C: chosen by content
    Language("Zig", (".zig",)),
    Language("Nim", (".nim",)),
    Language("Groovy", (".groovy", ".gradle"), ("Jenkinsfile",), ("groovy",)),
    Language("Fortran", (".f90", ".f95", ".f03", ".f08", ".f", ".for")),
    Language("Assembly", (".asm", ".s", ".nasm")),
    Language("Visual Basic .NET", (".vb",)),
    Language("SQL", (".sql",)),
    Language("HTML", (".html", ".htm", ".xhtml")),
    Language("CSS", (".css",)),
    Language("SCSS", (".scss",)),
    Language("Vue", (".vue",)),
    Language("Svelte", (".svelte",)),
    Language("Markdown", (".md", ".markdown")),
    Language("reStructuredText", (".rst",)),
    Language("TeX", (".tex", ".sty")),
    Language("YAML", (".yml", ".yaml")),
    Language("JSON", (".json",)),
    Language("TOML", (".toml",)),
    Language("Protocol Buffer", (".proto",)),
    Language("GraphQL", (".graphql", ".gql")),
    Language("Dockerfile", (".dockerfile",), ("Dockerfile", "Containerfile")),
    Language("Makefile", (".mk", ".mak"), ("Makefile", "GNUmakefile", "makefile")),
    Language("CMake", (".cmake",), ("CMakeLists.txt",)),
)

# Extensions are matched lower-cased: `.R`/`.r` and `.S`/`.s` name the same language in linguist too.
_BY_EXTENSION = {ext: lang.name for lang in LANGUAGES for ext in lang.extensions}
_BY_FILENAME = {name: lang.name for lang in LANGUAGES for name in lang.filenames}
_BY_INTERPRETER = {interp: lang.name for lang in LANGUAGES for interp in lang.interpreters}

# Path patterns after linguist's vendor.yml: dependency trees, bundled third-party code, minified assets.
_VENDORED = re.compile(
    r"(^|/)(vendor|vendors|node_modules|bower_components|third[_-]?party|3rd[_-]?party|Godeps|Pods|Carthage"
    r"|site-packages|\.?venv|__pycache__|\.yarn|dist)/"
    r"|(^|/)jquery([-.][\d.]+)?(\.min)?\.js$"
    r"|[.-]min\.(js|css)$"
)

LOCK_FILES = frozenset(
    {
        "package-lock.json",
        "npm-shrinkwrap.json",
        "yarn.lock",
        "pnpm-lock.yaml",
        "deno.lock",
        "Cargo.lock",
        "poetry.lock",
        "Pipfile.lock",
        "uv.lock",
        "pdm.lock",
        "composer.lock",
        "Gemfile.lock",
        "go.sum",
        "Gopkg.lock",
        "flake.lock",
        "mix.lock",
        "pubspec.lock",
        "Podfile.lock",
        "packages.lock.json",
        "paket.lock",
        "Package.resolved",
        "conan.lock",
    }
)

# Output of code generators, named by convention (protobuf, gRPC, Dart build_runner, WinForms designers).
_GENERATED_NAME = re.compile(
    r"(_pb2(_grpc)?\.pyi?|\.pb\.(go|cc|h|swift)|_grpc\.pb\.go|\.g\.dart|\.freezed\.dart|\.designer\.cs|\.g\.cs)$",
    re.IGNORECASE,
)
# Markers generators put in the first lines (Go's convention, Facebook's @generated, protoc, "auto-generated").
_GENERATED_HEADER = re.compile(
    r"code generated .*do not edit|@generated\b|\bauto-?generated\b|\b(automatically|machine)[ -]generated\b"
    r"|generated by the protocol buffer compiler|\bdo not (edit|modify)\b",
    re.IGNORECASE,
)
_HEADER_LINES = 10
_MINIFIABLE = frozenset({"JavaScript", "CSS", "SCSS", "TypeScript"})
# linguist calls a .js/.css file minified when its mean line length exceeds 110.
_MINIFIED_MEAN_LINE = 110

_CPP_HEADER = re.compile(
    r"^\s*(namespace\b|template\s*<|class\s+\w+\s*[:{]|#include\s*<(iostream|string|vector)>)|std::"
)
_OBJC = re.compile(r"^\s*(@interface|@implementation|@protocol|@end\b|#import\b)", re.MULTILINE)
_MATLAB = re.compile(r"^\s*(function\b.*=|%%?\s|end\s*$)", re.MULTILINE)


def _file_name(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def shebang_interpreter(content: str) -> str | None:
    """The interpreter a `#!` line names (`#!/usr/bin/env python3.11` -> `python3.11`), or None."""
    if not content.startswith("#!"):
        return None
    words = content[2 : content.find("\n") if "\n" in content else None].split()
    if not words:
        return None
    interp = PurePosixPath(words[0]).name
    if interp == "env":  # `#!/usr/bin/env [-S] [VAR=x] python3`
        rest = [w for w in words[1:] if not w.startswith("-") and "=" not in w]
        interp = rest[0] if rest else ""
    return interp or None


def _language_from_interpreter(interp: str) -> str | None:
    # `python3.11` and `python3` resolve like `python`, as linguist strips version suffixes.
    return _BY_INTERPRETER.get(interp) or _BY_INTERPRETER.get(re.sub(r"[\d.]+$", "", interp))


def _disambiguate(language: str, content: str) -> str:
    head = content[:4096]
    if language == "C" and any(_CPP_HEADER.search(line) for line in head.splitlines()):
        return "C++"
    if language == "Objective-C" and not _OBJC.search(head) and _MATLAB.search(head):
        return "MATLAB"
    return language


def detect_language(path: str, content: str) -> str | None:
    """The linguist language name of a file, from its name, extension, then shebang; None when unknown."""
    name = _file_name(path)
    if name in _BY_FILENAME:
        return _BY_FILENAME[name]
    dot = name.rfind(".")
    suffix = name[dot:].lower() if dot > 0 else ""  # a leading dot (".bashrc") names the file, it is no extension
    if suffix in _BY_EXTENSION:
        return _disambiguate(_BY_EXTENSION[suffix], content)
    interp = shebang_interpreter(content)
    return _language_from_interpreter(interp) if interp else None


def is_vendored(path: str) -> bool:
    """Whether the path lies in a dependency tree or is a bundled/minified third-party asset."""
    return bool(_VENDORED.search(path))


def is_generated(path: str, content: str) -> bool:
    """Whether the file is a lock file, named like generator output, or carries a "generated" header."""
    name = _file_name(path)
    if name in LOCK_FILES or _GENERATED_NAME.search(name):
        return True
    head = "\n".join(content[:4096].splitlines()[:_HEADER_LINES]).lower()
    # Substring checks first: the header regex is the slow part, and most files mention neither word.
    return ("generated" in head or "do not" in head) and bool(_GENERATED_HEADER.search(head))


def is_minified(language: str | None, content: str) -> bool:
    """Whether a web asset is minified: few, very long lines."""
    if language not in _MINIFIABLE or len(content) < 1000:
        return False
    return len(content) / max(1, content.count("\n") + 1) > _MINIFIED_MEAN_LINE
