"""`experiments/benchmark.py refiner`: seconds per GRPO step with and without the Meta-Refiner.

Both arms run the same training steps (same questions, same G, same seed) on the same
starting params, alternating arm by arm, step by step, so machine noise hits both alike:
the Search-R1 step (rollout, reward, update) against the Search-R2 step (rollout, one
batched judgement, cut-and-regenerate of the revised rows, process reward, the decisions
in the update). Each arm's first steps compile and are not timed. The drivers' probes
are off (they are measurement, not training). Prints one JSON line per arm and a summary.

  python experiments/benchmark.py refiner --workdir DIR   # params of DIR's latest checkpoint
  python experiments/benchmark.py refiner --steps 10 --warmup 2
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import jax
import numpy as np

from sr2 import checkpoint
from sr2.configlib import load_config_file
from sr2.rl import trainer


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
  arms = {name: trainer.setup(_config(name, total)) for name in ("search_r1", args.arm)}
  loops = {name: trainer.RLLoop(s) for name, s in arms.items()}
  state = {}
  for name, s in arms.items():
    template = trainer.fresh_state(s)
    if args.workdir:
      with checkpoint.Checkpointer(args.workdir) as ckpt:
        template = ckpt.restore(like=template)
    state[name] = [
      template["params"],
      template["opt_state"],
      template["ref_params"],
      template["rng"],
    ]
  times = {name: [] for name in arms}
  rows = {name: [] for name in arms}
  for step in range(1, total + 1):
    for name, loop in loops.items():
      params, opt_state, ref, rng = state[name]
      start = time.perf_counter()
      params, opt_state, rng, row = loop.step(params, opt_state, ref, step, rng)
      jax.block_until_ready(params)
      if step > args.warmup:
        times[name].append(time.perf_counter() - start)
        rows[name].append(row)
      state[name] = [params, opt_state, ref, rng]
  out = {}
  for name in arms:
    t = np.asarray(times[name])
    r = rows[name]
    out[name] = {
      "benchmark": "refiner",
      "arm": name,
      "steps": len(t),
      "sec_per_step_mean": float(t.mean()),
      "sec_per_step_median": float(np.median(t)),
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
        "workdir": args.workdir,
        "devices": str(jax.devices()),
      }
    )
  )
