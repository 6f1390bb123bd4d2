"""Where GRPO starts: the warm start's SFT, or the checkpoint, and the policy's HF export.

The world's runs train from their fresh state's random init on the world's demonstrations;
QA runs load a checkpoint and, with `sft.steps > 0`, train it on the gold search
trajectories of their multi-hop train rows (`sr2.data.gold_search`) first. A run can
instead borrow the warm start another run kept (`--init_from`; `train.state`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from sr2.models import export
from sr2.parallel import hosts
from sr2.train import sft
from sr2.train.metrics import MetricWriter
from sr2.train.setup import Setup
from sr2.train.state import TrainState


def warm_start(s: Setup, state: TrainState, writer: MetricWriter) -> TrainState:
  """SFT (world), or the loaded checkpoint's params (QA), as the starting policy.

  With several processes each runs the same SFT on its own devices (same data, same
  seed), and the result is placed on the global mesh.
  """
  if s.task.sft_examples and s.sft.steps:
    if s.task.pretrained:  # SFT from the checkpoint, not from the fresh state's random init
      start = s.task.init_params(s.seed)
    else:
      start = hosts.local_params(state.params, s.local_mesh)

    def log(i, metrics):
      bar.update(1)
      if i % 10 == 0:
        writer.write("sft", i, metrics)

    with writer.task_bar("SFT", s.sft.steps) as bar:
      params, _ = sft.run_sft(
        s.task.model,
        start,
        s.sft_opt,
        s.task.sft_examples,
        steps=s.sft.steps,
        batch_size=s.sft.batch_size,
        pad_id=s.task.tokenizer.pad_id,
        seed=s.seed,
        log=log,
      )
    params = hosts.to_global(params, s.shardings.params)
  elif s.task.sft_examples:
    params = state.params
  else:
    params = hosts.to_global(s.task.init_params(s.seed), s.shardings.params)
  return dataclasses.replace(
    state,
    params=params,
    # A copy: the update donates `params`, which must not free the reference.
    ref_params=jax.tree.map(jnp.copy, params),
    opt_state=jax.jit(s.opt.init, out_shardings=s.shardings.opt_state)(params),
    step=0,
    data_state={"phase": "rl"},
  )


def export_policy(s: Setup, params, path) -> None:
  """The policy as an HF checkpoint directory (`rl.export_hf`), written by process 0."""
  if s.rl.export_hf:
    local = hosts.local_params(params, s.local_mesh)  # every process takes part
    if hosts.is_writer():
      export.save_hf_dir(path, s.task.model, local, s.task.tokenizer)
