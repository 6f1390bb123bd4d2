"""The training job, top to bottom: setup, warm start, GRPO steps, evaluation.

  python experiments/train.py --config configs/tiny_world.py --workdir DIR

`train_and_evaluate` reads in the order a run happens:
  1. setup: the checked config, the task (questions, BM25 index, tokenizer, model), the
     checkpoints (a workdir with one resumes where it stopped);
  2. warm start: SFT on the world's demonstrations (`sft.steps = 0` skips it), or the
     checkpoint's params (QA tasks), or the warm start another run kept (`--init_from`);
  3. evaluation before RL: greedy EM on `eval.split`; with the Meta-Refiner on the
     synthetic world also its gate and Trimmer accuracy (`trimmer_before_rl`);
  4. GRPO steps (`grpo_step`: collect -> advantages -> batch -> update -> metrics), each
     against the frozen starting policy as KL reference; a dev evaluation every
     `eval.every` steps; a checkpoint every `rl.checkpoint_every` steps;
  5. evaluation after RL; `DIR/summary.json`, `DIR/metrics.jsonl`, TensorBoard events in
     `DIR/tensorboard` and `DIR/curves.png`.

Checkpoints are written by Orbax in the background while the next step's rollouts run.
JAX dispatches device work asynchronously, so within a step the reference log-probs are
queued as soon as the batch's tokens exist and computed while the host shards the batch.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from sr2 import checkpoint
from sr2.configlib import ConfigError
from sr2.rl import batch as batch_lib
from sr2.rl import grpo, update
from sr2.sampling import Sampler, SamplingConfig, Temperature
from sr2.train import sft
from sr2.train.collect import collect
from sr2.train.evaluation import evaluate_policy, trimmer_accuracy
from sr2.train.metrics import MetricWriter, plot_curves
from sr2.train.rewards import make_reward_fn
from sr2.train.setup import Setup, batch_rows, setup
from sr2.train.state import TrainState, fresh_state
from sr2.train.task import Question

WARM_START = "warm_start"


# --------------------------------------------------------------------------- one GRPO step


@dataclasses.dataclass(frozen=True)
class StepFns:
  """What every GRPO step of a run calls, built once (`step_fns`)."""

  sampler: Sampler  # the rollout sampler (temperature `rl.temperature`, raw log-probs)
  update: Callable  # the jitted, sharded update (`update.make_update`)
  reward_fn: Callable  # (questions, trajectories) -> (outcome, process, total)
  train_questions: list[Question]
  order: np.ndarray  # a fixed shuffle of the training questions, cycled
  rows: int  # rows of every update (`setup.batch_rows`)


def step_fns(s: Setup) -> StepFns:
  task = s.task
  sampling = SamplingConfig(
    max_len=s.rl.max_len, method=Temperature(s.rl.temperature), logprobs="raw"
  )
  train_questions = task.split("train")
  return StepFns(
    sampler=Sampler(task.model, task.tokenizer, sampling),
    update=update.make_update(task.model, s.grpo, s.opt, s.shardings),
    reward_fn=make_reward_fn(s.reward, task),
    train_questions=train_questions,
    order=np.random.default_rng(s.seed).permutation(len(train_questions)),
    rows=batch_rows(s.rl, s.grpo, s.refiner),
  )


def step_questions(s: Setup, fns: StepFns, step: int) -> list[Question]:
  """Step `step`'s (1-based) B questions, each repeated G times."""
  b, g, n = s.rl.prompts_per_step, s.grpo.group_size, len(fns.order)
  qs = fns.train_questions
  return [qs[fns.order[((step - 1) * b + i) % n]] for i in range(b) for _ in range(g)]


def grpo_step(s: Setup, fns: StepFns, state: TrainState) -> tuple[TrainState, dict]:
  """GRPO step `state.step + 1`: the new state (params donated) and its metrics row."""
  task, step = s.task, state.step + 1
  t0 = time.perf_counter()
  rng, key, shuffle = jax.random.split(state.rng, 3)

  # Collect: B x G rollouts, the Meta-Refiner's cuts and regenerations, the rewards,
  # and every `rl.probe_every` steps the drivers' counterfactual regenerations.
  questions = step_questions(s, fns, step)
  probe = bool(s.rl.probe_every) and step % s.rl.probe_every == 0
  got = collect(
    task,
    fns.sampler,
    state.params,
    questions,
    fns.reward_fn,
    s.refiner,
    rng=key,
    np_rng=np.random.default_rng([s.seed, step]),
    probe=probe,
  )

  # Advantages: rewards normalised within each group of G.
  adv, adv_metrics = grpo.group_advantages(
    jnp.asarray(got.reward), s.grpo.group_size, scale_by_std=s.grpo.scale_by_std, eps=s.grpo.adv_eps
  )
  adv = np.asarray(adv)

  # Batch: the trajectories, plus the refiner's decision rows under joint optimisation.
  decisions = got.decisions if s.refiner.enabled and s.refiner.joint else None
  batch, batch_info = batch_lib.assemble_batch(
    got.trajectories,
    adv,
    decisions,
    rows=fns.rows,
    pad_id=task.tokenizer.pad_id,
    decision_weight=s.refiner.decision_weight,
  )
  batch["ref_logp"] = update.reference_logprobs(
    task.model, state.ref_params, batch["tokens"], s.grpo.logprob_chunk or None
  )

  # Update: PPO epochs x mini-batches in one jitted program; params are donated.
  t_update = time.perf_counter()
  params, opt_state, m = fns.update(
    state.params, state.opt_state, update.put_batch(batch, s.shardings), shuffle
  )
  m = jax.device_get(m)
  if m["nonfinite"] and s.grpo.nonfinite == "stop":
    raise FloatingPointError(
      f"GRPO step {step}: {int(m['nonfinite'])} update(s) had a NaN/Inf loss or gradient "
      "(grpo.nonfinite='stop'; 'skip' would skip them and go on)"
    )

  # Metrics: the step's rollouts, the update, the batch, the collection's timings.
  trajs = got.trajectories
  row = {
    "reward": float(got.reward.mean()),
    "em": float(got.outcome.mean()),
    "process": float(got.process.mean()),
    "searches": float(np.mean([t.num_searches for t in trajs])),
    "turns": float(np.mean([t.num_turns for t in trajs])),
    "invalid_turns": float(np.mean([t.invalid_turns for t in trajs])),
    "response_tokens": float(np.mean([sum(t.loss_mask) for t in trajs])),
    **{k: float(v) for k, v in {**m, **adv_metrics}.items()},
    **batch_info,
    **got.metrics,
    "update_s": time.perf_counter() - t_update,
    "step_s": time.perf_counter() - t0,
  }
  row["tokens_per_s"] = sum(len(t.response_ids) for t in trajs) / row["step_s"]
  new = dataclasses.replace(state, params=params, opt_state=opt_state, step=step, rng=rng)
  return new, row


# --------------------------------------------------------------------------- the phases


def _evaluate(s: Setup, params, split: str, limit: int) -> dict:
  qs = s.task.split(split)
  qs = qs[:limit] if limit else qs
  refiner = s.refiner if s.eval.use_refiner else None
  return evaluate_policy(
    s.task, params, qs, batch_size=s.eval.batch_size, max_len=s.rl.max_len, refiner=refiner
  )


def _judges(s: Setup) -> bool:
  """Whether the run measures its gate and Trimmer (a refiner run on the synthetic world)."""
  return bool(s.task.judge_cases) and s.refiner.enabled


def _warm_start(s: Setup, state: TrainState, writer: MetricWriter) -> TrainState:
  """SFT (world), or the loaded checkpoint's params (QA), as the starting policy."""
  if s.task.sft_examples and s.sft.steps:
    params, _ = sft.run_sft(
      s.task.model,
      state.params,
      s.sft_opt,
      s.task.sft_examples,
      steps=s.sft.steps,
      batch_size=s.sft.batch_size,
      pad_id=s.task.tokenizer.pad_id,
      seed=s.seed,
      log=lambda i, m: writer.write("sft", i, m) if i % 10 == 0 else None,
    )
  elif s.task.sft_examples:
    params = state.params
  else:
    params = s.task.init_params(s.seed)
  params = jax.device_put(params, s.shardings.params)
  return dataclasses.replace(
    state,
    params=params,
    # A copy: the update donates `params`, which must not free the reference.
    ref_params=jax.tree.map(jnp.copy, params),
    opt_state=jax.jit(s.opt.init, out_shardings=s.shardings.opt_state)(params),
    step=0,
    data_state={"phase": "rl"},
  )


def _borrow_warm_start(init_from, template: TrainState) -> tuple[TrainState, dict]:
  """The starting policy another run kept (`rl.keep_warm_start`) and its evaluation."""
  source = pathlib.Path(init_from) / WARM_START
  if not source.is_dir():
    raise ConfigError(
      f"--init_from {init_from}: no {WARM_START}/ there; run it with rl.keep_warm_start=True"
    )
  with checkpoint.Checkpointer(source) as keep:
    return TrainState.from_dict(keep.restore(0, like=template.as_dict())), keep.metrics(0)


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


def load_state(config, workdir: str, step: int | None = None) -> TrainState:
  """The training state saved in `workdir` (latest step by default), for inspection."""
  s = setup(config)
  with checkpoint.Checkpointer(workdir) as ckpt:
    return TrainState.from_dict(ckpt.restore(step, like=fresh_state(s).as_dict()))


# --------------------------------------------------------------------------- the job


def train_and_evaluate(config, workdir: str, init_from: str | None = None) -> dict:
  """Runs the whole job (see the module docstring); returns the summary.

  `init_from`: a workdir whose kept warm start (`rl.keep_warm_start`) replaces this run's
  own SFT, for runs that must share a starting policy; ignored when resuming.
  """
  # ---- Setup: config, task, checkpoints, metric files.
  s = setup(config)
  task, rl = s.task, s.rl
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  start = time.perf_counter()
  task.tokenizer.save(workdir / "tokenizer")
  ckpt = checkpoint.Checkpointer(workdir, max_to_keep=2)
  template = fresh_state(s)
  resumed = ckpt.latest_step() is not None
  state = TrainState.from_dict(ckpt.restore(like=template.as_dict())) if resumed else template
  metrics_path, summary_path = workdir / "metrics.jsonl", workdir / "summary.json"
  if resumed:
    _drop_rows_after(metrics_path, state.step)
  else:  # what a run killed before its first checkpoint left is redone from scratch
    metrics_path.unlink(missing_ok=True)
    summary_path.unlink(missing_ok=True)
  summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
  write_summary = lambda: summary_path.write_text(json.dumps(summary, indent=1))
  writer = MetricWriter(
    workdir, progress_total=rl.steps if rl.progress else None, progress_desc="GRPO"
  )

  # ---- Warm start: another run's (--init_from), or SFT, then the evaluation before RL.
  if not resumed and init_from:
    state, before = _borrow_warm_start(init_from, template)
    summary.update(em_before_rl=before["em"], eval_before_rl=before, init_from=str(init_from))
    write_summary()
    ckpt.save(0, state.as_dict(), force=True)
    ckpt.wait()
  if state.data_state["phase"] == "init":
    state = _warm_start(s, state, writer)
    before = _evaluate(s, state.params, s.eval.split, s.eval.limit)
    summary.update(em_before_rl=before["em"], eval_before_rl=before)
    summary["warm_start_seconds"] = round(time.perf_counter() - start, 1)
    write_summary()
    writer.write("eval", 0, {f"{s.eval.split}/{k}": v for k, v in before.items()})
    ckpt.save(0, state.as_dict(), force=True)
    ckpt.wait()
    if rl.keep_warm_start:
      with checkpoint.Checkpointer(workdir / WARM_START) as keep:
        keep.save(0, state.as_dict(), metrics=before, force=True)
  if _judges(s) and state.step == 0 and "trimmer_before_rl" not in summary:
    # The starting policy's gate and Trimmer (evaluated every `eval.every` steps after).
    summary["trimmer_before_rl"] = trimmer_accuracy(task, state.params, task.judge_cases, s.refiner)
    write_summary()

  # ---- GRPO: step, dev evaluation, metrics, checkpoint.
  fns = step_fns(s)
  writer.skip_to(state.step)
  while state.step < rl.steps:
    state, row = grpo_step(s, fns, state)
    step = state.step
    if s.eval.every and step % s.eval.every == 0:
      dev = _evaluate(s, state.params, "dev", s.eval.dev_limit)
      row.update({f"dev/{k}": v for k, v in dev.items()})
      if _judges(s):
        acc = trimmer_accuracy(task, state.params, task.judge_cases, s.refiner)
        row.update({f"trimmer/{k}": v for k, v in acc.items()})
    if step % rl.log_every == 0 or step == rl.steps:
      writer.write("rl", step, row)
    if step % rl.checkpoint_every == 0 or step == rl.steps:
      ckpt.save(step, state.as_dict(), force=True)
  ckpt.wait()

  # ---- Evaluation after RL, the summary and the curves.
  after = _evaluate(s, state.params, s.eval.split, s.eval.limit)
  writer.write("eval", rl.steps, {f"{s.eval.split}/{k}": v for k, v in after.items()})
  summary.update(
    em_after_rl=after["em"],
    eval_after_rl=after,
    total_seconds=round(time.perf_counter() - start, 1),
  )
  write_summary()
  writer.close()
  plot_curves(metrics_path, workdir / "curves.png")
  ckpt.close()
  return summary
