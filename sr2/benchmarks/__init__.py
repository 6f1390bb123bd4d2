"""Benchmarks, one module each; `experiments/benchmark.py NAME` runs them.

sampler.py    decode speed (optionally against HF generate)
retrieval.py  BM25 build and query speed against bm25s and rank-bm25
forward.py    the causal forward pass, blocked vs masked attention
training.py   the Meta-Refiner's cost per GRPO step, and the GRPO update alone
timing.py     the clocks they share
"""
