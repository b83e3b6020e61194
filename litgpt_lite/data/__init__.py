"""Data modules for `--data`: fine-tuning (JSON, Chat, Instructions), preference pairs (Preference) and pretraining
(TextFiles, TokenShardData, LitData, BundledCorpus)."""

from litgpt_lite.data.base import IGNORE_INDEX, DataContext, DataModule, PackedRows, SampleList, Splits, collate
from litgpt_lite.data.preference import Preference
from litgpt_lite.data.sft import JSON, Chat, Instructions
from litgpt_lite.data.text import BundledCorpus, LitData, TextFiles, TokenShardData

__all__ = [
    "IGNORE_INDEX",
    "JSON",
    "BundledCorpus",
    "Chat",
    "DataContext",
    "DataModule",
    "Instructions",
    "LitData",
    "PackedRows",
    "Preference",
    "SampleList",
    "Splits",
    "TextFiles",
    "TokenShardData",
    "collate",
]
