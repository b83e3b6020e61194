#!/bin/bash
# The runner on a GPU machine that reaches no package index (how RESULTS_gpu.md was made). Run from the repo root
# with, in .whl/: the wheels of litgpt==0.5.13, jsonargparse, docstring_parser, typeshed_client and bitsandbytes
# (`pip download --no-deps --only-binary=:all: --python-version <its python> -d .whl ...` on a machine with network),
# and .whl/smollm2_tok/ holding SmolLM2's tokenizer.json, tokenizer_config.json, generation_config.json, config.json.
# The machine's own Python must already have torch, lightning, transformers, tokenizers and safetensors.
# Extra arguments go to run.py, e.g.:  bash benchmarks/gpu_offline.sh --workloads lora,sft_full --full --steps 10
set -o pipefail
OUT=${OUT:-benchmarks}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export BENCH_TOKENIZER_DIR=$PWD/.whl/smollm2_tok
PY=$(python3 -c "import sys; print(sys.executable)")
# run.py wants an interpreter path with a `litgpt` command beside it; wrappers keep the image's own venv active
mkdir -p /tmp/lg
printf '#!/bin/sh\nexec %s "$@"\n' "$PY" >/tmp/lg/python
printf '#!/bin/sh\nexec %s -c "import sys; from litgpt.__main__ import main; sys.argv[0]=\x27litgpt\x27; sys.exit(main())" "$@"\n' \
  "$PY" >/tmp/lg/litgpt
chmod +x /tmp/lg/python /tmp/lg/litgpt
/tmp/lg/python -c "import litgpt, lightning" || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 benchmarks/run.py --device cuda --litgpt-python /tmp/lg/python --assets /tmp/assets --timeout 280 \
  --out "$OUT/RESULTS_gpu.md" "$@"
