"""Tests for sr2.checkpoint: bitwise round trip, retention, interrupted saves, mismatches."""

import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sr2 import checkpoint

REPO = pathlib.Path(__file__).resolve().parents[1]


def _state(seed: int = 0, step: int = 0):
  k = jax.random.split(jax.random.key(seed), 4)
  params = {
    "embed": jax.random.normal(k[0], (16, 8)),
    "layers": [
      {"w": jax.random.normal(k[1], (8, 8)), "b": jnp.zeros((8,), jnp.bfloat16)},
      {"w": jax.random.normal(k[2], (8, 8)), "b": jnp.ones((8,), jnp.bfloat16)},
    ],
  }
  opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3, weight_decay=0.1))
  opt_state = opt.init(params)
  # One update so the moments and count are not their init values.
  grads = jax.tree.map(lambda p: jnp.ones_like(p) * 0.5, params)
  _, opt_state = opt.update(grads, opt_state, params)
  return {
    "params": params,
    "opt_state": opt_state,
    "step": step,
    "rng": k[3],
    "data_state": {"position": 17 + step, "epoch": 2, "seed": seed},
  }


def _assert_bitwise(a, b):
  la, ta = jax.tree.flatten(a)
  lb, tb = jax.tree.flatten(b)
  assert ta == tb
  for x, y in zip(la, lb, strict=True):
    if jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):
      assert y.dtype == x.dtype
      x, y = jax.random.key_data(x), jax.random.key_data(y)
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape
    assert x.tobytes() == y.tobytes()


def test_round_trip_bitwise(tmp_path):
  state = _state(seed=1, step=5)
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    assert ckpt.save(5, state, metrics={"em": 0.25})
    ckpt.wait()
    assert ckpt.latest_step() == 5
  # A fresh Checkpointer, and a template of other values (structure only matters).
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    restored = ckpt.restore(like=_state(seed=9, step=0))
    assert ckpt.metrics() == {"em": 0.25}
  assert restored["data_state"] == state["data_state"]
  assert restored["step"] == 5 and isinstance(restored["step"], int)
  assert isinstance(restored["opt_state"][1][0], optax.ScaleByAdamState)
  _assert_bitwise(
    {k: v for k, v in restored.items() if k != "data_state"},
    {k: v for k, v in state.items() if k != "data_state"},
  )
  # The restored key continues the same random stream.
  np.testing.assert_array_equal(
    jax.random.uniform(restored["rng"], (3,)), jax.random.uniform(state["rng"], (3,))
  )


def test_restore_abstract_template_keeps_sharding(tmp_path):
  state = _state(step=3)
  sharding = jax.sharding.NamedSharding(
    jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",)), jax.sharding.PartitionSpec()
  )
  like = jax.tree.map(
    lambda x: (
      jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding) if isinstance(x, jax.Array) else x
    ),
    state,
  )
  with checkpoint.Checkpointer(tmp_path, async_save=False) as ckpt:
    ckpt.save(3, state)
    restored = ckpt.restore(like=like)
  assert restored["params"]["embed"].sharding == sharding
  assert restored["rng"].dtype == state["rng"].dtype
  _assert_bitwise(restored["params"], state["params"])


def test_latest_and_keep_n(tmp_path):
  state = _state()
  with checkpoint.Checkpointer(tmp_path, max_to_keep=2, save_every=2) as ckpt:
    for step in range(1, 8):
      state["step"] = step
      ckpt.save(step, state, force=step == 7)
    ckpt.wait()
    assert ckpt.all_steps() == [6, 7]  # 2, 4, 6 by save_every; 7 forced; keep 2.
    assert ckpt.latest_step() == 7
    with pytest.raises(checkpoint.CheckpointNotFoundError, match="step 4"):
      ckpt.restore(4, like=state)
    assert ckpt.restore(6, like=state)["step"] == 6


def test_no_checkpoint_names_directory(tmp_path):
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    assert ckpt.latest_step() is None
    with pytest.raises(checkpoint.CheckpointNotFoundError, match=str(tmp_path / "checkpoints")):
      ckpt.restore(like=_state())


def test_structure_mismatch(tmp_path):
  state = _state(step=1)
  with checkpoint.Checkpointer(tmp_path, async_save=False) as ckpt:
    ckpt.save(1, state)
    extra = _state(step=1)
    extra["params"]["layers"].append({"w": jnp.zeros((8, 8)), "b": jnp.zeros((8,))})
    with pytest.raises(checkpoint.CheckpointMismatchError, match="not in checkpoint.*layers/2"):
      ckpt.restore(like=extra)
    reshaped = _state(step=1)
    reshaped["params"]["embed"] = jnp.zeros((32, 8))
    with pytest.raises(checkpoint.CheckpointMismatchError, match="params/embed: saved shape"):
      ckpt.restore(like=reshaped)
    raw_key = _state(step=1)
    raw_key["rng"] = jax.random.key_data(raw_key["rng"])
    with pytest.raises(checkpoint.CheckpointMismatchError, match="rng: saved key impl"):
      ckpt.restore(like=raw_key)


def test_save_checks_inputs(tmp_path):
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    with pytest.raises(ValueError, match="state\\['step'\\]=0"):
      ckpt.save(3, _state(step=0))
    with pytest.raises(TypeError, match="metrics must be JSON-able"):
      ckpt.save(0, _state(), metrics={"x": object()})


# The child saves ever-larger steps of a deterministic state until it is killed.
_CHILD = textwrap.dedent(
  """
  import sys
  import numpy as np
  from sr2 import checkpoint

  base = np.arange(4 * 2**20, dtype=np.float32)  # 16 MB per array, 4 arrays.
  ckpt = checkpoint.Checkpointer(sys.argv[1], max_to_keep=2, async_save=False)
  for step in range(1, 1000):
    ckpt.save(step, {"params": [base + step + i for i in range(4)], "step": step,
                     "data_state": {"position": step}})
  """
)


def _saves_in_progress(directory: pathlib.Path, min_bytes: int) -> dict[int, int]:
  """{step: bytes written} for unfinalised step directories holding >= `min_bytes`."""
  found = {}
  for d in directory.glob("*.orbax-checkpoint-tmp*"):
    try:
      n = sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
    except FileNotFoundError:  # Renamed or deleted while we looked.
      continue
    if n >= min_bytes:
      found[int(d.name.split(".")[0])] = n
  return found


def test_sigkill_mid_save_keeps_last_complete(tmp_path):
  directory = tmp_path / "checkpoints"
  env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
  proc = subprocess.Popen(
    [sys.executable, "-c", _CHILD, str(tmp_path)],
    env=env,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  caught = {}
  try:
    deadline = time.monotonic() + 60
    # Kill once a step after the first has written a few MiB of its ~43 MiB (compressed)
    # of arrays: the save is then ~50 ms from finalising, polls are 2 ms apart.
    while time.monotonic() < deadline and proc.poll() is None:
      caught = {s: n for s, n in _saves_in_progress(directory, 4 * 2**20).items() if s > 1}
      if caught:
        os.kill(proc.pid, signal.SIGKILL)
        break
      time.sleep(0.002)
  finally:
    if proc.poll() is None and not caught:
      os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
  assert caught, "never saw a save in progress"
  assert proc.returncode == -signal.SIGKILL
  (killed_step,) = caught
  # Caught mid-write: the step's arrays are partly on disk, the step is not finalised.
  assert _saves_in_progress(directory, 4 * 2**20).keys() == {killed_step}
  assert not (directory / str(killed_step)).exists()

  like = {"params": [np.zeros(4 * 2**20, np.float32)] * 4, "step": 0, "data_state": {}}
  with checkpoint.Checkpointer(tmp_path, async_save=False) as ckpt:
    assert ckpt.latest_step() == killed_step - 1
    restored = ckpt.restore(like=like)
    # The interrupted step can be saved again; the stale tmp directory is gone.
    assert ckpt.save(killed_step, {**like, "step": killed_step})
    assert not list(directory.glob("*.orbax-checkpoint-tmp*"))
    assert ckpt.all_steps() == [killed_step - 1, killed_step]
  step = killed_step - 1
  assert restored["step"] == step and restored["data_state"] == {"position": step}
  base = np.arange(4 * 2**20, dtype=np.float32)
  for i, x in enumerate(restored["params"]):
    assert np.asarray(x).tobytes() == (base + step + i).tobytes()


def test_has_checkpoint_needs_a_finished_step(tmp_path):
  assert not checkpoint.has_checkpoint(tmp_path)
  (tmp_path / "checkpoints" / "3.orbax-checkpoint-tmp-12").mkdir(parents=True)
  assert not checkpoint.has_checkpoint(tmp_path)  # a save that never finished
  (tmp_path / "checkpoints" / "2").mkdir()
  assert checkpoint.has_checkpoint(tmp_path)
