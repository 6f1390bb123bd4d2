"""Decode speed of the sampler, against the machine's ceilings and (optionally) HF generate.

Run: `python experiments/benchmark.py sampler --model smollm2-135m-instruct --batch 1,8,32
--prompt-len 64 --new-tokens 128 --ignore-stop [--compare-hf]`. Prints one JSON object per
measurement. Protocol (as in PEERS-decode.md): greedy, the same `prompt-len` ids in every row
(no BOS, no padding), `new-tokens` generated with EOS and stop strings off under
`--ignore-stop`; one warm-up call (compiles), then `--repeats` timed calls;
tokens/s = batch * new_tokens / median seconds; prefill is timed on its own so decode-only
tokens/s is reported too.

Ceilings are measured at start (unless given): float32 matmul FLOP/s (4096^2 jitted
matmul) and memory read bandwidth (sum over a 512 MB array). A decode step must read every
weight matrix and the attended KV cache, so bytes/step / seconds/step against the
bandwidth is the figure of merit at small batch; FLOP/s against the matmul peak at large.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import statistics
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sr2.benchmarks.timing import median_time

_PROMPT_TEXT = (
  "Search engines let language models look up facts they do not know. An agent that "
  "reasons step by step decides when to search, reads the retrieved passages, and answers "
  "the question with a short phrase. This benchmark feeds the same prompt to every row. "
)


def measure_ceilings() -> dict:
  """Matmul FLOP/s and streaming read bandwidth of this machine (jitted, float32)."""
  a = jnp.ones((4096, 4096), jnp.float32)
  mm = jax.jit(lambda x: x @ x)
  jax.block_until_ready(mm(a))
  t, _ = median_time(lambda: mm(a), 5)
  big = jnp.ones((128 * 1024 * 1024,), jnp.float32)  # 512 MB
  sm = jax.jit(jnp.sum)
  jax.block_until_ready(sm(big))
  tb, _ = median_time(lambda: sm(big), 5)
  return {"peak_flops": 2 * 4096**3 / t, "peak_bytes_per_s": big.nbytes / tb}


def decode_cost(config, batch: int, cache_len: int) -> tuple[float, float]:
  """(FLOPs, bytes read) of one decode step over the whole batch."""
  itemsize = jnp.dtype(config.dtype).itemsize
  d, h, k, dh, f, v = (
    config.d_model,
    config.n_heads,
    config.n_kv_heads,
    config.head_dim,
    config.d_ff,
    config.vocab_size,
  )
  per_layer_w = d * h * dh * 2 + 2 * d * k * dh + 3 * d * f
  weights = config.n_layers * per_layer_w + d * v  # matmul weights + output head
  attn_flops = config.n_layers * batch * 4 * cache_len * h * dh
  flops = 2 * batch * weights + attn_flops
  kv_bytes = config.n_layers * batch * cache_len * 2 * k * dh * itemsize
  return float(flops), float(weights * itemsize + kv_bytes)


def sampler_rows(
  model,
  batch: int,
  prompt_len: int,
  new_tokens: int,
  ignore_stop: bool,
  repeats: int,
  ceilings: dict,
  mesh=None,
) -> dict:
  from sr2.sampling import Greedy, Sampler, SamplingConfig

  if model.tokenizer is None:
    raise ValueError(f"model {model.source!r} has no tokenizer; the sampler benchmark needs one")
  prompt = (model.tokenizer.encode(_PROMPT_TEXT) * 8)[:prompt_len]
  max_len = prompt_len + new_tokens
  stop_kw = dict(stop_strings=(), stop_on_eos=False) if ignore_stop else {}
  cfg = SamplingConfig(max_len=max_len, method=Greedy(), buckets=(prompt_len,), **stop_kw)
  s = Sampler(model.config, model.tokenizer, cfg, mesh=mesh)
  prompts = [prompt] * batch
  prefill = lambda: s.prefill(model.params, prompts).tokens
  run = lambda: s.decode(model.params, s.prefill(model.params, prompts), new_tokens)
  start = time.perf_counter()
  state = jax.block_until_ready(run())
  first_call = time.perf_counter() - start
  t_total, times = median_time(lambda: run().tokens, repeats)
  t_prefill, _ = median_time(prefill, repeats)
  out = np.asarray(state.tokens[0, prompt_len:max_len]).tolist()
  # Rows that stop early (stops on) generate fewer tokens: count what was generated.
  generated = int(np.sum(np.asarray(state.lengths) - prompt_len))
  first_device = jax.devices()[0]
  kv_bytes = sum(
    shard.data.nbytes
    for leaf in jax.tree.leaves(state.cache)
    for shard in leaf.addressable_shards
    if shard.device == first_device
  )
  steps = int(np.max(np.asarray(state.lengths)) - prompt_len)
  decode_s = max(t_total - t_prefill, 1e-9)
  flops, bytes_ = decode_cost(model.config, batch, s.attention_span(max_len))
  step_s = decode_s / max(steps, 1)
  return {
    "benchmark": "sampler",
    "impl": "sr2",
    "model": model.source,
    "batch": batch,
    "prompt_len": prompt_len,
    "new_tokens": new_tokens,
    "ignore_stop": ignore_stop,
    "generated_tokens": generated,
    "tokens_per_s": round(generated / t_total, 2),
    "decode_tokens_per_s": round(generated / decode_s, 2),
    "seconds": [round(x, 3) for x in times],
    "prefill_s": round(t_prefill, 4),
    "first_call_s": round(first_call, 2),
    "compile_s": round(first_call - t_total, 2),
    "programs": s.num_programs,
    "devices": 1 if mesh is None else mesh.size,
    "kv_bytes_per_device": int(kv_bytes),
    "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    "decode_flops_per_s": round(flops / step_s / 1e9, 2) * 1e9,
    "decode_bytes_per_s": round(bytes_ / step_s / 1e9, 2) * 1e9,
    "frac_peak_flops": round(flops / step_s / ceilings["peak_flops"], 3),
    "frac_peak_bandwidth": round(bytes_ / step_s / ceilings["peak_bytes_per_s"], 3),
    "generated": out,
  }


def hf_rows(model_name: str, prompt: list[int], batch: int, new_tokens: int, repeats: int) -> dict:
  """HF transformers generate (torch CPU, KV cache) on the same GGUF weights."""
  import torch
  import transformers

  from sr2 import assets

  torch.set_num_threads(2)
  gguf = assets.fetch_named_gguf(model_name)
  hf = transformers.AutoModelForCausalLM.from_pretrained(
    str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
  ).eval()
  ids = torch.tensor([prompt] * batch)
  gen = lambda: hf.generate(
    ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, use_cache=True
  )
  with torch.no_grad():
    start = time.perf_counter()
    out = gen()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      gen()
      times.append(time.perf_counter() - start)
  t = statistics.median(times)
  return {
    "benchmark": "sampler",
    "impl": "hf_transformers",
    "model": model_name,
    "batch": batch,
    "prompt_len": len(prompt),
    "new_tokens": new_tokens,
    "tokens_per_s": round(batch * new_tokens / t, 2),
    "seconds": [round(x, 3) for x in times],
    "first_call_s": round(first, 2),
    "generated": out[0, len(prompt) :].tolist(),
  }


def sampler_benchmark(argv: Sequence[str] | None = None) -> list[dict]:
  """Parses flags, runs each batch size, prints and returns JSON rows."""
  from sr2 import models

  args = _parser().parse_args(list(argv) if argv is not None else [])
  if args.devices > 1:  # before JAX starts its backend
    jax.config.update("jax_num_cpu_devices", args.devices)
  ceilings = (
    {"peak_flops": args.peak_flops, "peak_bytes_per_s": args.peak_bandwidth}
    if args.peak_flops and args.peak_bandwidth
    else measure_ceilings()
  )
  print(
    json.dumps(
      {
        "benchmark": "ceilings",
        **{k: round(v / 1e9, 1) for k, v in ceilings.items()},
        "units": "GFLOP/s, GB/s",
        "devices": str(jax.devices()),
      }
    ),
    flush=True,
  )
  model = models.load(args.model, dtype=args.dtype)
  mesh = None
  if args.devices > 1:
    from sr2.parallel import AxisRules, MeshConfig, make_mesh, tree_shardings

    mesh = make_mesh(MeshConfig(data=-1))
    shardings = tree_shardings(models.param_axes(model.config), model.params, mesh, AxisRules())
    model = dataclasses.replace(model, params=jax.device_put(model.params, shardings))
  rows = []
  for batch in (int(b) for b in args.batch.split(",")):
    row = sampler_rows(
      model,
      batch,
      args.prompt_len,
      args.new_tokens,
      args.ignore_stop,
      args.repeats,
      ceilings,
      mesh=mesh,
    )
    if args.compare_hf:
      prompt = (model.tokenizer.encode(_PROMPT_TEXT) * 8)[: args.prompt_len]
      hf = hf_rows(args.model, prompt, batch, args.new_tokens, args.repeats)
      row["speedup_vs_hf"] = round(row["tokens_per_s"] / hf["tokens_per_s"], 2)
      row["tokens_equal_hf"] = row["generated"] == hf["generated"]
      hf.pop("generated")
      rows.append(hf)
      print(json.dumps(hf), flush=True)
    row.pop("generated")
    rows.append(row)
    print(json.dumps(row), flush=True)
  return rows


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="benchmark sampler", description=__doc__)
  p.add_argument("--model", default="smollm2-135m-instruct", help="named model, HF dir or .gguf")
  p.add_argument("--batch", default="1", help="comma-separated batch sizes")
  p.add_argument("--prompt-len", type=int, default=64)
  p.add_argument("--new-tokens", type=int, default=128)
  p.add_argument("--ignore-stop", action="store_true", help="no EOS or stop strings")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  p.add_argument(
    "--devices", type=int, default=1, help="N fake CPU devices; rows split over them (data=N)"
  )
  p.add_argument("--compare-hf", action="store_true", help="also time HF generate (torch)")
  p.add_argument("--peak-flops", type=float, default=None, help="skip measuring: FLOP/s")
  p.add_argument("--peak-bandwidth", type=float, default=None, help="skip measuring: bytes/s")
  return p
