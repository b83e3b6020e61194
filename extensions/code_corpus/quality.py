"""StarCoder's basic quality filters: a size cap, max and mean line length, and the alphanumeric fraction.

These catch data files, minified or encoded blobs and binary-ish text that slipped past language detection.
Each threshold is a flag; None switches that filter off.
"""

import re
from dataclasses import dataclass

_NOT_ALNUM = re.compile(r"[\W_]+")
_ASCII_NOT_ALNUM = bytes(b for b in range(128) if not chr(b).isalnum())


@dataclass(frozen=True)
class QualityConfig:
    max_file_size: int | None = 1_000_000  # bytes of UTF-8
    max_line_length: int | None = 1000
    max_mean_line_length: float | None = 100.0
    min_alphanum_fraction: float | None = 0.25


def quality_drop_reason(content: str, size: int, config: QualityConfig) -> str | None:
    """The first filter the file fails (`quality:max_line_length`...), or None when it passes them all."""
    if not content.strip():
        return "quality:empty"
    if config.max_file_size is not None and size > config.max_file_size:
        return "quality:max_file_size"
    lengths = [len(line) for line in content.splitlines()]
    if config.max_line_length is not None and max(lengths) > config.max_line_length:
        return "quality:max_line_length"
    if config.max_mean_line_length is not None and sum(lengths) / len(lengths) > config.max_mean_line_length:
        return "quality:max_mean_line_length"
    if config.min_alphanum_fraction is not None and alphanum_fraction(content) < config.min_alphanum_fraction:
        return "quality:min_alphanum_fraction"
    return None


def alphanum_fraction(content: str) -> float:
    """Share of letters and digits among all characters (whitespace included, as in StarCoder)."""
    if not content:
        return 0.0
    # This runs on every byte of the corpus: count in C, with bytes.translate for the common all-ASCII file.
    if content.isascii():
        return len(content.encode("ascii").translate(None, _ASCII_NOT_ALNUM)) / len(content)
    return len(_NOT_ALNUM.sub("", content)) / len(content)
