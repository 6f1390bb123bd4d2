"""The training job: (SFT warm start), GRPO with the optional Meta-Refiner, evaluation.

  python experiments/train.py --config configs/tiny_world.py --workdir DIR

Phases, each checkpointed so `--workdir` with a checkpoint resumes where it stopped:
  1. the task (rl/task.py): questions, BM25 index, tokenizer, model;
  2. SFT on the world's demonstrations (synthetic world; `sft.steps = 0` skips it), or the
     warm start another run kept (`--init_from`);
  3. greedy evaluation on `eval.split` (EM before RL); with the Meta-Refiner on the
     synthetic world, also its gate and Trimmer accuracy (`trimmer_before_rl`);
  4. GRPO steps (rl/trainer.py's `RLLoop`) against the frozen starting policy as KL
     reference; metrics every step, dev evaluation every `eval.every` steps;
  5. greedy evaluation again (EM after RL); `DIR/summary.json`, `DIR/metrics.jsonl`,
     TensorBoard events in `DIR/tensorboard`, and `DIR/curves.png`.

Checkpoints are written by Orbax in the background while the next step's rollouts run.
"""

from __future__ import annotations

import json
import pathlib
import time

import jax
import jax.numpy as jnp

from sr2 import checkpoint
from sr2.configlib import ConfigError
from sr2.rl import sft
from sr2.rl.evaluation import evaluate, trimmer_accuracy
from sr2.rl.metrics import MetricWriter, plot_curves
from sr2.rl.trainer import RLLoop, Setup, fresh_state, setup

WARM_START = "warm_start"


def load_state(config, workdir: str, step: int | None = None) -> dict:
  """The training state saved in `workdir` (latest step by default), for inspection."""
  s = setup(config)
  with checkpoint.Checkpointer(workdir) as ckpt:
    return ckpt.restore(step, like=fresh_state(s))


def _drop_rows_after(path: pathlib.Path, step: int) -> None:
  """On resume: forget metric lines of steps the restored checkpoint does not include."""
  if not path.exists():
    return
  keep = []
  for line in path.read_text(encoding="utf-8").splitlines():
    try:
      row = json.loads(line)
    except json.JSONDecodeError:
      continue  # a line cut by a killed process
    if row.get("phase") == "sft" or row.get("step", 0) <= step:
      keep.append(line)
  path.write_text("".join(x + "\n" for x in keep), encoding="utf-8")


def _eval(s: Setup, params, split: str, limit: int) -> dict:
  qs = s.task.split(split)
  qs = qs[:limit] if limit else qs
  refiner = s.refiner if s.eval.use_refiner else None
  return evaluate(
    s.task, params, qs, batch_size=s.eval.batch_size, max_len=s.rl.max_len, refiner=refiner
  )


def _warm_start(s: Setup, state: dict, writer: MetricWriter) -> dict:
  """Phase init: SFT (world) or the loaded checkpoint (qa) as the starting policy."""
  if s.task.sft_examples and s.sft.steps:
    params, _ = sft.run_sft(
      s.task.model,
      state["params"],
      s.sft_opt,
      s.task.sft_examples,
      steps=s.sft.steps,
      batch_size=s.sft.batch_size,
      pad_id=s.task.tokenizer.pad_id,
      seed=s.seed,
      log=lambda i, m: writer.write("sft", i, m) if i % 10 == 0 else None,
    )
  elif s.task.sft_examples:
    params = state["params"]
  else:
    params = s.task.init_params(s.seed)
  params = jax.device_put(params, s.shardings.params)
  opt_state = jax.jit(s.opt.init, out_shardings=s.shardings.opt_state)(params)
  return {
    **state,
    "params": params,
    # A copy: the update step donates `params`, which must not free the reference.
    "ref_params": jax.tree.map(jnp.copy, params),
    "opt_state": opt_state,
    "step": 0,
    "data_state": {"phase": "rl"},
  }


def _borrow_warm_start(init_from, template) -> tuple[dict, dict]:
  """The starting policy another run kept (`rl.keep_warm_start`) and its evaluation."""
  source = pathlib.Path(init_from) / WARM_START
  if not source.is_dir():
    raise ConfigError(
      f"--init_from {init_from}: no {WARM_START}/ there; run it with rl.keep_warm_start=True"
    )
  with checkpoint.Checkpointer(source) as keep:
    return keep.restore(0, like=template), keep.metrics(0)


def _judges(s: Setup) -> bool:
  """Whether the run measures its gate and Trimmer (a refiner run on the synthetic world)."""
  return bool(s.task.trimmer_probes) and s.refiner.enabled


def train_and_evaluate(config, workdir: str, init_from: str | None = None) -> dict:
  """Runs the whole job (see the module docstring); returns the summary.

  `init_from`: a workdir whose kept warm start (`rl.keep_warm_start`) replaces this run's
  own SFT, for runs that must share a starting policy; ignored when resuming.
  """
  s = setup(config)
  task, rl = s.task, s.rl
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  start = time.perf_counter()
  task.tokenizer.save(workdir / "tokenizer")
  ckpt = checkpoint.Checkpointer(workdir, max_to_keep=2)
  template = fresh_state(s)
  resumed = ckpt.latest_step() is not None
  state = ckpt.restore(like=template) if resumed else template
  metrics_path = workdir / "metrics.jsonl"
  summary_path = workdir / "summary.json"
  if resumed:
    _drop_rows_after(metrics_path, int(state["step"]))
  else:  # what a run killed before its first checkpoint left is redone from scratch
    metrics_path.unlink(missing_ok=True)
    summary_path.unlink(missing_ok=True)
  summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
  writer = MetricWriter(
    workdir, progress_total=rl.steps if rl.progress else None, progress_desc="GRPO"
  )

  if not resumed and init_from:
    state, before = _borrow_warm_start(init_from, template)
    summary.update(em_before_rl=before["em"], eval_before_rl=before, init_from=str(init_from))
    summary_path.write_text(json.dumps(summary, indent=1))
    ckpt.save(0, state, force=True)
    ckpt.wait()
  if state["data_state"]["phase"] == "init":
    state = _warm_start(s, state, writer)
    before = _eval(s, state["params"], s.eval.split, s.eval.limit)
    summary.update(em_before_rl=before["em"], eval_before_rl=before)
    summary["warm_start_seconds"] = round(time.perf_counter() - start, 1)
    summary_path.write_text(json.dumps(summary, indent=1))
    writer.write("eval", 0, {f"{s.eval.split}/{k}": v for k, v in before.items()})
    ckpt.save(0, state, force=True)
    ckpt.wait()
    if rl.keep_warm_start:
      with checkpoint.Checkpointer(workdir / WARM_START) as keep:
        keep.save(0, state, metrics=before, force=True)

  if _judges(s) and int(state["step"]) == 0 and "trimmer_before_rl" not in summary:
    # The starting policy's gate and Trimmer (evaluated every `eval.every` steps after).
    acc = trimmer_accuracy(task, state["params"], task.trimmer_probes, s.refiner)
    summary["trimmer_before_rl"] = acc
    summary_path.write_text(json.dumps(summary, indent=1))

  loop = RLLoop(s)
  params, opt_state, rng = state["params"], state["opt_state"], state["rng"]
  ref_params = state["ref_params"]
  writer.skip_to(int(state["step"]))
  for step in range(int(state["step"]) + 1, rl.steps + 1):
    params, opt_state, rng, row = loop.step(params, opt_state, ref_params, step, rng)
    if s.eval.every and step % s.eval.every == 0:
      dev = _eval(s, params, "dev", s.eval.dev_limit)
      row.update({f"dev/{k}": v for k, v in dev.items()})
      if _judges(s):
        acc = trimmer_accuracy(task, params, task.trimmer_probes, s.refiner)
        row.update({f"trimmer/{k}": v for k, v in acc.items()})
    if step % rl.log_every == 0 or step == rl.steps:
      writer.write("rl", step, row)
    if step % rl.checkpoint_every == 0 or step == rl.steps:
      ckpt.save(
        step,
        {
          "params": params,
          "ref_params": ref_params,
          "opt_state": opt_state,
          "step": step,
          "rng": rng,
          "data_state": {"phase": "rl"},
        },
        force=True,
      )
  ckpt.wait()
  after = _eval(s, params, s.eval.split, s.eval.limit)
  writer.write("eval", rl.steps, {f"{s.eval.split}/{k}": v for k, v in after.items()})
  summary.update(
    em_after_rl=after["em"],
    eval_after_rl=after,
    total_seconds=round(time.perf_counter() - start, 1),
  )
  summary_path.write_text(json.dumps(summary, indent=1))
  writer.close()
  plot_curves(metrics_path, workdir / "curves.png")
  ckpt.close()
  return summary
