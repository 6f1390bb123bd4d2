"""RL benchmarks: the Meta-Refiner's cost per GRPO step, and the GRPO update on its own.

`experiments/benchmark.py refiner`: seconds per GRPO step with and without the Meta-Refiner.
Both arms run the same training steps (same questions, same G, same seed) on the same
starting params, alternating arm by arm, step by step, so machine noise hits both alike:
the Search-R1 step (rollout, reward, update) against the Search-R2 step (rollout, one
batched judgement, cut-and-regenerate of the revised rows, process reward, the decisions
in the update). Each arm's first steps compile and are not timed. The drivers' probes
are off (they are measurement, not training). Prints one JSON line per arm and a summary.

Programs first met after the warm-up steps (a new length bucket, a regeneration batch of
a new size) still compile inside timed steps. JAX's monitoring events give those seconds
(tracing, lowering, XLA compilation: `CompileClock`); each arm reports them, and the
summary gives the overhead with and without them. Without them is the steady state a
long run converges to; with them is what this many steps cost.

  python experiments/benchmark.py refiner --workdir DIR   # params of DIR's latest checkpoint
  python experiments/benchmark.py refiner --steps 10 --warmup 2

`experiments/benchmark.py update`: one jitted GRPO update (loss, gradients, AdamW) of the
tiny world's model and GRPO config on random rows of `--length` tokens, the whole batch in
one forward/backward pass against micro-batches of each `--micro` rows (gradients summed,
`update.loss_and_grads`). Prints seconds per update, its loss and gradient norm, and how
far that norm is from the first setting's (the same update: float reassociation only).

  python experiments/benchmark.py update --batch 40 --length 768 --micro 0,5,10,20
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from sr2 import checkpoint, models
from sr2.benchmarks.forward import model_config
from sr2.benchmarks.timing import CompileClock, median_time
from sr2.configlib import from_config, load_config_file
from sr2.rl import grpo, update
from sr2.rl.optim import OptConfig, make_optimizer
from sr2.train import loop
from sr2.train.setup import setup
from sr2.train.state import TrainState, fresh_state


def _config(arm: str, steps: int):
  path = pathlib.Path(__file__).resolve().parents[2] / "configs" / "search_r2.py"
  c = load_config_file(path, f"tiny_world,{arm}")
  c.rl.steps = steps
  c.rl.probe_every = 0
  c.rl.progress = False
  c.eval.every = 0
  return c


def refiner_benchmark(argv: list[str]) -> None:
  ap = argparse.ArgumentParser(prog="benchmark.py refiner")
  ap.add_argument("--workdir", default="", help="start from this run's latest checkpoint")
  ap.add_argument("--steps", type=int, default=10, help="timed steps per arm")
  ap.add_argument("--warmup", type=int, default=2, help="untimed steps per arm (compiles)")
  ap.add_argument("--arm", default="search_r2", help="the refiner arm (configs/search_r2.py)")
  args = ap.parse_args(argv)
  total = args.warmup + args.steps
  arms = {name: setup(_config(name, total)) for name in ("search_r1", args.arm)}
  fns = {name: loop.step_fns(s) for name, s in arms.items()}
  state = {}
  for name, s in arms.items():
    state[name] = fresh_state(s)
    if args.workdir:
      with checkpoint.Checkpointer(args.workdir) as ckpt:
        state[name] = TrainState.from_dict(ckpt.restore(like=state[name].as_dict()))
      # Every arm runs steps 1..total from the checkpoint's params.
      state[name] = dataclasses.replace(state[name], step=0)
    # The reference is a copy: the update donates the params it is given.
    ref = jax.tree.map(jnp.copy, state[name].params)
    state[name] = dataclasses.replace(state[name], ref_params=ref)
  times = {name: [] for name in arms}
  compiles = {name: [] for name in arms}
  rows = {name: [] for name in arms}
  for step in range(1, total + 1):
    for name, s in arms.items():
      start = time.perf_counter()
      with CompileClock() as clock:
        state[name], row, _ = loop.grpo_step(s, fns[name], state[name])
        jax.block_until_ready(state[name].params)
      if step > args.warmup:
        times[name].append(time.perf_counter() - start)
        compiles[name].append(clock.seconds)
        rows[name].append(row)
  out = {}
  for name in arms:
    t, c = np.asarray(times[name]), np.asarray(compiles[name])
    r = rows[name]
    out[name] = {
      "benchmark": "refiner",
      "arm": name,
      "steps": len(t),
      "sec_per_step_mean": float(t.mean()),
      "sec_per_step_median": float(np.median(t)),
      "compile_s": float(c.mean()),
      "steps_compiling": int(np.sum(c > 0.05)),
      "sec_per_step_mean_excl_compile": float((t - c).mean()),
      "rollout_s": float(np.mean([x["rollout_s"] for x in r])),
      "refine_s": float(np.mean([x.get("refine_s", 0.0) for x in r])),
      "judge_s": float(np.mean([x.get("judge_s", 0.0) for x in r])),
      "regenerate_s": float(np.mean([x.get("regenerate_s", 0.0) for x in r])),
      "update_s": float(np.mean([x["update_s"] for x in r])),
      "revision_rate": float(np.mean([x.get("refiner/v_inter", 0.0) for x in r])),
      "batch_rows": float(np.mean([x["batch_rows"] for x in r])),
    }
    print(json.dumps(out[name]))
  base, ref = out["search_r1"]["sec_per_step_mean"], out[args.arm]["sec_per_step_mean"]
  print(
    json.dumps(
      {
        "benchmark": "refiner",
        "summary": True,
        "overhead_mean": ref / base - 1.0,
        "overhead_median": out[args.arm]["sec_per_step_median"]
        / out["search_r1"]["sec_per_step_median"]
        - 1.0,
        "overhead_mean_excl_compile": out[args.arm]["sec_per_step_mean_excl_compile"]
        / out["search_r1"]["sec_per_step_mean_excl_compile"]
        - 1.0,
        "workdir": args.workdir,
        "devices": str(jax.devices()),
      }
    )
  )


def _random_rows(vocab: int, batch: int, length: int, seed: int = 0) -> dict[str, np.ndarray]:
  """Rows shaped like a step's: a prompt (128 tokens at most), responses ending past half."""
  rng = np.random.default_rng(seed)
  prompt = min(128, length // 4)
  tokens = rng.integers(0, vocab, (batch, length)).astype(np.int32)
  mask = np.zeros((batch, length - 1), np.int32)
  for i, end in enumerate(rng.integers(length // 2, length, batch)):
    mask[i, prompt - 1 : end] = rng.random(end - prompt + 1) < 0.6  # the rest: retrieved
  return {
    "tokens": tokens,
    "mask": mask,
    "old_logp": (-rng.random((batch, length - 1)) * mask).astype(np.float32),
    "adv": rng.standard_normal(batch).astype(np.float32),
  }


def update_benchmark(argv: list[str]) -> list[dict]:
  ap = argparse.ArgumentParser(prog="benchmark.py update")
  ap.add_argument("--batch", type=int, default=40, help="rows in the update")
  ap.add_argument("--length", type=int, default=768, help="tokens per row")
  ap.add_argument("--micro", default="0,5,10,20", help="micro-batch rows to time; 0 = one pass")
  ap.add_argument("--repeats", type=int, default=3)
  args = ap.parse_args(argv)
  c = load_config_file(pathlib.Path(__file__).resolve().parents[2] / "configs" / "tiny_world.py")
  model = model_config("tiny_world")
  base = from_config(grpo.GRPOConfig, c.grpo, "config.grpo")
  opt = make_optimizer(from_config(OptConfig, c.opt, "config.opt"))
  params = models.init_params(model, jax.random.key(0))
  batch = _random_rows(model.vocab_size, args.batch, args.length)
  batch["ref_logp"] = np.asarray(
    update.reference_logprobs(model, params, jnp.asarray(batch["tokens"]), base.logprob_chunk)
  )
  rows, first = [], None
  for micro in (int(x) for x in args.micro.split(",")):
    cfg = dataclasses.replace(base, micro_batch_rows=micro)
    step = jax.jit(functools.partial(update.update_step, model, cfg, opt))
    state = jax.tree.map(jnp.copy, (params, opt.init(params)))
    _, _, m = jax.device_get(step(*state, batch))  # compiles
    first = m if first is None else first
    t, times = median_time(lambda step=step, state=state: step(*state, batch), args.repeats)
    rows.append(
      {
        "benchmark": "update",
        "batch": args.batch,
        "length": args.length,
        "micro_batch_rows": micro,
        "seconds_median": t,
        "seconds_min": min(times),
        "loss": float(m["loss"]),
        "grad_norm": float(m["grad_norm"]),
        "grad_norm_rel_difference": abs(float(m["grad_norm"] / first["grad_norm"]) - 1.0),
        "devices": str(jax.devices()),
      }
    )
    print(json.dumps(rows[-1]))
  return rows
