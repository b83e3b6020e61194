"""Bundled lm-eval tasks (YAML + JSONL) that run offline; `litgpt_lite evaluate` always includes them."""
