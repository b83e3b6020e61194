"""A synthetic multi-repository code corpus with planted cases, for the tests and the benchmark.

Planted: exact duplicates (verbatim and re-indented, in repositories with different star counts); near-duplicate
families (renamed identifiers, reordered functions, edited comments) and unrelated files that share a license
header and imports; every PII kind beside look-alikes that must survive; license files of each kind; vendored,
generated and minified files; opted-out owners and repositories. Secrets are drawn at random on each build, so no
token-shaped string lives in the source tree.
"""

import json
import random
import string
from dataclasses import dataclass, field
from pathlib import Path

_WORDS = (
    "alpha beta cache count delta event field graph handle index join key label merge node offset parse queue "
    "record scale token union value window yield zone buffer client digest encode filter group hash item limit "
    "matrix number order packet query range sample table update vector worker apply build check debug fetch "
    "format gather insert load map normalize open print reduce resolve sort split store train visit wrap batch "
    "chunk cursor frame layer model optim param route score shard state stream task tensor timer trace tree"
).split()

LICENSE_TEXTS = {
    "MIT": "MIT License\n\nCopyright (c) 2024 Jane Roe\n\nPermission is hereby granted, free of charge, to any person "
    'obtaining a copy\nof this software and associated documentation files (the "Software"), to deal in the '
    "Software without restriction.\n\nThe above copyright notice and this permission notice shall be included in "
    'all\ncopies or substantial portions of the Software.\n\nTHE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY.\n',
    "Apache-2.0": "\n                                 Apache License\n                           Version 2.0, January "
    "2004\n                        http://www.apache.org/licenses/\n\n   TERMS AND CONDITIONS FOR USE, "
    "REPRODUCTION, AND DISTRIBUTION\n\n   1. Definitions.\n",
    "BSD-3-Clause": "Copyright (c) 2024, Jane Roe\n\nRedistribution and use in source and binary forms, with or "
    "without\nmodification, are permitted provided that the following conditions are met:\n\n1. Redistributions of "
    "source code must retain the above copyright notice.\n2. Redistributions in binary form must reproduce the above "
    "copyright notice.\n3. Neither the name of the copyright holder nor the names of its\n   contributors may be used "
    "to endorse or promote products derived from\n   this software without specific prior written permission.\n",
    "BSD-2-Clause": "Copyright (c) 2024, Jane Roe\n\nRedistribution and use in source and binary forms, with or "
    "without\nmodification, are permitted provided that the following conditions are met:\n\n1. Redistributions of "
    "source code must retain the above copyright notice.\n2. Redistributions in binary form must reproduce the above "
    "copyright notice.\n",
    "ISC": "ISC License\n\nCopyright (c) 2024 Jane Roe\n\nPermission to use, copy, modify, and/or distribute this "
    "software for any\npurpose with or without fee is hereby granted, provided that the above\ncopyright notice and "
    "this permission notice appear in all copies.\n",
    "Unlicense": "This is free and unencumbered software released into the public domain.\n\nAnyone is free to "
    "copy, modify, publish, use, compile, sell, or\ndistribute this software.\n",
    "CC0-1.0": "Creative Commons Legal Code\n\nCC0 1.0 Universal\n\n    CREATIVE COMMONS CORPORATION IS NOT A LAW "
    "FIRM.\n",
    "MPL-2.0": "Mozilla Public License Version 2.0\n==================================\n\n1. Definitions\n"
    "--------------\n",
    "LGPL-2.1": "                  GNU LESSER GENERAL PUBLIC LICENSE\n                       Version 2.1, February "
    "1999\n\n Copyright (C) 1991, 1999 Free Software Foundation, Inc.\n",
    "LGPL-3.0": "                   GNU LESSER GENERAL PUBLIC LICENSE\n                       Version 3, 29 June "
    "2007\n\n  This version of the GNU Lesser General Public License incorporates\nthe terms and conditions of "
    "version 3 of the GNU General Public\nLicense, supplemented by the additional permissions listed below.\n",
    "GPL-2.0": "                    GNU GENERAL PUBLIC LICENSE\n                       Version 2, June 1991\n\n "
    "Copyright (C) 1989, 1991 Free Software Foundation, Inc.\n",
    "GPL-3.0": "                    GNU GENERAL PUBLIC LICENSE\n                       Version 3, 29 June 2007\n\n  "
    "13. Use with the GNU Affero General Public License.\n",
    "AGPL-3.0": "                    GNU AFFERO GENERAL PUBLIC LICENSE\n                       Version 3, 19 "
    "November 2007\n\n  13. Remote Network Interaction; Use with the GNU General Public License.\n",
    "LicenseRef-unknown": "Copyright (c) 2024 Acme Corp. All rights reserved.\nThis software is proprietary and "
    "confidential. Unauthorized copying is strictly prohibited.\n",
}

_APACHE_HEADER = """# Copyright 2024 The Project Authors. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.

import json
import os
import sys
from typing import Any
"""

# Strings that look like PII but are not, and must come out of the pipeline untouched.
LOOKALIKES = (
    '__version__ = "1.2.3.4"',
    'install_requires = ["fastlib>=2.0.1.3"]',
    'LOCAL_HOST = "127.0.0.1"',
    'GATEWAY = "192.168.1.10"',
    'INTERNAL = "10.0.0.1"',
    'DOC_V6 = "2001:db8::1"',
    'LINK_LOCAL_V6 = "fe80::1"',
    'OID = "1.3.6.1.4.1.311"',
    'user_id = "123e4567-e89b-12d3-a456-426614174000"',
    'session_token = "9f1c2d3e-4b5a-4c7d-8e9f-0a1b2c3d4e5f"',
    'CONTACT = "support@example.com"',
    'ADMIN = "admin@example.org"',
    'RETINA_ICON = "logo@2x.png"',
    'REMOTE = "git@github.com:octo/demo.git"',
    'PINNED = "lodash@4.17.21"',
    'password = "changeme"',
    'api_token = "<YOUR_TOKEN>"',
    'secret = "${APP_SECRET}"',
    'key_file = "/etc/ssl/private/server.key"',
    'DOC_AWS_KEY = "AKIAIOSFODNN7EXAMPLE"',
    'commit = "3f786850e387550fdab836ed7e6dc881de23001b"',
    'STARTED_AT = "12:30:45"',
    'MAC = "00:1a:2b:3c:4d:5e"',
    'sort_key = "created_at_desc"',
    'token_type = "bearer"',
)

LOCKFILE_LOOKALIKE = """{
  "name": "demo",
  "lockfileVersion": 3,
  "packages": {
    "node_modules/lodash": {
      "version": "4.17.21",
      "resolved": "https://registry.npmjs.org/lodash/-/lodash-4.17.21.tgz",
      "integrity": "sha512-v2kDEe57lecTulaDIuNTPy3Ry4gLGJ6Z1O3vE1krgXZNrsQ+LFTGHVxVjcXPs17LhbZVGedAJv8XZ1tvj5FvSg=="
    }
  }
}
"""


@dataclass
class SyntheticCorpus:
    """The records (`{repo, path, content[, license, stars]}`) and the ground truth planted in them."""

    records: list[dict] = field(default_factory=list)
    near_dup_family: dict[tuple[str, str], int] = field(default_factory=dict)  # file -> family, for near-dup pairs
    exact_dup_kept: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)  # dropped copy -> kept
    secrets: list[str] = field(default_factory=list)  # must not survive redaction
    lookalikes: list[str] = field(default_factory=list)  # must survive untouched
    pii_files: list[tuple[str, str]] = field(default_factory=list)
    expected_licenses: dict[tuple[str, str], tuple[str, list[str]]] = field(default_factory=dict)
    expected_drops: dict[tuple[str, str], str] = field(default_factory=dict)  # file -> drop reason
    optout_owners: list[str] = field(default_factory=list)
    optout_repos: list[str] = field(default_factory=list)

    def add(self, repo: str, path: str, content: str, **extra) -> tuple[str, str]:
        self.records.append({"repo": repo, "path": path, "content": content, **extra})
        return repo, path

    def write_jsonl(self, path: Path) -> Path:
        with path.open("w", encoding="utf-8") as f:
            for record in self.records:
                f.write(json.dumps(record) + "\n")
        return path

    def write_tree(self, root: Path) -> Path:
        """Lay the corpus out as <root>/<owner>/<repo>/<path> (stars and declared licenses do not carry over)."""
        for record in self.records:
            file = root / record["repo"] / record["path"]
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_text(record["content"], encoding="utf-8")
        return root

    def write_optout(self, path: Path) -> Path:
        lines = [{"optout_owners": self.optout_owners}, {"optout_repos": self.optout_repos}]
        path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
        return path


class CodeGenerator:
    """Random but code-shaped Python and JavaScript, with identifiers fresh enough that unrelated files share few
    5-word shingles."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def ident(self) -> str:
        return "_".join(self.rng.sample(_WORDS, self.rng.choice((2, 2, 3))))

    def sentence(self, low: int = 6, high: int = 11) -> str:
        return " ".join(self.rng.choice(_WORDS) for _ in range(self.rng.randint(low, high))).capitalize()

    def _py_statement(self, names: list[str]) -> str:
        rng, a, v, n = self.rng, self.rng.choice(names), self.ident(), self.rng.randint(2, 999)
        options = (
            f"{v} = {a} * {n} + {rng.randint(1, 99)}",
            f"{v} = {self.ident()}({a}, {n})",
            f"if {a} > {n}:\n        {v} = {a} - {rng.randint(1, 99)}\n    else:\n        {v} = {n}",
            f"{v} = 0\n    for {self.ident()} in range({n}):\n        {v} += {a}",
            f"# {self.sentence()}\n    {v} = {a}",
            f"{v} = [{self.ident()}(item, {n}) for item in {a}]",
            f'{v} = {{"{self.ident()}": {a}, "{self.ident()}": {n}}}',
        )
        names.append(v)
        return rng.choice(options)

    def py_function(self) -> str:
        args = [self.ident() for _ in range(self.rng.randint(1, 3))]
        names = list(args)
        body = [self._py_statement(names) for _ in range(self.rng.randint(5, 8))]
        lines = [f"def {self.ident()}({', '.join(args)}):", f'    """{self.sentence()}."""']
        return "\n".join(lines + ["    " + s for s in body] + [f"    return {names[-1]}"]) + "\n"

    def js_function(self) -> str:
        args = [self.ident() for _ in range(self.rng.randint(1, 3))]
        lines = [f"function {self.ident()}({', '.join(args)}) {{", f"  // {self.sentence()}"]
        names = list(args)
        for _ in range(self.rng.randint(5, 8)):
            v, a, n = self.ident(), self.rng.choice(names), self.rng.randint(2, 999)
            lines.append(
                self.rng.choice(
                    (
                        f"  const {v} = {a} * {n};",
                        f"  const {v} = {self.ident()}({a}, {n});",
                        f"  let {v} = 0;\n  for (let i = 0; i < {n}; i++) {{ {v} += {a}; }}",
                        f"  const {v} = {a}.map((x) => x + {n});",
                    )
                )
            )
            names.append(v)
        return "\n".join(lines + [f"  return {names[-1]};", "}"]) + "\n"

    def functions(self, count: int, js: bool = False) -> list[str]:
        return [self.js_function() if js else self.py_function() for _ in range(count)]

    def token(self, length: int, alphabet: str = string.ascii_letters + string.digits) -> str:
        return "".join(self.rng.choice(alphabet) for _ in range(length))


def _rename_one(functions: list[str], gen: CodeGenerator) -> list[str]:
    """Rename the first function: its name occurs once, so only a few shingles change."""
    old = functions[0].split("(", 1)[0].split()[-1]
    return [f.replace(old, gen.ident()) for f in functions]


def _edit_comments(functions: list[str], gen: CodeGenerator) -> list[str]:
    """Rewrite the first function's docstring (Python) or leading comment (JavaScript)."""
    lines = functions[0].split("\n")
    lines[1] = f'    """{gen.sentence()}."""' if lines[1].lstrip().startswith('"""') else f"  // {gen.sentence()}"
    return ["\n".join(lines), *functions[1:]]


def _reorder(functions: list[str], gen: CodeGenerator) -> list[str]:
    return functions[1:] + functions[:1]


_VARIANTS = (_rename_one, _edit_comments, _reorder, lambda fs, g: _edit_comments(_rename_one(fs, g), g))


def _add_near_duplicates(corpus: SyntheticCorpus, gen: CodeGenerator, repos: list[str], families: int) -> None:
    for family in range(families):
        js = family % 3 == 2
        base = gen.functions(gen.rng.randint(4, 6), js=js)
        members = [base] + [variant(base, gen) for variant in gen.rng.sample(_VARIANTS, gen.rng.randint(1, 3))]
        ext = "js" if js else "py"
        for member, repo in zip(members, gen.rng.sample(repos, len(members))):
            key = corpus.add(repo, f"src/{gen.ident()}_{family}.{ext}", "\n\n".join(member))
            corpus.near_dup_family[key] = family


def _add_boilerplate_siblings(corpus: SyntheticCorpus, gen: CodeGenerator, repos: list[str], count: int) -> None:
    """Unrelated files that share a license header and imports: not near duplicates."""
    for i in range(count):
        content = _APACHE_HEADER + "\n\n" + "\n\n".join(gen.functions(gen.rng.randint(3, 5)))
        corpus.add(gen.rng.choice(repos), f"lib/common_{i}.py", content)


def _add_exact_duplicates(corpus: SyntheticCorpus, gen: CodeGenerator) -> None:
    for i in range(4):
        content = "\n\n".join(gen.functions(4))
        low = corpus.add("dup-low/tools", f"util_{i}.py", content, stars=3)
        high = corpus.add("dup-high/tools", f"helpers/util_{i}.py", content, stars=900)
        # Re-indented with tabs and trailing spaces: the same after whitespace normalization.
        reindented = content.replace("    ", "\t").replace("\n", "  \n")
        mid = corpus.add("dup-mid/tools", f"copy_{i}.py", reindented, stars=40)
        corpus.exact_dup_kept[low] = corpus.exact_dup_kept[mid] = high
    for repo in ("dup-low/tools", "dup-mid/tools", "dup-high/tools"):
        corpus.add(repo, "LICENSE", LICENSE_TEXTS["MIT"], stars=0)


def _pii_file(corpus: SyntheticCorpus, gen: CodeGenerator) -> str:
    def secret(value: str) -> str:
        corpus.secrets.append(value)
        return value

    b64 = string.ascii_letters + string.digits + "+/"
    key_lines = "\n".join(gen.token(64, b64) for _ in range(6))
    private_key = f"-----BEGIN RSA PRIVATE KEY-----\n{key_lines}\n-----END RSA PRIVATE KEY-----"
    planted = [
        f'AUTHOR_EMAIL = "{secret("alice.smith@acme-corp.io")}"',
        f"# Maintainer: Bob Jones <{secret('bob+dev@mailinator.net')}>",
        f'DNS_SERVER = "{secret("34.117.59.81")}"',
        f'UPSTREAM_V6 = "{secret("2606:4700:4700::1111")}"',
        f'AWS_ACCESS_KEY_ID = "{secret("AKIA" + gen.token(16, string.ascii_uppercase + string.digits))}"',
        f'GITHUB_TOKEN = "{secret("ghp_" + gen.token(36))}"',
        f'SLACK_BOT = "{secret("xoxb-" + gen.token(12, string.digits) + "-" + gen.token(24))}"',
        f'api_key = "{secret(gen.token(32))}"',
        f'CONFIG = {{"client_secret": "{secret(gen.token(40, "0123456789abcdef"))}"}}',
        f'db_password = "{secret("Xk9#mP2$vL7q!")}"',
        f'PRIVATE_KEY = """{secret(private_key)}"""',
    ]
    corpus.lookalikes.extend(LOOKALIKES)
    body = "\n".join(planted[:6] + list(LOOKALIKES) + planted[6:])
    return body + "\n\n\n" + "\n\n".join(gen.functions(2))


def _add_pii(corpus: SyntheticCorpus, gen: CodeGenerator) -> None:
    corpus.add("pii-org/service", "LICENSE", LICENSE_TEXTS["MIT"])
    corpus.pii_files.append(corpus.add("pii-org/service", "settings.py", _pii_file(corpus, gen)))
    content = "\n\n".join(gen.functions(3)) + f"\n\n# Contact {corpus.secrets[0]} or ping 34.117.59.81\n"
    corpus.pii_files.append(corpus.add("pii-org/service", "client.py", content))


def _add_license_repos(corpus: SyntheticCorpus, gen: CodeGenerator) -> None:
    def repo(name: str, files: dict[str, str], expected: tuple[str, list[str]], **extra) -> None:
        for path, text in files.items():
            corpus.add(f"lic/{name}", path, text, **extra)
        key = corpus.add(f"lic/{name}", "main.py", "\n\n".join(gen.functions(3)), **extra)
        corpus.expected_licenses[key] = expected

    for spdx in ("MIT", "Apache-2.0", "BSD-3-Clause", "BSD-2-Clause", "ISC", "Unlicense", "CC0-1.0"):
        repo(spdx.lower(), {"LICENSE": LICENSE_TEXTS[spdx]}, ("permissive", [spdx]))
    for spdx, name in (("MPL-2.0", "LICENSE"), ("LGPL-2.1", "COPYING.LESSER"), ("LGPL-3.0", "COPYING.LESSER")):
        repo(spdx.lower(), {name: LICENSE_TEXTS[spdx]}, ("non_permissive", [spdx]))
    for spdx, name in (("GPL-2.0", "COPYING"), ("GPL-3.0", "LICENSE.md"), ("AGPL-3.0", "LICENSE.txt")):
        repo(spdx.lower(), {name: LICENSE_TEXTS[spdx]}, ("non_permissive", [spdx]))
    repo("proprietary", {"LICENSE": LICENSE_TEXTS["LicenseRef-unknown"]}, ("non_permissive", ["LicenseRef-unknown"]))
    repo("none", {}, ("no_license", []))
    dual = {"LICENSE-MIT": LICENSE_TEXTS["MIT"], "LICENSE-APACHE": LICENSE_TEXTS["Apache-2.0"]}
    repo("dual", dual, ("permissive", ["Apache-2.0", "MIT"]))
    repo("declared-mit", {}, ("permissive", ["MIT"]), license="MIT")
    repo("declared-gpl", {}, ("non_permissive", ["GPL-3.0"]), license="GPL-3.0-or-later")
    # A GPL subdirectory inside an MIT repository: the subdirectory's files carry both.
    repo(
        "mixed", {"LICENSE": LICENSE_TEXTS["MIT"], "contrib/LICENSE": LICENSE_TEXTS["GPL-3.0"]}, ("permissive", ["MIT"])
    )
    key = corpus.add("lic/mixed", "contrib/plugin.py", "\n\n".join(gen.functions(3)))
    corpus.expected_licenses[key] = ("non_permissive", ["GPL-3.0", "MIT"])


def _add_dropped_files(corpus: SyntheticCorpus, gen: CodeGenerator, repo: str) -> None:
    def drop(path: str, content: str, reason: str) -> None:
        corpus.expected_drops[corpus.add(repo, path, content)] = reason

    js = "\n".join(gen.functions(3, js=True))
    drop("node_modules/lodash/index.js", js, "vendored")
    drop("vendor/github.com/pkg/errors/errors.go", "package errors\n\nfunc New() error { return nil }\n", "vendored")
    drop("static/jquery-3.7.1.min.js", js, "vendored")
    drop("web/bundle.js", "var " + ",".join(f"{gen.ident()}={i}" for i in range(300)) + ";", "minified")
    drop("package-lock.json", LOCKFILE_LOOKALIKE, "generated")
    drop("yarn.lock", 'lodash@^4.17.21:\n  version "4.17.21"\n', "generated")
    drop("proto/api_pb2.py", "\n".join(gen.functions(2)), "generated")
    drop("api/api.pb.gw.go", "// Code generated by protoc-gen-grpc-gateway. DO NOT EDIT.\npackage api\n", "generated")
    drop("tools/gen.py", "# @generated by tools/make_tables.py\n" + "\n".join(gen.functions(2)), "generated")
    drop("assets/logo.bin.txt", "x" * 40 + "\n", "unsupported_language")
    drop("data/blob.py", "\n".join("B = '" + gen.token(150) + "'" for _ in range(20)), "quality:max_mean_line_length")
    drop("data/long.py", "x = 1\n" + "y = '" + "a" * 1200 + "'\n", "quality:max_line_length")
    drop("art/banner.py", "\n".join("#" + "=-+*" * 20 for _ in range(10)), "quality:min_alphanum_fraction")


def _add_polyglot(corpus: SyntheticCorpus, gen: CodeGenerator, repo: str) -> None:
    c_like = {
        "main.go": "Go",
        "lib.rs": "Rust",
        "App.java": "Java",
        "util.c": "C",
        "vec.hpp": "C++",
        "Program.cs": "C#",
        "index.ts": "TypeScript",
        "View.swift": "Swift",
        "Main.kt": "Kotlin",
        "app.php": "PHP",
    }
    for path in c_like:
        corpus.add(repo, f"poly/{path}", "\n".join(gen.functions(3, js=True)))
    corpus.add(repo, "poly/run", "#!/usr/bin/env python3\n" + "\n\n".join(gen.functions(3)))
    corpus.add(repo, "poly/build.sh", "#!/bin/bash\nset -euo pipefail\n" + f"echo {gen.sentence()}\n" * 5)


def generate_corpus(seed: int = 0, num_repos: int = 12, families: int = 40, siblings: int = 40) -> SyntheticCorpus:
    """The planted corpus. `num_repos`, `families` and `siblings` scale the bulk of ordinary files."""
    gen = CodeGenerator(seed)
    corpus = SyntheticCorpus()
    repos = [f"org{i}/lib{i}" for i in range(num_repos)]
    for i, repo in enumerate(repos):
        corpus.add(repo, "LICENSE", LICENSE_TEXTS[("MIT", "Apache-2.0", "BSD-3-Clause")[i % 3]], stars=i * 10)
        corpus.add(repo, "README.md", f"# {repo}\n\n{gen.sentence(20, 30)}.\n", stars=i * 10)
    _add_near_duplicates(corpus, gen, repos, families)
    _add_boilerplate_siblings(corpus, gen, repos, siblings)
    _add_exact_duplicates(corpus, gen)
    _add_pii(corpus, gen)
    _add_license_repos(corpus, gen)
    _add_dropped_files(corpus, gen, repos[0])
    _add_polyglot(corpus, gen, repos[1])
    corpus.optout_owners = ["optout-owner"]
    corpus.optout_repos = ["someone/private-repo"]
    for repo in ("optout-owner/alpha", "optout-owner/beta", "someone/private-repo"):
        corpus.add(repo, "LICENSE", LICENSE_TEXTS["MIT"])
        corpus.expected_drops[corpus.add(repo, "core.py", "\n\n".join(gen.functions(3)))] = "optout"
    corpus.add("someone/public-repo", "LICENSE", LICENSE_TEXTS["MIT"])
    corpus.add("someone/public-repo", "core.py", "\n\n".join(gen.functions(3)))
    return corpus
