"""The training job: (SFT warm start), GRPO with the optional Meta-Refiner, evaluation.

  python experiments/train.py --config configs/tiny_world.py --workdir DIR

Phases, each checkpointed so `--workdir` with a checkpoint resumes where it stopped:
  1. the task (rl/task.py): questions, BM25 index, tokenizer, model;
  2. SFT on gold trajectories (synthetic world; `sft.steps = 0` skips it);
  3. greedy evaluation on `eval.split` (EM before RL);
  4. GRPO steps: B questions x G rollouts, the Meta-Refiner if `refiner.enabled`, rewards
     (outcome EM, times 1 + process reward if `reward.process` is set), group advantages,
     the refiner's decisions as extra samples if `refiner.joint`, one sharded update (PPO
     epochs x mini-batches) against the frozen starting policy as KL reference; metrics
     every step, dev evaluation every `eval.every` steps;
  5. greedy evaluation again (EM after RL); `DIR/summary.json`, `DIR/metrics.jsonl`,
     TensorBoard events in `DIR/tensorboard`, and `DIR/curves.png`.

Host/device overlap: JAX dispatches device work asynchronously, so the reference
log-probs are queued as soon as the batch's tokens exist and computed while the host
assembles the rest of the batch, and a checkpoint is written by Orbax in the background
while the next step's rollouts run.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sr2 import checkpoint
from sr2.agent.refiner import RefinerConfig
from sr2.configlib import ConfigError, check_keys, from_config
from sr2.parallel import MeshConfig, make_mesh
from sr2.rl import grpo, joint, sft, update
from sr2.rl.collect import collect
from sr2.rl.evaluation import EvalConfig, evaluate, trimmer_accuracy
from sr2.rl.metrics import MetricWriter, plot_curves
from sr2.rl.optim import OptConfig, make_optimizer
from sr2.rl.rewards import RewardConfig, make_reward_fn
from sr2.rl.task import Task, build_task
from sr2.sampling import Sampler, SamplingConfig, Temperature

_REQUIRED = ("model", "data", "rollout", "sft", "rl", "grpo", "opt", "sft_opt", "mesh", "eval")
_GROUPS = (*_REQUIRED, "seed", "refiner", "reward")


@dataclasses.dataclass(frozen=True)
class RLConfig:
  """The GRPO loop (config.rl).

  Attributes:
    steps: GRPO steps.
    prompts_per_step: B questions per step, each sampled `grpo.group_size` times.
    temperature: rollout sampling temperature.
    max_len: row capacity of the sampler, tokens.
    checkpoint_every: steps between checkpoints (the last step is always saved).
    log_every: steps between metric lines.
    probe_every: steps between the drivers' counterfactual probes (rl/drivers.py); 0 = never.
    progress: show a progress bar on the console.
    keep_warm_start: also keep the starting policy (after SFT) in `workdir/warm_start`, so
      other runs can start from it (`--init_from`), e.g. the arms of an ablation.
  """

  steps: int = 100
  prompts_per_step: int = 8
  temperature: float = 1.0
  max_len: int = 1024
  checkpoint_every: int = 25
  log_every: int = 1
  probe_every: int = 0
  progress: bool = True
  keep_warm_start: bool = False

  def __post_init__(self):
    for name in ("steps", "prompts_per_step", "max_len", "checkpoint_every", "log_every"):
      if getattr(self, name) < 1:
        raise ValueError(f"rl.{name}={getattr(self, name)}; expected >= 1")
    if self.probe_every < 0 or not self.temperature > 0:
      raise ValueError("rl.probe_every must be >= 0 and rl.temperature > 0")


@dataclasses.dataclass(frozen=True)
class SFTConfig:
  """The warm start (config.sft); synthetic world only."""

  steps: int = 300  # optimizer steps on gold trajectories; 0 = none
  batch_size: int = 16  # trajectories per step


@dataclasses.dataclass(frozen=True)
class _Setup:
  task: Task
  rl: RLConfig
  sft: SFTConfig
  eval: EvalConfig
  grpo: grpo.GRPOConfig
  refiner: RefinerConfig
  reward: RewardConfig
  opt: Any
  sft_opt: Any
  shardings: Any
  seed: int


def check_config(config) -> dict[str, Any]:
  """The typed config groups; raises on any unknown or bad field, before any work."""
  check_keys(config.keys(), _GROUPS, "config", required=_REQUIRED)
  typed = dict(
    rl=from_config(RLConfig, config.rl, "config.rl"),
    sft=from_config(SFTConfig, config.sft, "config.sft"),
    eval=from_config(EvalConfig, config.eval, "config.eval"),
    grpo=from_config(grpo.GRPOConfig, config.grpo, "config.grpo"),
    refiner=from_config(RefinerConfig, config.get("refiner", {}), "config.refiner"),
    reward=from_config(RewardConfig, config.get("reward", {}), "config.reward"),
    opt=make_optimizer(from_config(OptConfig, config.opt, "config.opt")),
    sft_opt=make_optimizer(from_config(OptConfig, config.sft_opt, "config.sft_opt")),
    mesh=from_config(MeshConfig, config.mesh, "config.mesh"),
  )
  rows = batch_rows(typed["rl"], typed["grpo"], typed["refiner"])
  if rows % typed["grpo"].num_minibatches:
    raise ConfigError(
      f"the batch's {rows} rows do not split into grpo.num_minibatches="
      f"{typed['grpo'].num_minibatches} equal mini-batches"
    )
  return typed


def _setup(config) -> _Setup:
  """Typed config groups and the task."""
  typed = check_config(config)
  mesh = make_mesh(typed.pop("mesh"))
  task = build_task(config)
  rows = batch_rows(typed["rl"], typed["grpo"], typed["refiner"])
  shardings = update.make_shardings(task.model, typed["opt"], mesh, batch_rows=rows)
  return _Setup(task=task, shardings=shardings, seed=int(config.get("seed", 0)), **typed)


def batch_rows(rl: RLConfig, g: grpo.GRPOConfig, refiner: RefinerConfig) -> int:
  """Rows of every update: B·G trajectories, plus up to N_max decisions each if joint."""
  n = rl.prompts_per_step * g.group_size
  return n * (1 + refiner.max_revisions) if refiner.enabled and refiner.joint else n


def _template(s: _Setup) -> dict:
  rng = jax.random.key(s.seed)
  params, opt_state = update.init_sharded(s.task.model, s.opt, s.shardings, rng)
  # ref_params: the frozen starting policy, the KL reference; kept in every checkpoint.
  return {
    "params": params,
    "ref_params": params,
    "opt_state": opt_state,
    "step": 0,
    "rng": rng,
    "data_state": {"phase": "init"},
  }


def load_state(config, workdir: str, step: int | None = None) -> dict:
  """The training state saved in `workdir` (latest step by default), for inspection."""
  s = _setup(config)
  with checkpoint.Checkpointer(workdir) as ckpt:
    return ckpt.restore(step, like=_template(s))


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


def _eval(s: _Setup, params, split: str, limit: int) -> dict:
  qs = s.task.split(split)
  qs = qs[:limit] if limit else qs
  refiner = s.refiner if s.eval.use_refiner else None
  return evaluate(
    s.task, params, qs, batch_size=s.eval.batch_size, max_len=s.rl.max_len, refiner=refiner
  )


def _warm_start(s: _Setup, state: dict, writer: MetricWriter) -> dict:
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


class RLLoop:
  """One GRPO step at a time: collect, advantages, batch, reference log-probs, update."""

  def __init__(self, s: _Setup):
    self.s = s
    task = s.task
    self.reward_fn = make_reward_fn(s.reward, task)
    self.update = update.make_update(task.model, s.grpo, s.opt, s.shardings)
    self.sampler = Sampler(
      task.model,
      task.tokenizer,
      SamplingConfig(max_len=s.rl.max_len, method=Temperature(s.rl.temperature), logprobs="raw"),
    )
    self.train_q = task.split("train")
    self.order = np.random.default_rng(s.seed).permutation(len(self.train_q))
    self.rows = batch_rows(s.rl, s.grpo, s.refiner)

  def questions(self, step: int) -> list:
    """Step `step`'s B questions (a fixed shuffle, cycled), each repeated G times."""
    b, g = self.s.rl.prompts_per_step, self.s.grpo.group_size
    n = len(self.order)
    return [self.train_q[self.order[((step - 1) * b + i) % n]] for i in range(b) for _ in range(g)]

  def step(self, params, opt_state, ref_params, step: int, rng):
    """Returns (params, opt_state, rng, metrics row) after GRPO step `step` (1-based)."""
    s, task = self.s, self.s.task
    t0 = time.perf_counter()
    qs = self.questions(step)
    rng, key, shuffle = jax.random.split(rng, 3)
    probe = bool(s.rl.probe_every) and step % s.rl.probe_every == 0
    got = collect(
      task,
      self.sampler,
      params,
      qs,
      self.reward_fn,
      s.refiner,
      rng=key,
      np_rng=np.random.default_rng([s.seed, step]),
      probe=probe,
    )
    adv, adv_metrics = grpo.group_advantages(
      jnp.asarray(got.reward),
      s.grpo.group_size,
      scale_by_std=s.grpo.scale_by_std,
      eps=s.grpo.adv_eps,
    )
    adv = np.asarray(adv)
    decisions = got.decisions if s.refiner.enabled and s.refiner.joint else None
    batch, batch_info = joint.assemble(
      got.trajectories, adv, decisions, rows=self.rows, pad_id=task.tokenizer.pad_id
    )
    # Queued on the device; the host goes on sharding the batch meanwhile.
    batch["ref_logp"] = update.reference_logprobs(
      task.model, ref_params, batch["tokens"], s.grpo.logprob_chunk or None
    )
    t_update = time.perf_counter()
    params, opt_state, m = self.update(
      params, opt_state, update.put_batch(batch, s.shardings), shuffle
    )
    m = jax.device_get(m)
    if m["nonfinite"] and s.grpo.nonfinite == "stop":
      raise FloatingPointError(
        f"GRPO step {step}: {int(m['nonfinite'])} update(s) had a NaN/Inf loss or gradient "
        "(grpo.nonfinite='stop'; 'skip' would skip them and go on)"
      )
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
    return params, opt_state, rng, row


WARM_START = "warm_start"


def _borrow_warm_start(init_from, template) -> tuple[dict, dict]:
  """The starting policy another run kept (`rl.keep_warm_start`) and its evaluation."""
  source = pathlib.Path(init_from) / WARM_START
  if not source.is_dir():
    raise ConfigError(
      f"--init_from {init_from}: no {WARM_START}/ there; run it with rl.keep_warm_start=True"
    )
  with checkpoint.Checkpointer(source) as keep:
    return keep.restore(0, like=template), keep.metrics(0)


def train_and_evaluate(config, workdir: str, init_from: str | None = None) -> dict:
  """Runs the whole job (see the module docstring); returns the summary.

  `init_from`: a workdir whose kept warm start (`rl.keep_warm_start`) replaces this run's
  own SFT, for runs that must share a starting policy; ignored when resuming.
  """
  s = _setup(config)
  task, rl = s.task, s.rl
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  start = time.perf_counter()
  task.tokenizer.save(workdir / "tokenizer")
  ckpt = checkpoint.Checkpointer(workdir, max_to_keep=2)
  template = _template(s)
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

  loop = RLLoop(s)
  params, opt_state, rng = state["params"], state["opt_state"], state["rng"]
  ref_params = state["ref_params"]
  writer.skip_to(int(state["step"]))
  for step in range(int(state["step"]) + 1, rl.steps + 1):
    params, opt_state, rng, row = loop.step(params, opt_state, ref_params, step, rng)
    if s.eval.every and step % s.eval.every == 0:
      dev = _eval(s, params, "dev", s.eval.dev_limit)
      row.update({f"dev/{k}": v for k, v in dev.items()})
      if task.trimmer_probes and s.refiner.enabled:
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
