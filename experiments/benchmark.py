"""Benchmarks: `python experiments/benchmark.py NAME [flags]`, one JSON object per line.

Names:
  sampler    decode speed of the sampler (`--help` for flags), optionally against HF generate
  retrieval  BM25 build and query speed against bm25s and rank-bm25
  refiner    seconds per GRPO step with and without the Meta-Refiner (tiny world)
  forward    the causal forward pass (optionally with its backward), blocked vs masked attention
  update     one GRPO update in one pass against micro-batches (summed gradients)
"""

import sys

BENCHMARKS = {
  "sampler": "sr2.benchmarks.sampler:sampler_benchmark",
  "retrieval": "sr2.benchmarks.retrieval:retrieval_benchmark",
  "refiner": "sr2.benchmarks.training:refiner_benchmark",
  "forward": "sr2.benchmarks.forward:forward_benchmark",
  "update": "sr2.benchmarks.training:update_benchmark",
}


def main(argv: list[str]) -> None:
  if len(argv) < 2 or argv[1] not in BENCHMARKS:
    sys.exit(f"usage: benchmark.py {{{','.join(BENCHMARKS)}}} [flags]\n\n{__doc__}")
  module, fn = BENCHMARKS[argv[1]].split(":")
  getattr(__import__(module, fromlist=[fn]), fn)(argv[2:])


if __name__ == "__main__":
  main(sys.argv)
