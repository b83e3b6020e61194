#!/bin/bash
# The GPU suite (benchmarks/gpu_suite.py) in at most 8 minutes, setup included, on a GPU machine that reaches no
# package index. Run from the repo root with, in .whl/ (an ignored folder carried to the machine): the wheels of
# litgpt==0.5.13, jsonargparse, docstring_parser, typeshed_client and bitsandbytes (`pip download --no-deps
# --only-binary=:all: --python-version <its python> -d .whl ...` on a machine with network), and .whl/smollm2_tok/
# holding SmolLM2's tokenizer.json, tokenizer_config.json and generation_config.json (the suite's model is random-init;
# only the tokenizer travels). The machine's own Python must already have torch (CUDA), lightning, transformers,
# tokenizers and safetensors. Without a LitGPT wheel the LitGPT columns read "not available".
#   bash benchmarks/gpu.sh                              # writes $OUT/RESULTS_gpu.md (OUT defaults to benchmarks)
#   BUDGET=300 bash benchmarks/gpu.sh --workloads pretrain_compiled,decode_compiled
# Extra arguments go to `run.py --gpu-suite` (see `python benchmarks/run.py --gpu-suite --help`).
set -o pipefail
BUDGET=${BUDGET:-480}  # seconds for everything, this script's setup included
OUT=${OUT:-benchmarks}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export BENCH_TOKENIZER_DIR=$PWD/.whl/smollm2_tok
[ -f "$BENCH_TOKENIZER_DIR/tokenizer.json" ] || { echo "error: $BENCH_TOKENIZER_DIR/tokenizer.json is missing"; exit 1; }
PY=$(python3 -c "import sys; print(sys.executable)")
# run.py wants an interpreter path for LitGPT's side; a wrapper keeps the image's own environment
mkdir -p /tmp/lg
printf '#!/bin/sh\nexec %s "$@"\n' "$PY" >/tmp/lg/python
chmod +x /tmp/lg/python
LITGPT=/tmp/lg/python
/tmp/lg/python -c "import litgpt, lightning" || { echo "LitGPT is not importable: our side only"; LITGPT=/nonexistent; }
python3 -c "import torch, litgpt_lite; assert torch.cuda.is_available(), 'no CUDA device'" || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
LEFT=$((BUDGET - SECONDS - 10))  # 10 s to write the report and exit
echo "setup took ${SECONDS}s; the suite gets ${LEFT}s"
# the suite stops starting workloads when its budget is spent and cuts the last one's timeout to what is left;
# `timeout` is the backstop should anything hang past that
timeout --kill-after=10 $((LEFT + 30)) python3 benchmarks/run.py --gpu-suite --device cuda --litgpt-python "$LITGPT" \
  --assets /tmp/gpu_suite_assets --budget-s "$LEFT" --out "$OUT/RESULTS_gpu.md" "$@"
