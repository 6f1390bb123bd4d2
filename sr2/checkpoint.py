"""Checkpoints of the training state for exact resume, over Orbax's `CheckpointManager`.

A training state is a dict:

  params:     pytree of arrays.
  opt_state:  optax state (namedtuples, empty nodes and all).
  step:       int (or a scalar array); must equal the `step` it is saved under.
  rng:        a PRNG key, new-style typed (`jax.random.key`) or raw uint32.
  data_state: small JSON-able dict (data position, epoch, sampler seed, ...).

Any other key is saved like `params`. Arrays go to one Orbax item (`state`), `data_state`
and optional per-step `metrics` to JSON items. Typed keys are stored as their key data and
rewrapped with the template's implementation on restore.

Saves are asynchronous (jax arrays are copied to host before `save` returns, so donating
the state afterwards is safe). Orbax writes each step into `<step>.orbax-checkpoint-tmp*`
and renames it once complete; a step whose save was interrupted is never listed, so
`latest_step` and `restore` fall back to the last complete one; the next `Checkpointer` on
the directory removes the stale tmp directory (in the background, before its first save).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

_ARRAYS, _DATA, _METRICS, _META = "state", "data_state", "metrics", "meta"


class CheckpointNotFoundError(FileNotFoundError):
  """No (complete) checkpoint where one was asked for."""


class CheckpointMismatchError(ValueError):
  """The restore template does not match the saved tree."""


def _is_key(x) -> bool:
  return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _key_impl(x) -> str:
  """The PRNG implementation name of a typed key array or key `ShapeDtypeStruct`."""
  if isinstance(x, jax.Array):
    return str(jax.random.key_impl(x))
  impl = []  # `key_impl` needs an array; a tracer of the abstract key will do.
  jax.eval_shape(lambda k: impl.append(str(jax.random.key_impl(k))), x)
  return impl[0]


def _path_str(path) -> str:
  # Orbax's metadata tree has dicts/lists where the template has namedtuples/tuples;
  # simple key strings ("opt_state/1/0/mu/embed") are the same for both.
  return jax.tree_util.keystr(path, simple=True, separator="/")


def _encode(x):
  """A leaf as Orbax stores it: typed keys as key data, Python scalars as numpy."""
  if _is_key(x):
    return jax.random.key_data(x)
  if isinstance(x, bool | int | float):
    return np.asarray(x)
  return x


def _abstract(x):
  """The restore target for one template leaf: keeps shape, dtype and sharding."""
  if isinstance(x, bool | int | float | np.ndarray | np.generic):
    return np.asarray(x)  # Restored as numpy, like the template.
  sharding = getattr(x, "sharding", None)
  if _is_key(x):  # Key data has the key's sharding (trailing dims replicated).
    x = jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(x.shape, x.dtype))
  if sharding is None:  # Multi-process runs must give shardings; this is one host's.
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)


def _decode(template, x):
  if _is_key(template):
    return jax.random.wrap_key_data(x, impl=_key_impl(template))
  if isinstance(template, bool | int | float):
    return type(template)(np.asarray(x).item())
  return x


def _split(state: Mapping[str, Any]) -> tuple[dict, dict]:
  if not isinstance(state, Mapping):
    raise TypeError(f"state must be a dict, got {type(state).__name__}")
  arrays = {k: v for k, v in state.items() if k != _DATA}
  data = state.get(_DATA, {})
  if not isinstance(data, Mapping):
    raise TypeError(f"state['data_state'] must be a JSON-able dict, got {type(data).__name__}")
  return arrays, dict(data)


def has_checkpoint(workdir: str | os.PathLike) -> bool:
  """Whether `<workdir>/checkpoints` holds a finished step, found without creating anything.

  Orbax names a finished step's folder by its number; an unfinished save carries a
  temporary suffix.
  """
  from etils import epath

  folder = epath.Path(workdir) / "checkpoints"
  return folder.is_dir() and any(p.name.isdigit() for p in folder.iterdir())


class Checkpointer:
  """Saves and restores training states under `<workdir>/checkpoints/<step>`.

  Attributes:
    directory: where the step directories live.
  """

  def __init__(
    self,
    workdir: str | os.PathLike,
    *,
    max_to_keep: int | None = 3,
    save_every: int = 1,
    async_save: bool = True,
  ):
    """Opens (or creates) the checkpoint directory.

    Args:
      workdir: the run's working directory.
      max_to_keep: newest complete checkpoints kept; None keeps all.
      save_every: `save` only writes steps divisible by this (unless `force`).
      async_save: write in a background thread; `wait()` blocks until done.
    """
    if save_every < 1:
      raise ValueError(f"save_every={save_every}; expected >= 1")
    self.directory = os.path.join(os.fspath(workdir), "checkpoints")
    options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep,
      save_interval_steps=save_every,
      cleanup_tmp_directories=True,  # Leftovers of interrupted saves.
      enable_async_checkpointing=async_save,
      create=True,
    )
    handlers = {
      _ARRAYS: ocp.StandardCheckpointHandler(),
      _DATA: ocp.JsonCheckpointHandler(),
      _METRICS: ocp.JsonCheckpointHandler(),
      _META: ocp.JsonCheckpointHandler(),
    }
    self._mngr = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

  def save(
    self,
    step: int,
    state: Mapping[str, Any],
    *,
    metrics: Mapping[str, Any] | None = None,
    force: bool = False,
  ) -> bool:
    """Saves `state` as checkpoint `step` (asynchronously unless `async_save=False`).

    Args:
      step: the step number; must match `state['step']` when present.
      state: the training state (module docstring).
      metrics: optional JSON-able dict stored beside the state.
      force: save even if `step` is not a multiple of `save_every`.

    Returns:
      Whether a save was started (False for skipped steps and steps not newer than
      the latest one).
    """
    arrays, data = _split(state)
    if "step" in arrays and int(arrays["step"]) != step:
      raise ValueError(f"save(step={step}) but state['step']={int(arrays['step'])}")
    meta = {"version": 1, "keys": {}}
    for path, leaf in jax.tree_util.tree_flatten_with_path(arrays)[0]:
      if _is_key(leaf):
        meta["keys"][_path_str(path)] = _key_impl(leaf)
    for name, obj in ((_DATA, data), ("metrics", metrics or {})):
      try:
        json.dumps(obj)
      except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be JSON-able: {e}") from e
    args = ocp.args.Composite(
      **{
        _ARRAYS: ocp.args.StandardSave(jax.tree.map(_encode, arrays)),
        _DATA: ocp.args.JsonSave(data),
        _METRICS: ocp.args.JsonSave(dict(metrics or {})),
        _META: ocp.args.JsonSave(meta),
      }
    )
    return self._mngr.save(step, args=args, force=force)

  def all_steps(self) -> list[int]:
    """Complete checkpoints, oldest first."""
    return sorted(self._mngr.all_steps())

  def latest_step(self) -> int | None:
    """The newest complete checkpoint, or None."""
    return self._mngr.latest_step()

  def _resolve(self, step: int | None) -> int:
    steps = self.all_steps()
    if step is None:
      if not steps:
        raise CheckpointNotFoundError(f"no complete checkpoint in {self.directory}")
      return steps[-1]
    if step not in steps:
      raise CheckpointNotFoundError(
        f"no complete checkpoint for step {step} in {self.directory}; have {steps}"
      )
    return step

  def restore(self, step: int | None = None, *, like: Mapping[str, Any]) -> dict[str, Any]:
    """Restores a checkpoint into the structure, dtypes and shardings of `like`.

    Args:
      step: the step to restore; None means the latest complete one.
      like: a state of the same structure: concrete arrays, or `jax.ShapeDtypeStruct`s
        (with shardings, so a sharded run restores sharded). Its `data_state` is ignored.

    Returns:
      The state, with `data_state` as saved.
    """
    step = self._resolve(step)
    template, _ = _split(like)
    abstract = jax.tree.map(_abstract, template)
    self._check_structure(step, template, abstract)
    out = self._mngr.restore(
      step,
      args=ocp.args.Composite(
        **{_ARRAYS: ocp.args.StandardRestore(abstract), _DATA: ocp.args.JsonRestore()}
      ),
    )
    state = jax.tree.map(_decode, template, out[_ARRAYS])
    state[_DATA] = dict(out[_DATA] or {})
    return state

  def _check_structure(self, step: int, template, abstract) -> None:
    """Raises CheckpointMismatchError naming missing, unexpected and reshaped leaves."""
    saved = self._mngr.item_metadata(step)[_ARRAYS]
    saved = {_path_str(p): v for p, v in jax.tree_util.tree_flatten_with_path(saved)[0]}
    want = {_path_str(p): v for p, v in jax.tree_util.tree_flatten_with_path(abstract)[0]}
    problems = []
    if missing := sorted(want.keys() - saved.keys()):
      problems.append(f"not in checkpoint: {missing[:5]}" + (" ..." if len(missing) > 5 else ""))
    if extra := sorted(saved.keys() - want.keys()):
      problems.append(f"not in template: {extra[:5]}" + (" ..." if len(extra) > 5 else ""))
    for k in sorted(want.keys() & saved.keys()):
      if tuple(saved[k].shape) != tuple(want[k].shape):
        problems.append(f"{k}: saved shape {tuple(saved[k].shape)}, template {want[k].shape}")
    saved_keys = self._mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    saved_keys = (saved_keys[_META] or {}).get("keys", {})
    for path, leaf in jax.tree_util.tree_flatten_with_path(template)[0]:
      impl = _key_impl(leaf) if _is_key(leaf) else None
      if saved_keys.get(_path_str(path)) != impl:
        problems.append(
          f"{_path_str(path)}: saved key impl {saved_keys.get(_path_str(path))}, template {impl}"
        )
    if problems:
      raise CheckpointMismatchError(
        f"checkpoint {step} in {self.directory} does not match the template: " + "; ".join(problems)
      )

  def metrics(self, step: int | None = None) -> dict[str, Any]:
    """The metrics saved with `step` (default: the latest complete checkpoint)."""
    step = self._resolve(step)
    out = self._mngr.restore(step, args=ocp.args.Composite(metrics=ocp.args.JsonRestore()))
    return dict(out[_METRICS] or {})

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are complete (and re-raises their errors)."""
    self._mngr.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases the manager."""
    self._mngr.close()

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc) -> None:
    self.close()
