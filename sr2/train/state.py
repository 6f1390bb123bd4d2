"""The training state: what a step changes, what a checkpoint holds, what a resume restores.

The training loop, the checkpoints and the benchmarks share this one dataclass. A
checkpoint stores it as a dict (`sr2.checkpoint`'s layout: arrays in one Orbax item, the
small JSON `data_state` in another); `as_dict` and `from_dict` are the boundary.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
from jax.sharding import NamedSharding, PartitionSpec

from sr2 import checkpoint, files
from sr2.configlib import ConfigError
from sr2.parallel import hosts
from sr2.rl import update
from sr2.train.setup import Setup, setup

WARM_START = "warm_start"  # the folder where a run keeps its warm start (rl.keep_warm_start)

# data_state["phase"]: "init" before the warm start, "rl" once GRPO may start.
PHASES = ("init", "rl")


@dataclasses.dataclass
class TrainState:
  """One run's state between GRPO steps."""

  params: Any  # the policy's params (sharded by their logical axes).
  # the frozen starting policy, the KL reference (a copy: the update donates `params`).
  ref_params: Any
  opt_state: Any  # the optimizer's state, sharded like the params.
  step: int  # GRPO steps done (0 before the first).
  # the PRNG key the next step splits (replicated over the mesh: with several processes a global
  # array, which every process saves and restores alike).
  rng: jax.Array
  # small JSON-able dict; `phase` is one of PHASES. The data position is `step` itself (step k reads
  # a fixed shuffle of the training questions at k).
  data_state: dict

  def __post_init__(self):
    phase = self.data_state.get("phase")
    if phase not in PHASES:
      raise ValueError(f"data_state['phase']={phase!r}; expected one of {PHASES}")

  def as_dict(self) -> dict[str, Any]:
    """The checkpoint's layout (no copies of the arrays)."""
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> TrainState:
    return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)})


def fresh_state(s: Setup) -> TrainState:
  """A newly initialised state: the shapes and shardings a checkpoint restores into."""
  rng = hosts.to_global(jax.random.key(s.seed), NamedSharding(s.mesh, PartitionSpec()))
  params, opt_state = update.init_sharded(s.task.model, s.opt, s.shardings, rng)
  return TrainState(
    params=params,
    ref_params=params,
    opt_state=opt_state,
    step=0,
    rng=rng,
    data_state={"phase": "init"},
  )


def borrow_warm_start(init_from, template: TrainState) -> tuple[TrainState, dict]:
  """The starting policy another run kept (`rl.keep_warm_start`) and its evaluation."""
  source = files.path(init_from) / WARM_START
  if not source.is_dir():
    raise ConfigError(
      f"--init_from {init_from}: no {WARM_START}/ there; run it with rl.keep_warm_start=True"
    )
  with checkpoint.Checkpointer(source) as keep:
    return TrainState.from_dict(keep.restore(0, like=template.as_dict())), keep.metrics(0)


def load_state(config, workdir: str, step: int | None = None) -> TrainState:
  """The training state saved in `workdir` (latest step by default), for inspection."""
  s = setup(config)
  with checkpoint.Checkpointer(workdir) as ckpt:
    return TrainState.from_dict(ckpt.restore(step, like=fresh_state(s).as_dict()))
