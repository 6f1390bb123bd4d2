"""`experiments/benchmark.py forward`: the causal forward pass, blocked against masked attention.

`transformer.forward_hidden` with default positions computes causal attention in query
blocks below the diagonal (`_causal_attention`); with explicit positions it scores every
(query, key) pair under a mask. Both give the same values. This times the two paths on
random tokens at one batch shape, the forward alone or with its backward pass (`--grad`,
the GRPO/SFT update's shape of work), and prints one JSON line per path and a summary.

`--read-one` times instead the blocked forward against the same forward read at one
position per row (`forward_hidden(..., at_B=)`, the last block run only there): the shape
of work of scoring next tokens after a prompt (the Meta-Refiner's judgement). Each row is
read at a position drawn in the last quarter of `--length`, as the judge reads a prompt
padded to its length bucket.

  python experiments/benchmark.py forward --model tiny_world --batch 40 --length 768
  python experiments/benchmark.py forward --model smollm2-135m --batch 8 --length 1024 --grad
  python experiments/benchmark.py forward --batch 8 --length 640 --read-one
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics

import jax
import jax.numpy as jnp
import numpy as np

from sr2 import models
from sr2.benchmarks.timing import median_time
from sr2.configlib import load_config_file
from sr2.models import transformer


def model_config(name: str) -> models.ModelConfig:
  """A preset, or "tiny_world": the model group of configs/tiny_world.py (vocabulary 2048)."""
  if name != "tiny_world":
    return models.preset(name)
  path = pathlib.Path(__file__).resolve().parents[2] / "configs" / "tiny_world.py"
  fields = load_config_file(path, "default").model.to_dict()
  return models.ModelConfig(**fields, vocab_size=2048)


def forward_benchmark(argv: list[str]) -> list[dict]:
  ap = argparse.ArgumentParser(prog="benchmark.py forward")
  ap.add_argument("--model", default="tiny_world", help="a preset name or tiny_world")
  ap.add_argument("--batch", type=int, default=40)
  ap.add_argument("--length", type=int, default=768)
  ap.add_argument("--grad", action="store_true", help="time forward + backward")
  ap.add_argument(
    "--read-one", action="store_true", help="time the forward read at one position per row"
  )
  ap.add_argument("--repeats", type=int, default=5)
  args = ap.parse_args(argv)
  if args.grad and args.read_one:
    ap.error("--read-one times the forward pass alone; drop --grad")
  config = model_config(args.model)
  params = models.init_params(config, jax.random.key(0))
  shape = (args.batch, args.length)
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(0, config.vocab_size, shape), jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(args.length), shape)
  at = jnp.asarray(rng.integers(args.length * 3 // 4, args.length, args.batch), jnp.int32)

  def loss(p, pos):
    return jnp.mean(jnp.square(transformer.forward_hidden(config, p, tokens, pos)))

  if args.read_one:
    fns = {
      "blocked": jax.jit(
        lambda p: jnp.take_along_axis(
          transformer.forward_hidden(config, p, tokens), at[:, None, None], axis=1
        )
      ),
      "read_one": jax.jit(lambda p: transformer.forward_hidden(config, p, tokens, at_B=at)),
    }
  else:
    fns = {
      name: jax.jit(
        jax.value_and_grad(lambda p, q=pos: loss(p, q))
        if args.grad
        else (lambda p, q=pos: transformer.forward_hidden(config, p, tokens, q))
      )
      for name, pos in {"blocked": None, "masked": positions}.items()
    }
  outs = {name: jax.device_get(fn(params)) for name, fn in fns.items()}  # compiles
  rows = []
  for name, fn in fns.items():
    _, t = median_time(lambda fn=fn: fn(params), args.repeats)
    rows.append(
      {
        "benchmark": "forward",
        "path": name,
        "model": args.model,
        "batch": args.batch,
        "length": args.length,
        "grad": args.grad,
        "read_one": args.read_one,
        "attention_block": transformer.causal_block(args.length),
        "seconds_median": statistics.median(t),
        "seconds_min": min(t),
        "tokens_per_s": args.batch * args.length / statistics.median(t),
      }
    )
    print(json.dumps(rows[-1]))
  first, second = (jax.tree.leaves(o) for o in outs.values())
  diff = max(
    float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
    for a, b in zip(first, second, strict=True)
  )
  # How many times faster the new path is: blocked over masked, read_one over blocked.
  old_s, new_s = (rows[0], rows[1]) if args.read_one else (rows[1], rows[0])
  summary = {
    "benchmark": "forward",
    "summary": True,
    "speedup_median": old_s["seconds_median"] / new_s["seconds_median"],
    "max_abs_difference": diff,
    "devices": str(jax.devices()),
  }
  print(json.dumps(summary))
  return [*rows, summary]
