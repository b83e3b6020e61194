"""Throughput of `prepare_code` on a synthetic corpus: files/s and MB/s, overall and per phase.

    python benchmarks/code_corpus_bench.py --scale 40 --num_workers 2

The corpus is the test suite's planted corpus grown by `--scale` (more repositories, near-duplicate families and
boilerplate-sharing files), written as JSONL. Phases: `filter` (read + language, quality, hashes, MinHash: the
parallel map), `dedup` (licenses, exact and near dedup: global, one process), `write` (re-read, PII redaction:
parallel, and the JSONL shards).
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from extensions.code_corpus.pipeline import PipelineConfig, run_pipeline  # noqa: E402
from extensions.code_corpus.sources import load_optout  # noqa: E402
from extensions.code_corpus.synthetic import generate_corpus  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=int, default=40, help="corpus size multiplier (1 = the test corpus)")
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2, help="runs; the fastest is reported")
    args = parser.parse_args()

    corpus = generate_corpus(seed=0, num_repos=12 * args.scale, families=40 * args.scale, siblings=40 * args.scale)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = corpus.write_jsonl(root / "corpus.jsonl")
        config = PipelineConfig(licenses="all", optout=load_optout(corpus.write_optout(root / "optout.jsonl")))
        runs = []
        for i in range(args.repeat):
            start = time.perf_counter()
            result = run_pipeline(data, root / f"out{i}", config, num_workers=args.num_workers)
            runs.append((time.perf_counter() - start, result))
        seconds, result = min(runs, key=lambda run: run[0])
    files, mb = result.stats["input"]["files"], result.stats["input"]["bytes"] / 1e6
    report = {
        "num_workers": args.num_workers,
        "input_files": files,
        "input_mb": round(mb, 2),
        "kept_files": result.stats["output"]["files"],
        "seconds": round(seconds, 2),
        "files_per_s": round(files / seconds, 1),
        "mb_per_s": round(mb / seconds, 3),
        "phases_s": {name: round(s, 2) for name, s in result.seconds.items()},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
