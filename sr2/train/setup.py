"""A run's setup: the config checked into typed groups, the mesh's shardings, the task.

`setup(config)` validates every group before anything loads or compiles (an unknown or
bad field fails here, named), builds the device mesh and the task (questions, retriever,
tokenizer, model), and returns it all as one frozen `Setup` that the training loop
(train/loop.py) and the benchmarks read.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jax.sharding import Mesh

from sr2.agent.refiner import RefinerConfig
from sr2.configlib import ConfigError, check_ints, check_keys, from_config
from sr2.parallel import MeshConfig, hosts, make_mesh
from sr2.rl import grpo, update
from sr2.rl.optim import OptConfig, make_optimizer
from sr2.train.evaluation import TrainEvalConfig
from sr2.train.rewards import RewardConfig
from sr2.train.task import Task, build_task

_REQUIRED = ("model", "data", "rollout", "sft", "rl", "grpo", "opt", "sft_opt", "mesh", "eval")
_GROUPS = (*_REQUIRED, "seed", "refiner", "reward")


@dataclasses.dataclass(frozen=True)
class RLConfig:
  """The GRPO loop (config.rl)."""

  steps: int = 100  # GRPO steps (0: the warm start and its evaluation only).
  prompts_per_step: int = 8  # B questions per step, each sampled `grpo.group_size` times.
  temperature: float = 1.0  # rollout sampling temperature.
  max_len: int = 1024  # row capacity of the sampler, tokens.
  checkpoint_every: int = 25  # steps between checkpoints (the last step is always saved).
  log_every: int = 1  # steps between metric lines.
  # steps between the drivers' counterfactual probes (rl/drivers.py); 0 = never.
  probe_every: int = 0
  progress: bool = True  # show a progress bar on the console.
  # also keep the starting policy (after SFT) in `workdir/warm_start`, so other runs can start from
  # it (`--init_from`), e.g. the arms of an ablation.
  keep_warm_start: bool = False
  # steps between samples of the rollouts written to `workdir/trajectories/step_N.jsonl`
  # (train/samples.py); 0 = never.
  trajectories_every: int = 0
  trajectories_rows: int = 8  # rollouts in each sample (the step's first rows).
  # write the starting policy and the final one as HF checkpoint directories,
  # `workdir/warm_start/hf` and `workdir/final/hf` (sr2/models/export.py).
  export_hf: bool = False

  def __post_init__(self):
    names = ("prompts_per_step", "max_len", "checkpoint_every", "log_every")
    check_ints(self, "rl", names, error=ValueError)
    names = ("steps", "probe_every", "trajectories_every")  # steps = 0: the warm start only
    check_ints(self, "rl", names, minimum=0, error=ValueError)
    check_ints(self, "rl", ("trajectories_rows",), error=ValueError)
    if not self.temperature > 0:
      raise ValueError(f"rl.temperature={self.temperature}; expected > 0")


@dataclasses.dataclass(frozen=True)
class SFTConfig:
  """The warm start (config.sft): the world's demonstrations, or QA data's gold search
  trajectories (`sr2.data.gold_search`)."""

  steps: int = 300  # optimizer steps on gold trajectories; 0 = none
  batch_size: int = 16  # trajectories per step


@dataclasses.dataclass(frozen=True)
class Setup:
  """A checked config's typed groups, with the task, the shardings and the seed.

  `mesh` spans every process's devices (the update's); `local_mesh` is this process's part
  of it (its rollouts and evaluations; the same mesh with one process).
  """

  task: Task
  rl: RLConfig
  sft: SFTConfig
  eval: TrainEvalConfig
  grpo: grpo.GRPOConfig
  refiner: RefinerConfig
  reward: RewardConfig
  opt: Any
  sft_opt: Any
  shardings: Any
  seed: int
  mesh: Mesh
  local_mesh: Mesh


def check_config(config) -> dict[str, Any]:
  """The typed config groups; raises on any unknown or bad field, before any work."""
  check_keys(config.keys(), _GROUPS, "config", required=_REQUIRED)
  typed = dict(
    rl=from_config(RLConfig, config.rl, "config.rl"),
    sft=from_config(SFTConfig, config.sft, "config.sft"),
    eval=from_config(TrainEvalConfig, config.eval, "config.eval"),
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
  try:
    mesh = make_mesh(typed.pop("mesh"))
    hosts.share(typed["rl"].prompts_per_step, "rl.prompts_per_step")
  except ValueError as e:
    raise ConfigError(f"config.mesh / processes: {e}") from None
  task = build_task(config)
  task.judge_fn(typed["refiner"])  # an oracle refiner on a task without plans: named here
  rows = batch_rows(typed["rl"], typed["grpo"], typed["refiner"])
  shardings = update.make_shardings(task.model, typed["opt"], mesh, batch_rows=rows)
  return Setup(
    task=task,
    shardings=shardings,
    seed=int(config.get("seed", 0)),
    mesh=mesh,
    local_mesh=hosts.local_mesh(mesh),
    **typed,
  )


def batch_rows(rl: RLConfig, g: grpo.GRPOConfig, refiner: RefinerConfig) -> int:
  """Rows of every update: B·G trajectories, plus up to N_max decisions each if joint."""
  n = rl.prompts_per_step * g.group_size
  return n * (1 + refiner.max_revisions) if refiner.enabled and refiner.joint else n
