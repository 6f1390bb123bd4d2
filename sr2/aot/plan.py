"""What one GRPO step of a config compiles, for a TPU slice: the model, the sizes, the mesh.

The programs (`PROGRAMS`), at the shapes a step runs them:
  update              rl/update.update_step, params and optimizer state donated: the batch of
                      `setup.batch_rows` rows x `rl.max_len` tokens (the longest the batch can
                      be), with reference log-probs and a shuffle key, as the loop passes it.
  reference_logprobs  rl/update.reference_logprobs over the same tokens.
  extend              sampling/kernels.extend as a prefill: `rollout_rows` empty rows each
                      get a prompt chunk of `prefill_tokens` tokens, attending over the
                      chunk. Default min(4096, rl.max_len), bucketed as the sampler buckets
                      chunks: a prompt as long as the row where rows are short (the tiny
                      world's 1024), else 4096, well above the QA prompts' few hundred.
  decode              sampling/kernels.decode (the sampler's while loop, up to
                      `rollout.max_turn_tokens` new tokens per call) attending over the whole
                      row capacity, as the last turns of long rows do.
  truncate            sampling/kernels.truncate (the Meta-Refiner's cuts).
  score_after         sampling/kernels.score_after, the "continuation" refiner's question:
                      a chunk of `SCORE_CHUNK` tokens and the choices "0".."max_turns",
                      attending over the row capacity.
  judge               agent/scoring._next_token_logprobs, the "table12" refiner's judgement:
                      `refiner.judge_rows` prompts a pass (all B*G when 0) of
                      `refiner.max_prompt_tokens` tokens (bucketed) and max_turns + 1 choices.

The update and the reference log-probs compile for the whole slice (`SLICE_PROGRAMS`).
The rollout programs compile for one host's chips (`parallel.hosts.local_mesh`), since
each training process rolls out its share of the step on its own chips: `rollout_rows`
rows (default `config.rollout.batch_rows`, else all B*G), sharded over that mesh's data x
fsdp axes, their KV cache [rows, rl.max_len, kv_heads, head_dim] per layer sharded by
`transformer.CACHE_AXES` (kv heads over `tensor` where it divides them).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from jax.sharding import Mesh

from sr2.agent.rollout import RolloutConfig
from sr2.configlib import ConfigError, from_config
from sr2.models import weights
from sr2.models.config import PRESETS, ModelConfig, ModelSpec
from sr2.parallel import AXES
from sr2.sampling.state import DEFAULT_BUCKETS, bucket
from sr2.train.setup import batch_rows, check_config
from sr2.train.task import world_model_config

# The programs over every chip of the slice; the others run on one host's chips.
SLICE_PROGRAMS = ("update", "reference_logprobs")
PROGRAMS = (
  "update",
  "reference_logprobs",
  "extend",
  "decode",
  "truncate",
  "score_after",
  "judge",
)
DEFAULT_PREFILL_TOKENS = 4096  # prompt chunk of `extend`, capped at the row capacity
SCORE_CHUNK = 128  # tokens of the continuation refiner's question (66 in the tiny world)
EOS_IDS = 2  # end-of-turn ids the decode loop checks (Qwen: <|im_end|>, <|endoftext|>)


# --------------------------------------------------------------------------- model


def preset_name(source: str) -> str:
  """The preset (`sr2.models.config.PRESETS`) that a `model.source` names.

  `preset:<name>`, or the last path component of an HF directory or named model,
  lower-cased, with "-instruct" and ".gguf" dropped when the preset has no such variant:
  "/path/to/Qwen2.5-7B" -> "qwen2.5-7b", "smollm2-135m-instruct" -> "smollm2-135m".
  """
  name = source.removeprefix("preset:")
  base = pathlib.PurePath(name).name.lower().removesuffix(".gguf")
  for candidate in (base, base.removesuffix("-instruct")):
    if candidate in PRESETS:
      return candidate
  raise ConfigError(
    f"config.model.source={source!r} names no model preset ({sorted(PRESETS)}); point it at "
    "a directory with config.json or name a preset as preset:<name>"
  )


def model_config(config) -> ModelConfig:
  """The ModelConfig a training config trains, without loading weights, data or a tokenizer.

  The synthetic world (data.source "world"): the fields of `config.model` with the
  vocabulary `config.data.vocab_size` (the size its tokenizer is trained to). QA tasks:
  `config.model.source`'s config.json when it is a checkpoint directory here, else the
  preset of the same name (`preset_name`), with the spec's dtype, layer layout and remat.
  """
  if config.data.get("source", "world") == "world":
    return world_model_config(config, config.data.vocab_size)
  spec = from_config(ModelSpec, config.model, "config.model")
  own = {f.name for f in dataclasses.fields(ModelConfig)}
  kept = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec) if f.name in own}
  hf = pathlib.Path(spec.source) / "config.json"
  if hf.is_file():
    base = weights.config_from_hf(json.loads(hf.read_text(encoding="utf-8")), spec.dtype)
  else:
    base = PRESETS[preset_name(spec.source)]
  return base.replace(**kept)


# --------------------------------------------------------------------------- the plan


@dataclasses.dataclass(frozen=True)
class Plan:
  """What a config's step compiles and at which sizes (see the module docstring)."""

  model: ModelConfig
  grpo: Any
  optimizer: Any
  rl: Any
  rollout: RolloutConfig
  refiner: Any
  mesh: Any  # MeshConfig
  update_rows: int
  rollout_rows: int
  prefill_tokens: int

  @property
  def programs(self) -> tuple[str, ...]:
    """The programs a step of this config runs (the refiner's only when it is on)."""
    out = ["update", "reference_logprobs", "extend", "decode"]
    if self.refiner.enabled:
      out.append("truncate")
      out.append("judge" if self.refiner.prompt == "table12" else "score_after")
    return tuple(out)


def config_topology(config) -> str | None:
  """The slice a config names (`config.mesh.topology`), if it names one."""
  return config.mesh.get("topology") or None


def make_plan(config, rollout_rows: int | None = None, prefill_tokens: int | None = None) -> Plan:
  """The typed config groups (`setup.check_config`: nothing is loaded) and the sizes."""
  typed = check_config(config)
  rl, g, refiner = typed["rl"], typed["grpo"], typed["refiner"]
  rollout = from_config(RolloutConfig, config.rollout, "config.rollout")
  model = model_config(config)
  if rl.max_len > model.max_seq_len:
    raise ConfigError(f"rl.max_len={rl.max_len} exceeds model.max_seq_len={model.max_seq_len}")
  if rollout_rows is None:
    rollout_rows = config.rollout.get("batch_rows", 0) or rl.prompts_per_step * g.group_size
  prefill = min(prefill_tokens or DEFAULT_PREFILL_TOKENS, rl.max_len)
  for name, value in (("rollout_rows", rollout_rows), ("prefill_tokens", prefill)):
    if not isinstance(value, int) or value < 1:
      raise ValueError(f"{name}={value!r}; expected a positive int")
  return Plan(
    model=model,
    grpo=g,
    optimizer=typed["opt"],
    rl=rl,
    rollout=rollout,
    refiner=refiner,
    mesh=typed["mesh"],
    update_rows=batch_rows(rl, g, refiner),
    rollout_rows=rollout_rows,
    prefill_tokens=bucket(prefill, DEFAULT_BUCKETS, cap=rl.max_len),
  )


def slice_mesh(devices: Sequence, mesh_config) -> Mesh:
  """A (data, fsdp, tensor) mesh over a slice's devices, shaped by `config.mesh`.

  The devices are laid out along the torus (`mesh_utils.create_device_mesh`) when it
  can, else in libtpu's order.
  """
  shape = mesh_config.resolve(len(devices))
  try:
    from jax.experimental import mesh_utils

    grid = mesh_utils.create_device_mesh(shape, list(devices))
  except (ValueError, NotImplementedError, AssertionError):
    grid = np.asarray(devices).reshape(shape)
  return Mesh(grid, AXES)


# --------------------------------------------------------------------------- abstract inputs
