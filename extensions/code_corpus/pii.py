"""PII redaction: emails, public IP addresses and secrets become typed placeholders.

Detectors, in the spirit of BigCode's StarPII regex baseline and detect-secrets' keyword plugin:
- emails, except documentation domains (example.com, RFC 2606 TLDs), ssh remotes (`git@host`) and `icon@2x.png`;
- IPv4/IPv6 addresses that are globally routable (private, loopback, link-local and documentation ranges stay),
  except dotted numbers that read as versions (`__version__ = "1.2.3.4"`, `pkg>=2.0.0.1`);
- secrets with a known shape (AWS access key ids, GitHub, Slack, Stripe, Google and npm tokens, private key blocks);
- high-entropy strings assigned to names ending in key/secret/token/password, except UUIDs, versions, paths, URLs
  and placeholders (`<your-token>`, `${SECRET}`, `changeme`).
"""

import ipaddress
import math
import re
import string
from collections import Counter
from typing import NamedTuple

PLACEHOLDERS = {"EMAIL": "<EMAIL>", "IP_ADDRESS": "<IP_ADDRESS>", "KEY": "<KEY>", "PASSWORD": "<PASSWORD>"}


class Span(NamedTuple):
    start: int
    end: int
    kind: str  # a key of PLACEHOLDERS


_EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@((?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24})"
    r"(?![\w-])"
)
_DOC_DOMAINS = ("example.com", "example.org", "example.net")
_DOC_TLDS = frozenset({"example", "test", "invalid", "localhost", "local"})
# `icon@2x.png`, `font@latest.js`: an asset name, not an address.
_FILE_TLDS = frozenset({"png", "jpg", "jpeg", "gif", "svg", "webp", "ico", "js", "ts", "css", "py", "json", "html"})

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?!\w|\.\w)")
# Anchors that start with a literal, so re skips from one "." or ":" to the next instead of trying every position;
# the full pattern (IPv4) or the `ipaddress` parser (IPv6) then checks the few places they hit.
_IPV4_ANCHOR = re.compile(r"\.\d{1,3}\.\d{1,3}\.\d{1,3}")
_IPV6_ANCHOR = re.compile(r":[0-9A-Fa-f]{0,4}:")
_HEX_OR_COLON = frozenset("0123456789abcdefABCDEF:")
_GLOBAL_UNICAST_V6 = ipaddress.IPv6Network("2000::/3")
# What precedes a dotted number that is no address: the words version/release/section, a requirement operator,
# npm's `pkg@`, or a `v` prefix.
_VERSION_CONTEXT = re.compile(r"version|release|section|(==|>=|<=|~=|!=|\^|~|@|\bv)\s*$", re.IGNORECASE)

# Secrets with a known shape, each behind a literal that must appear first: a substring test is far cheaper than
# running every pattern over every file.
_KNOWN_SECRETS = (
    (
        "PRIVATE KEY",
        r"-----BEGIN [A-Z ]*PRIVATE KEY(?: BLOCK)?-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY(?: BLOCK)?-----",
    ),
    ("PRIVATE KEY", r"-----BEGIN [A-Z ]*PRIVATE KEY(?: BLOCK)?-----(?:(?:\\n|\r?\n)[A-Za-z0-9+/=:, -]+)+"),  # truncated
    ("AKIA", r"\bAKIA[0-9A-Z]{16}\b"),  # AWS access key id
    ("ASIA", r"\bASIA[0-9A-Z]{16}\b"),  # AWS temporary access key id
    ("gh", r"\bgh[pousr]_[A-Za-z0-9]{36,255}\b|\bgithub_pat_[A-Za-z0-9_]{22,255}\b"),  # GitHub
    ("xox", r"\bxox[abposr]-[A-Za-z0-9-]{10,250}\b"),  # Slack tokens
    ("hooks.slack.com", r"https://hooks\.slack\.com/services/[A-Za-z0-9/]{20,}"),  # Slack webhooks
    ("k_live_", r"\b[sr]k_live_[A-Za-z0-9]{20,}\b"),  # Stripe
    ("AIza", r"\bAIza[0-9A-Za-z_-]{35}\b"),  # Google API key
    ("npm_", r"\bnpm_[A-Za-z0-9]{36}\b"),  # npm
)
_KNOWN_SECRETS_COMPILED = tuple((literal, re.compile(pattern)) for literal, pattern in _KNOWN_SECRETS)

# Assignments are found from the end of the name: a secret-like last word, an optional closing quote, an operator
# (`=`, `:`, `:=`, `=>`). Anchoring on the word keeps the scan linear; the full name is read backwards from there.
_SECRET_NAME_END_PATTERN = (
    r"(?P<word>apikey|key|keys|secret|secrets|token|tokens|credentials?|password|passwd|pwd|pass|passphrase|passcode)"
    r"[\"']?[ \t]*(?::=|=>|[:=])[ \t]*"
)
# Matching lower-case literals on lower-cased text is ~10x faster than IGNORECASE, which defeats re's prefix scan.
_SECRET_NAME_END = re.compile(_SECRET_NAME_END_PATTERN)
_SECRET_NAME_END_ANY_CASE = re.compile(_SECRET_NAME_END_PATTERN, re.IGNORECASE)
# `"value"`, `'value'`, `` `value` ``, or an unquoted token (.env files, YAML) ending the word.
_VALUE = re.compile(
    r"(?P<q>[\"'`])(?P<quoted>[^\"'`\n\\]{1,512})(?P=q)|(?P<bare>[A-Za-z0-9+/=_-]{16,512})(?=[\s,;]|$)", re.MULTILINE
)
_NAME_CHARS = frozenset(string.ascii_letters + string.digits + "_$.-")
_PASSWORD_WORDS = frozenset({"password", "passwd", "pwd", "pass", "passphrase", "passcode"})
_KEY_WORDS = frozenset({"key", "keys", "apikey", "secret", "secrets", "token", "tokens", "credential", "credentials"})
_NAME_WORD = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")

_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.IGNORECASE)
_VERSION = re.compile(r"^v?\d+(\.\d+)+([-+.][\w.]*)?$")
_PLACEHOLDER = re.compile(
    r"^(x+|\*+|\.+|<[^>]*>|\{\{.*\}\}|\$\{.*\}|\$\w+|%\(\w+\)s|%s)$|example|changeme|placeholder|dummy|redacted|your[_-]"
    r"|xxxx|replace[_-]?me|insert[_-]",
    re.IGNORECASE,
)
_PATH_OR_URL = re.compile(r"://|^[./~]|\\|\.[A-Za-z]{1,5}$")


def shannon_entropy(text: str) -> float:
    """Bits per character of the string's own character distribution."""
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in Counter(text).values()) if n else 0.0


def _char_classes(text: str) -> int:
    # `_`, `-` and `.` join words in identifiers, so they do not count as a symbol class.
    checks = (str.islower, str.isupper, str.isdigit, lambda c: not c.isalnum() and c not in "_-.")
    return sum(any(check(c) for c in text) for check in checks)


def looks_like_secret(value: str, kind: str) -> bool:
    """Whether a string assigned to a key/password name reads as a real secret rather than a name or placeholder."""
    if any(c.isspace() for c in value) or _PLACEHOLDER.search(value) or _UUID.match(value) or _VERSION.match(value):
        return False
    if kind == "PASSWORD":
        return len(value) >= 8 and _char_classes(value) >= 2 and shannon_entropy(value) >= 3.0
    has_letter_and_digit = any(c.isalpha() for c in value) and any(c.isdigit() for c in value)
    return (
        len(value) >= 16 and has_letter_and_digit and not _PATH_OR_URL.search(value) and shannon_entropy(value) >= 3.3
    )


def secret_kind_of_name(name: str) -> str | None:
    """`db_password` -> PASSWORD, `awsSecretAccessKey` -> KEY, `key_file` -> None (the last word decides)."""
    words = _NAME_WORD.findall(re.split(r"[.$]", name)[-1])
    last = words[-1].lower() if words else ""
    if last in _PASSWORD_WORDS:
        return "PASSWORD"
    return "KEY" if last in _KEY_WORDS else None


def find_emails(content: str) -> list[Span]:
    if "@" not in content:
        return []
    spans = []
    for m in _EMAIL.finditer(content):
        domain = m.group(1).lower()
        tld = domain.rsplit(".", 1)[-1]
        documentation = domain in _DOC_DOMAINS or domain.endswith(tuple("." + d for d in _DOC_DOMAINS))
        if documentation or tld in _DOC_TLDS or tld in _FILE_TLDS or m.group(0).startswith("git@"):
            continue
        spans.append(Span(m.start(), m.end(), "EMAIL"))
    return spans


def _reads_as_version(content: str, start: int) -> bool:
    line_start = content.rfind("\n", 0, start) + 1
    return bool(_VERSION_CONTEXT.search(content[max(line_start, start - 40) : start]))


def _ipv4_spans(content: str) -> list[Span]:
    spans: list[Span] = []
    for anchor in _IPV4_ANCHOR.finditer(content):
        first_octet = anchor.start()
        while first_octet > max(0, anchor.start() - 3) and content[first_octet - 1].isdigit():
            first_octet -= 1
        m = _IPV4.match(content, first_octet)
        if m is None or (spans and m.start() < spans[-1].end):
            continue
        address = ipaddress.IPv4Address(m.group(0))
        if address.is_global and not address.is_multicast and not _reads_as_version(content, m.start()):
            spans.append(Span(m.start(), m.end(), "IP_ADDRESS"))
    return spans


def _ipv6_spans(content: str) -> list[Span]:
    spans: list[Span] = []
    end = 0
    for anchor in _IPV6_ANCHOR.finditer(content):
        if anchor.start() < end:
            continue  # inside the run already checked
        start, end = anchor.start(), anchor.end()
        while start > 0 and content[start - 1] in _HEX_OR_COLON:
            start -= 1
        while end < len(content) and content[end] in _HEX_OR_COLON:
            end += 1
        before, after = content[start - 1 : start], content[end : end + 1]
        if (before and (before.isalnum() or before in "_.")) or (after and (after.isalnum() or after == "_")):
            continue  # part of a longer token: `std::vector`, `a:b:c.d`
        try:
            address = ipaddress.IPv6Address(content[start:end])
        except ValueError:
            continue  # `12:30:45`, MAC addresses, `a::b::c`: colons, not an address
        if address in _GLOBAL_UNICAST_V6 and address.is_global:
            spans.append(Span(start, end, "IP_ADDRESS"))
    return spans


def find_ip_addresses(content: str) -> list[Span]:
    return _ipv4_spans(content) + _ipv6_spans(content)


def _known_secrets(content: str) -> list[Span]:
    return [
        Span(m.start(), m.end(), "KEY")
        for literal, pattern in _KNOWN_SECRETS_COMPILED
        if literal in content
        for m in pattern.finditer(content)
        if "EXAMPLE" not in m.group(0)  # AWS's documented sample key, AKIAIOSFODNN7EXAMPLE
    ]


def _assigned_secrets(content: str) -> list[Span]:
    spans = []
    lower = content.lower()
    # Offsets in `lower` are offsets in `content` unless lower-casing grew a character (e.g. "İ").
    matches = (
        _SECRET_NAME_END.finditer(lower) if len(lower) == len(content) else _SECRET_NAME_END_ANY_CASE.finditer(content)
    )
    for m in matches:
        name_start = m.start("word")
        while name_start > 0 and content[name_start - 1] in _NAME_CHARS:
            name_start -= 1
        kind = secret_kind_of_name(content[name_start : m.end("word")])
        value = _VALUE.match(content, m.end()) if kind else None
        if value is None:
            continue
        group = "quoted" if value.group("quoted") is not None else "bare"
        if looks_like_secret(value.group(group), kind):
            spans.append(Span(value.start(group), value.end(group), kind))
    return spans


def find_secrets(content: str) -> list[Span]:
    return _known_secrets(content) + _assigned_secrets(content)


def find_pii(content: str) -> list[Span]:
    """Non-overlapping PII spans, sorted; where two overlap, the earlier (then longer) wins."""
    candidates = sorted(
        find_secrets(content) + find_emails(content) + find_ip_addresses(content),
        key=lambda s: (s.start, -(s.end - s.start), s.kind),
    )
    spans: list[Span] = []
    for span in candidates:
        if not spans or span.start >= spans[-1].end:
            spans.append(span)
    return spans


def redact(content: str) -> tuple[str, dict[str, int]]:
    """The content with every PII span replaced by its placeholder, and the count of each kind."""
    spans = find_pii(content)
    pieces, last = [], 0
    for span in spans:
        pieces += [content[last : span.start], PLACEHOLDERS[span.kind]]
        last = span.end
    pieces.append(content[last:])
    counts = {kind: 0 for kind in PLACEHOLDERS}
    for span in spans:
        counts[span.kind] += 1
    return "".join(pieces), counts
