"""The GRPO loop and its setup: typed config groups, sharded state, one step at a time.

`RLLoop.step` is one GRPO step: B questions x G rollouts (the Meta-Refiner cuts and
regenerates if `refiner.enabled`), rewards (outcome EM, times 1 + process reward if
`reward.process` is set), group advantages, the refiner's decisions as extra samples if
`refiner.joint`, the reference log-probs, and one sharded update (PPO epochs x
mini-batches). The job around it (warm start, evaluations, checkpoints, summary) is
rl/job.py.

Host/device overlap: JAX dispatches device work asynchronously, so the reference
log-probs are queued as soon as the batch's tokens exist and computed while the host
shards the batch.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sr2.agent.refiner import RefinerConfig
from sr2.configlib import ConfigError, check_keys, from_config
from sr2.parallel import MeshConfig, make_mesh
from sr2.rl import grpo, joint, update
from sr2.rl.collect import collect
from sr2.rl.evaluation import EvalConfig
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
class Setup:
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
  mini, micro = rows // typed["grpo"].num_minibatches, typed["grpo"].micro_batch_rows
  if micro and mini % micro:
    raise ConfigError(
      f"mini-batches of {mini} rows do not split into grpo.micro_batch_rows={micro}"
    )
  return typed


def setup(config) -> Setup:
  """Typed config groups, the mesh's shardings and the task."""
  typed = check_config(config)
  mesh = make_mesh(typed.pop("mesh"))
  task = build_task(config)
  rows = batch_rows(typed["rl"], typed["grpo"], typed["refiner"])
  shardings = update.make_shardings(task.model, typed["opt"], mesh, batch_rows=rows)
  return Setup(task=task, shardings=shardings, seed=int(config.get("seed", 0)), **typed)


def batch_rows(rl: RLConfig, g: grpo.GRPOConfig, refiner: RefinerConfig) -> int:
  """Rows of every update: B·G trajectories, plus up to N_max decisions each if joint."""
  n = rl.prompts_per_step * g.group_size
  return n * (1 + refiner.max_revisions) if refiner.enabled and refiner.joint else n


def fresh_state(s: Setup) -> dict:
  """A newly initialised training state (the shapes a checkpoint restores into)."""
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


class RLLoop:
  """One GRPO step at a time: collect, advantages, batch, reference log-probs, update."""

  def __init__(self, s: Setup):
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
      got.trajectories,
      adv,
      decisions,
      rows=self.rows,
      pad_id=task.tokenizer.pad_id,
      decision_weight=s.refiner.decision_weight,
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
