"""The training job, top to bottom: setup, warm start, GRPO steps, evaluation.

  python experiments/train.py --config configs/tiny_world.py --workdir DIR

`train_and_evaluate` reads in the order a run happens:
  1. setup: the checked config, the task (questions, BM25 index, tokenizer, model), the
     checkpoints (a workdir with one resumes where it stopped);
  2. warm start (train/warm_start.py): SFT on the world's demonstrations, or the
     checkpoint's params (QA tasks) with SFT on gold search trajectories when `sft.steps`
     is set, or the warm start another run kept (`--init_from`);
  3. evaluation before RL: greedy EM on `eval.split`; with the Meta-Refiner on the
     synthetic world also its gate and Trimmer accuracy (`trimmer_before_rl`);
  4. GRPO steps (`grpo_step`: collect -> advantages -> batch -> update -> metrics), each
     against the frozen starting policy as KL reference; a dev evaluation every
     `eval.every` steps; a checkpoint every `rl.checkpoint_every` steps;
  5. evaluation after RL; `DIR/summary.json`, `DIR/metrics.jsonl`, TensorBoard events in
     `DIR/tensorboard` and `DIR/curves.png`.

Checkpoints are written by Orbax in the background while the next step's rollouts run.

With several processes (`jax.distributed`; sr2/parallel/hosts.py) each process collects its
share of a step's prompts on its own devices and the update runs on all of them; only
process 0 writes metrics, the summary and the curves.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from sr2 import checkpoint, files
from sr2.parallel import hosts
from sr2.rl import batch as batch_lib
from sr2.rl import grpo, update
from sr2.sampling import Sampler, SamplingConfig, Temperature
from sr2.train import records, samples, warm_start
from sr2.train.collect import collect
from sr2.train.evaluation import evaluate_policy, trimmer_accuracy
from sr2.train.metrics import MetricWriter, NullWriter, plot_curves
from sr2.train.rewards import make_reward_fn
from sr2.train.setup import Setup, batch_rows, setup
from sr2.train.state import WARM_START, TrainState, borrow_warm_start, fresh_state
from sr2.train.task import Question

# --------------------------------------------------------------------------- one GRPO step


@dataclasses.dataclass(frozen=True)
class StepFns:
  """What every GRPO step of a run calls, built once (`step_fns`)."""

  sampler: Sampler  # rollouts: temperature `rl.temperature`, raw log-probs, rows over devices
  update: Callable  # the jitted, sharded update (`update.make_update`)
  reference: Callable  # the jitted, sharded reference log-probs (`update.make_reference`)
  reward_fn: Callable  # (questions, trajectories) -> (outcome, process, total)
  train_questions: list[Question]
  order: np.ndarray  # a fixed shuffle of the training questions, cycled
  rows: int  # rows of every update (`setup.batch_rows`), all processes together
  share: range  # this process's rows of each step's B x G (all of them with one process)


def step_fns(s: Setup) -> StepFns:
  task = s.task
  sampling = SamplingConfig(
    max_len=s.rl.max_len, method=Temperature(s.rl.temperature), logprobs="raw"
  )
  train_questions = task.split("train")
  prompts = hosts.share(s.rl.prompts_per_step, "rl.prompts_per_step")  # whole groups
  return StepFns(
    sampler=Sampler(task.model, task.tokenizer, sampling, mesh=s.local_mesh),
    update=update.make_update(task.model, s.grpo, s.opt, s.shardings),
    reference=update.make_reference(
      task.model, s.shardings, s.grpo.logprob_chunk or None, s.grpo.micro_batch_rows or None
    ),
    reward_fn=make_reward_fn(s.reward, task),
    train_questions=train_questions,
    order=np.random.default_rng(s.seed).permutation(len(train_questions)),
    rows=batch_rows(s.rl, s.grpo, s.refiner),
    share=range(prompts.start * s.grpo.group_size, prompts.stop * s.grpo.group_size),
  )


def step_questions(s: Setup, fns: StepFns, step: int) -> list[Question]:
  """Step `step`'s (1-based) B questions, each repeated G times."""
  b, g, n = s.rl.prompts_per_step, s.grpo.group_size, len(fns.order)
  qs = fns.train_questions
  return [qs[fns.order[((step - 1) * b + i) % n]] for i in range(b) for _ in range(g)]


def grpo_step(s: Setup, fns: StepFns, state: TrainState) -> tuple[TrainState, dict, list]:
  """GRPO step `state.step + 1`: the new state (params donated), its metrics row, and on
  steps `rl.trajectories_every` divides its first `rl.trajectories_rows` rollouts
  (`samples.step_rows`; every process's, on every process), else []."""
  task, step = s.task, state.step + 1
  t0 = time.perf_counter()
  rng, key, shuffle = jax.random.split(state.rng, 3)

  # Collect: this process's rows of the B x G rollouts, the Meta-Refiner's cuts and
  # regenerations, the rewards, and every `rl.probe_every` steps the drivers' probes.
  questions = step_questions(s, fns, step)[fns.share.start : fns.share.stop]
  probe = bool(s.rl.probe_every) and step % s.rl.probe_every == 0
  got = collect(
    task,
    fns.sampler,
    hosts.local_params(state.params, s.local_mesh),
    questions,
    fns.reward_fn,
    s.refiner,
    rng=hosts.local_key(key),
    seed=(s.seed, step),
    first_row=fns.share.start,
    probe=probe,
  )

  # Advantages: rewards normalised within each group of G (a process holds whole groups).
  adv, adv_metrics = grpo.group_advantages(
    jnp.asarray(got.reward), s.grpo.group_size, scale_by_std=s.grpo.scale_by_std, eps=s.grpo.adv_eps
  )
  adv = np.asarray(adv)

  # Batch: the trajectories, plus the refiner's decision rows under joint optimisation;
  # every process's rows, one token length, as global arrays; the reference log-probs.
  decisions = got.decisions if s.refiner.enabled and s.refiner.joint else None
  assemble = lambda length=None: batch_lib.assemble_batch(
    got.trajectories,
    adv,
    decisions,
    rows=fns.rows // jax.process_count(),
    pad_id=task.tokenizer.pad_id,
    decision_weight=s.refiner.decision_weight,
    length=length,
  )
  batch, batch_info = assemble()
  length = int(hosts.gather(np.asarray([batch_info["batch_len"]])).max())
  if length != batch_info["batch_len"]:
    batch, batch_info = assemble(length)
  batch = hosts.global_batch(batch, s.shardings.batch)
  batch["ref_logp"] = fns.reference(state.ref_params, batch["tokens"])

  # Update: PPO epochs x mini-batches in one jitted program; params are donated.
  t_update = time.perf_counter()
  params, opt_state, m = fns.update(state.params, state.opt_state, batch, shuffle)
  m = {k: float(hosts.to_host(v)) for k, v in m.items()}
  if m["nonfinite"] and s.grpo.nonfinite == "stop":
    raise FloatingPointError(
      f"GRPO step {step}: {int(m['nonfinite'])} update(s) had a NaN/Inf loss or gradient "
      "(grpo.nonfinite='stop'; 'skip' would skip them and go on)"
    )

  # Metrics: the step's rollouts (every process's rows), the update, the batch, timings.
  trajs = got.trajectories
  per_row = hosts.gather(
    np.asarray(
      [
        (
          got.reward[i],
          got.outcome[i],
          got.process[i],
          t.num_searches,
          t.num_turns,
          t.invalid_turns,
          sum(t.loss_mask),
          len(t.response_ids),
        )
        for i, t in enumerate(trajs)
      ],
      np.float64,
    )
  )
  means = per_row.mean(axis=0)
  names = ("reward", "em", "process", "searches", "turns", "invalid_turns", "response_tokens")
  row = {name: float(v) for name, v in zip(names, means, strict=False)}
  host_metrics = {**batch_info, **got.metrics, **{k: float(v) for k, v in adv_metrics.items()}}
  if jax.process_count() > 1:
    sums = ("batch_rows", "decision_rows", "refiner/decisions")
    host_metrics = hosts.merge_metrics(hosts.gather_json(host_metrics), sums)
  row.update(
    {
      **m,
      **host_metrics,
      "update_s": time.perf_counter() - t_update,
      "step_s": time.perf_counter() - t0,
    }
  )
  row["tokens_per_s"] = float(per_row[:, 7].sum()) / row["step_s"]
  kept = []
  if s.rl.trajectories_every and step % s.rl.trajectories_every == 0:
    mine = samples.step_rows(got, step, fns.share.start, s.rl.trajectories_rows)
    kept = [r for rows in hosts.gather_json(mine) for r in rows]
  new = dataclasses.replace(state, params=params, opt_state=opt_state, step=step, rng=rng)
  return new, row, kept


# --------------------------------------------------------------------------- the phases


def _evaluate(s: Setup, params, split: str, limit: int, writer) -> dict:
  """Greedy evaluation of `params` (global) on `split`; each process runs its share."""
  qs = s.task.split(split)
  qs = qs[:limit] if limit else qs
  refiner = s.refiner if s.eval.use_refiner else None
  share = hosts.uneven_share(len(qs))
  with writer.task_bar(f"eval {split}", len(share)) as bar:
    return evaluate_policy(
      s.task,
      hosts.local_params(params, s.local_mesh),
      qs,
      batch_size=s.eval.batch_size,
      max_len=s.rl.max_len,
      refiner=refiner,
      share=share,
      gather=hosts.gather,
      progress=bar.update,
    )


def _judges(s: Setup) -> bool:
  """Whether the run measures its gate and Trimmer (a refiner run on the synthetic world)."""
  return bool(s.task.judge_cases) and s.refiner.enabled


# --------------------------------------------------------------------------- the job


def train_and_evaluate(
  config, workdir: str, init_from: str | None = None, allow_config_change: bool = False
) -> dict:
  """Runs the whole job (see the module docstring); returns the summary.

  `init_from`: a workdir whose kept warm start (`rl.keep_warm_start`) replaces this run's
  own SFT, for runs that must share a starting policy; ignored when resuming.
  `allow_config_change`: resume even if the config differs from the run's config.json.
  """
  # ---- Setup: the run record, config, task, checkpoints, metric files (process 0 writes).
  workdir = files.path(workdir)  # local or gs://
  if checkpoint.has_checkpoint(workdir):  # before any work: a changed config is refused by name
    records.check_resume(workdir, config, allow_config_change)
  s = setup(config)
  task, rl = s.task, s.rl
  writes = hosts.is_writer()
  start = time.perf_counter()
  ckpt = checkpoint.Checkpointer(workdir, max_to_keep=2)
  resumed = ckpt.latest_step() is not None
  template = fresh_state(s)
  state = TrainState.from_dict(ckpt.restore(like=template.as_dict())) if resumed else template
  if writes:
    workdir.mkdir(parents=True, exist_ok=True)
    log_file = records.log_to_file(workdir)
    records.write(workdir, config, resumed_at=state.step if resumed else None)
    with files.local_dir(workdir / "tokenizer") as folder:
      task.tokenizer.save(folder)
  if resumed:
    logging.info("resuming %s from step %d", os.fspath(workdir), state.step)
  metrics_path, summary_path = workdir / "metrics.jsonl", workdir / "summary.json"
  summary = json.loads(summary_path.read_text()) if resumed and summary_path.exists() else {}
  if writes and resumed:
    records.drop_rows_after(metrics_path, state.step)
  elif writes:  # what a run killed before its first checkpoint left is redone from scratch
    metrics_path.unlink(missing_ok=True)
    summary_path.unlink(missing_ok=True)

  def write_summary():
    if writes:
      summary_path.write_text(json.dumps(summary, indent=1))

  writer = (
    MetricWriter(
      workdir,
      progress_total=rl.steps if rl.progress else None,
      progress_desc="GRPO",
      log=log_file.line,
    )
    if writes
    else NullWriter()
  )

  # ---- Warm start: another run's (--init_from), or SFT, then the evaluation before RL.
  if not resumed and init_from:
    state, before = borrow_warm_start(init_from, template)
    summary.update(em_before_rl=before["em"], eval_before_rl=before, init_from=str(init_from))
    write_summary()
    ckpt.save(0, state.as_dict(), force=True)
    ckpt.wait()
  if state.data_state["phase"] == "init":
    state = warm_start.warm_start(s, state, writer)
    before = _evaluate(s, state.params, s.eval.split, s.eval.limit, writer)
    summary.update(em_before_rl=before["em"], eval_before_rl=before)
    if task.sft_notes:
      summary["sft_data"] = task.sft_notes
    summary["warm_start_seconds"] = round(time.perf_counter() - start, 1)
    write_summary()
    writer.write("eval", 0, {f"{s.eval.split}/{k}": v for k, v in before.items()})
    ckpt.save(0, state.as_dict(), force=True)
    ckpt.wait()
    if rl.keep_warm_start:
      with checkpoint.Checkpointer(workdir / WARM_START) as keep:
        keep.save(0, state.as_dict(), metrics=before, force=True)
    warm_start.export_policy(s, state.params, workdir / WARM_START / "hf")
  if _judges(s) and state.step == 0 and "trimmer_before_rl" not in summary:
    # The starting policy's gate and Trimmer (evaluated every `eval.every` steps after).
    summary["trimmer_before_rl"] = trimmer_accuracy(
      task, hosts.local_params(state.params, s.local_mesh), task.judge_cases, s.refiner
    )
    write_summary()

  # ---- GRPO: step, dev evaluation, metrics, checkpoint.
  fns = step_fns(s)
  writer.skip_to(state.step)
  while state.step < rl.steps:
    state, row, kept = grpo_step(s, fns, state)
    step = state.step
    if kept and writes:
      samples.write_step(workdir, step, kept)
    if s.eval.every and step % s.eval.every == 0:
      dev = _evaluate(s, state.params, "dev", s.eval.dev_limit, writer)
      row.update({f"dev/{k}": v for k, v in dev.items()})
      if _judges(s):
        local = hosts.local_params(state.params, s.local_mesh)
        acc = trimmer_accuracy(task, local, task.judge_cases, s.refiner)
        row.update({f"trimmer/{k}": v for k, v in acc.items()})
    if step % rl.log_every == 0 or step == rl.steps:
      writer.write("rl", step, row)
    if step % rl.checkpoint_every == 0 or step == rl.steps:
      ckpt.save(step, state.as_dict(), force=True)
  ckpt.wait()

  # ---- Evaluation after RL, the summary and the curves.
  if rl.steps:
    after = _evaluate(s, state.params, s.eval.split, s.eval.limit, writer)
  else:  # no GRPO step: the policy is the warm start, evaluated above
    after = summary["eval_before_rl"]
  writer.write("eval", rl.steps, {f"{s.eval.split}/{k}": v for k, v in after.items()})
  summary.update(
    em_after_rl=after["em"],
    eval_after_rl=after,
    total_seconds=round(time.perf_counter() - start, 1),
  )
  write_summary()
  writer.close()
  warm_start.export_policy(s, state.params, workdir / "final" / "hf")
  if writes:
    plot_curves(metrics_path, workdir / "curves.png")
    records.stop_logging(log_file)
  ckpt.close()
  return summary
