"""License detection: license file text -> SPDX ids, and The Stack v2's permissive / non_permissive / no_license rule.

Detection matches each license's distinctive sentences (its title line with date, its grant, its notice form) on
normalized text, the way ScanCode's rules do, so a short notice ("licensed under the Apache License, Version 2.0")
and the full text both match. An `SPDX-License-Identifier:` line is read as is.

The Stack v2 rule: a file's licenses are those declared for its repository plus those of the license files in its
directory and every parent directory. No license -> `no_license`; all permissive (the Blue Oak Council list) ->
`permissive`; anything else, including a license file we cannot recognize -> `non_permissive`.
"""

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath

UNKNOWN = "LicenseRef-unknown"


@dataclass(frozen=True)
class LicenseRule:
    spdx: str
    any_of: tuple[tuple[str, ...], ...]  # matches when every phrase of one alternative is present
    none_of: tuple[str, ...] = ()  # ...and none of these (tells a license from its stricter sibling)
    implies_not: tuple[str, ...] = ()  # ids this one's text quotes by name without granting them


_GRANT_MIT = "permission is hereby granted free of charge to any person obtaining a copy"
_KEEP_NOTICE_MIT = "the above copyright notice and this permission notice shall be included in all copies"
_GRANT_ISC = "permission to use copy modify and or distribute this software for any purpose with or without fee"
_KEEP_NOTICE_ISC = "provided that the above copyright notice and this permission notice appear in all copies"
_BSD = "redistribution and use in source and binary forms with or without modification are permitted"
_BSD_ENDORSE = ("neither the name", "may not be used to endorse or promote products derived")
_BSD_ADVERTISING = "all advertising materials mentioning features or use of this software"
_FSF = "as published by the free software foundation either version"

RULES: tuple[LicenseRule, ...] = (
    LicenseRule("MIT", ((_GRANT_MIT, _KEEP_NOTICE_MIT),)),
    LicenseRule("MIT-0", ((_GRANT_MIT,),), none_of=(_KEEP_NOTICE_MIT,)),
    LicenseRule("Apache-2.0", (("apache license version 2 0",), ("apache license v2 0",))),
    LicenseRule("BSD-4-Clause", ((_BSD, _BSD_ADVERTISING),)),
    LicenseRule("BSD-3-Clause", ((_BSD, _BSD_ENDORSE[0]), (_BSD, _BSD_ENDORSE[1])), none_of=(_BSD_ADVERTISING,)),
    LicenseRule("BSD-2-Clause", ((_BSD,),), none_of=(*_BSD_ENDORSE, _BSD_ADVERTISING)),
    LicenseRule("ISC", ((_GRANT_ISC, _KEEP_NOTICE_ISC),)),
    LicenseRule("0BSD", ((_GRANT_ISC,),), none_of=(_KEEP_NOTICE_ISC,)),
    LicenseRule("Unlicense", (("this is free and unencumbered software released into the public domain",),)),
    LicenseRule("CC0-1.0", (("cc0 1 0 universal",), ("creativecommons org publicdomain zero 1 0",))),
    LicenseRule(
        "Zlib", (("altered source versions must be plainly marked as such", "this notice may not be removed"),)
    ),
    LicenseRule("BSL-1.0", (("boost software license version 1 0",),)),
    LicenseRule("WTFPL", (("do what the fuck you want to public license",),)),
    LicenseRule("MPL-2.0", (("mozilla public license version 2 0",), ("mozilla public license v 2 0",))),
    LicenseRule("EPL-2.0", (("eclipse public license version 2 0",), ("eclipse public license v 2 0",))),
    LicenseRule(
        "AGPL-3.0",
        (
            ("gnu affero general public license version 3 19 november 2007",),
            (f"gnu affero general public license {_FSF} 3",),
        ),
        implies_not=("GPL-3.0",),
    ),
    LicenseRule(
        "LGPL-3.0",
        (
            ("gnu lesser general public license version 3 29 june 2007",),
            (f"gnu lesser general public license {_FSF} 3",),
        ),
        implies_not=("GPL-3.0",),
    ),
    LicenseRule(
        "LGPL-2.1",
        (
            ("gnu lesser general public license version 2 1 february 1999",),
            (f"gnu lesser general public license {_FSF} 2 1",),
        ),
        implies_not=("GPL-2.0",),
    ),
    LicenseRule(
        "LGPL-2.0",
        (
            ("gnu library general public license version 2 june 1991",),
            (f"gnu library general public license {_FSF} 2",),
        ),
        implies_not=("GPL-2.0",),
    ),
    LicenseRule(
        "GPL-3.0", (("gnu general public license version 3 29 june 2007",), (f"gnu general public license {_FSF} 3",))
    ),
    LicenseRule(
        "GPL-2.0", (("gnu general public license version 2 june 1991",), (f"gnu general public license {_FSF} 2",))
    ),
)

# The Blue Oak Council's permissive list, restricted to what we detect; everything else is non-permissive.
PERMISSIVE = frozenset(
    {"MIT", "MIT-0", "Apache-2.0", "BSD-2-Clause", "BSD-3-Clause", "ISC", "0BSD", "Unlicense", "CC0-1.0", "Zlib"}
    | {"BSL-1.0", "WTFPL", "Python-2.0", "PostgreSQL", "X11", "UPL-1.0", "NCSA", "BlueOak-1.0.0", "MIT-CMU"}
)

# SPDX spells "GPL-2.0" as GPL-2.0-only / GPL-2.0-or-later since 3.0: fold those onto the short ids we report.
_SPDX_SUFFIX = re.compile(r"(-only|-or-later|\+)$")
_SPDX_LINE = re.compile(r"SPDX-License-Identifier:\s*([^\n*]+)", re.IGNORECASE)
_SPDX_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+-]*")
_SPDX_OPERATORS = frozenset({"AND", "OR", "WITH"})
_KNOWN_IDS = {rule.spdx.lower(): rule.spdx for rule in RULES} | {spdx.lower(): spdx for spdx in PERMISSIVE}

# LICENSE, LICENCE.md, LICENSE-MIT, LICENSE.apache, COPYING.LESSER, COPYING3, UNLICENSE, MIT-LICENSE.txt, but not
# license_check.py: a source file about licenses is not a license file.
_TEXT_SUFFIX = r"(\.(md|txt|rst|markdown|html?))?"
_LICENSE_FILE = re.compile(
    rf"^(un)?licen[cs]es?([-_][a-z0-9]+(\.\d+)*)?{_TEXT_SUFFIX}$|^licen[cs]e\.(mit|apache2?|bsd|gpl|lgpl)$"
    rf"|^copying\d?(\.(lesser|lib|gpl|lgpl))?{_TEXT_SUFFIX}$|^[a-z0-9.]+[-_]licen[cs]e{_TEXT_SUFFIX}$",
    re.IGNORECASE,
)


def is_license_file(path: str) -> bool:
    """Whether the file name marks a license file: LICENSE, LICENCE.md, COPYING.LESSER, LICENSE-MIT, UNLICENSE..."""
    return bool(_LICENSE_FILE.match(PurePosixPath(path).name))


def normalize_text(text: str) -> str:
    """Lower-case words separated by single spaces: punctuation, line breaks and comment markers drop out."""
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def normalize_spdx_id(spdx: str) -> str:
    """`gpl-2.0-or-later` -> `GPL-2.0`; ids we do not know are kept as written."""
    base = _SPDX_SUFFIX.sub("", spdx.strip())
    return _KNOWN_IDS.get(base.lower(), base)


def spdx_expression_ids(expression: str) -> list[str]:
    """The license ids of an SPDX expression (`MIT OR (Apache-2.0 WITH LLVM-exception)` -> MIT, Apache-2.0)."""
    ids, skip_next = [], False
    for word in _SPDX_ID.findall(expression):
        if word.upper() == "WITH":
            skip_next = True  # the exception after WITH is not a license
        elif word.upper() not in _SPDX_OPERATORS:
            if not skip_next:
                ids.append(normalize_spdx_id(word))
            skip_next = False
    return ids


def _phrase_in(phrase: str, text: str) -> bool:
    return f" {phrase} " in text


def _matches(rule: LicenseRule, text: str) -> bool:
    if any(_phrase_in(normalize_text(p), text) for p in rule.none_of):
        return False
    return any(all(_phrase_in(normalize_text(p), text) for p in alternative) for alternative in rule.any_of)


def detect_licenses(text: str) -> list[str]:
    """SPDX ids found in a license file's text, sorted; `[LicenseRef-unknown]` for text we cannot recognize."""
    if not text.strip():
        return []
    found = {normalize_spdx_id(i) for line in _SPDX_LINE.findall(text) for i in spdx_expression_ids(line)}
    normalized = f" {normalize_text(text)} "
    matched = [rule for rule in RULES if _matches(rule, normalized)]
    shadowed = {spdx for rule in matched for spdx in rule.implies_not}
    found |= {rule.spdx for rule in matched if rule.spdx not in shadowed}
    return sorted(found) if found else [UNKNOWN]


def license_type(licenses: Iterable[str]) -> str:
    """The Stack v2 class of a set of SPDX ids: `no_license`, `permissive` or `non_permissive`."""
    licenses = set(licenses)
    if not licenses:
        return "no_license"
    return "permissive" if licenses <= PERMISSIVE else "non_permissive"


def licenses_for_path(path: str, license_dirs: dict[str, list[str]], declared: Iterable[str] = ()) -> list[str]:
    """A file's licenses: the repository's declared ones plus those of license files in its directory or above.

    Args:
        path: the file's path inside its repository.
        license_dirs: directory ('' for the root) -> SPDX ids of the license files in it.
        declared: repository-level ids (from the input's `license` field).
    """
    found = set(declared)
    parent = PurePosixPath(path).parent
    for directory in (parent, *parent.parents):
        found.update(license_dirs.get("" if str(directory) == "." else str(directory), ()))
    return sorted(found)


ALLOWED_TYPES = {
    "permissive": frozenset({"permissive"}),
    "permissive+no_license": frozenset({"permissive", "no_license"}),
    "all": frozenset({"permissive", "no_license", "non_permissive"}),
}
