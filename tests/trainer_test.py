"""The training job end to end at toy sizes: phases, outputs and exact resume."""

import importlib.util
import json
import pathlib

import jax
import numpy as np
import pytest

from sr2.configlib import ConfigError
from sr2.rl.trainer import load_state, train_and_evaluate


def _config(steps):
  path = pathlib.Path(__file__).parents[1] / "configs" / "tiny_world.py"
  spec = importlib.util.spec_from_file_location("tiny_world", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config("smoke")
  c.rl.steps = steps
  return c


def _rows(workdir):
  return [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("straight")
  return workdir, train_and_evaluate(_config(2), str(workdir))


def test_job_writes_summary_and_metrics(straight):
  workdir, summary = straight
  assert {"em_before_rl", "em_after_rl", "total_seconds"} <= set(summary)
  assert 0 <= summary["em_before_rl"] <= 1 and 0 <= summary["em_after_rl"] <= 1
  rl = [r for r in _rows(workdir) if r["phase"] == "rl"]
  assert [r["step"] for r in rl] == [1, 2]
  for key in ("reward", "searches", "turns", "loss", "kl_loss", "clip_frac", "grad_norm"):
    assert all(np.isfinite(r[key]) for r in rl), key
  assert any(r["phase"] == "sft" for r in _rows(workdir))
  assert json.loads((workdir / "summary.json").read_text()) == summary


def test_resume_gives_identical_params(straight, tmp_path):
  """2 steps straight vs 1 step, a new process state, then resume to 2: bitwise equal."""
  workdir, _ = straight
  train_and_evaluate(_config(1), str(tmp_path))
  train_and_evaluate(_config(2), str(tmp_path))  # resumes after step 1; no second SFT
  rows = _rows(tmp_path)
  assert [r["step"] for r in rows if r["phase"] == "rl"] == [1, 2]
  assert sum(r["phase"] == "sft" and r["step"] == 0 for r in rows) == 1
  a, b = load_state(_config(2), str(workdir)), load_state(_config(2), str(tmp_path))
  assert a["step"] == b["step"] == 2
  a["rng"], b["rng"] = jax.random.key_data(a["rng"]), jax.random.key_data(b["rng"])
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  want = [r for r in _rows(workdir) if r["phase"] == "rl"][-1]
  got = [r for r in rows if r["phase"] == "rl"][-1]
  for key in ("loss", "reward", "grad_norm", "kl_loss"):
    assert got[key] == want[key], key


def test_config_typo_fails_before_work(tmp_path):
  c = _config(1)
  with c.unlocked():
    c.rl.stepz = 3
  with pytest.raises(ConfigError, match="did you mean 'steps'"):
    train_and_evaluate(c, str(tmp_path))
  assert not (tmp_path / "metrics.jsonl").exists()
