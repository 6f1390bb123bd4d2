"""The training job end to end at toy sizes: phases, outputs and exact resume."""

import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from sr2.configlib import ConfigError, load_config_file
from sr2.train.loop import train_and_evaluate
from sr2.train.state import load_state

CONFIGS = pathlib.Path(__file__).parents[1] / "configs"


def _config(steps):
  c = load_config_file(CONFIGS / "tiny_world.py", "smoke")
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
  assert "trimmer_before_rl" not in summary  # no Meta-Refiner in the main job
  rl = [r for r in _rows(workdir) if r["phase"] == "rl"]
  assert [r["step"] for r in rl] == [1, 2]
  for key in ("reward", "searches", "turns", "loss", "kl_loss", "clip_frac", "grad_norm"):
    assert all(np.isfinite(r[key]) for r in rl), key
  assert any(r["phase"] == "sft" for r in _rows(workdir))
  assert json.loads((workdir / "summary.json").read_text()) == summary


def test_workdir_records_the_run_and_refuses_a_changed_resume(straight):
  workdir, _ = straight
  assert json.loads((workdir / "config.json").read_text())["rl"]["steps"] == 2
  run = json.loads((workdir / "run.json").read_text())
  assert run["commit"] and run["versions"]["jax"] and run["devices"]["count"] >= 1
  log = (workdir / "train.log").read_text()
  assert "[sft 0] sft_loss=" in log and "[rl 2] reward=" in log
  changed = _config(2)
  changed.sft.steps += 1
  with pytest.raises(ConfigError, match=r"sft\.steps: \d+ -> \d+"):
    train_and_evaluate(changed, str(workdir))  # refused before any work


def test_warm_start_and_final_policy_are_hf_checkpoints(straight):
  """rl.export_hf: both load in sr2 with the run's params, and in HF transformers."""
  import transformers

  from sr2 import models

  workdir, _ = straight
  final = models.load(workdir / "final" / "hf")
  state = load_state(_config(2), str(workdir))
  for a, b in zip(jax.tree.leaves(final.params), jax.tree.leaves(state.params), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  warm = models.load(workdir / "warm_start" / "hf")
  assert warm.config == final.config and warm.tokenizer.encode("x") == final.tokenizer.encode("x")
  assert transformers.AutoModelForCausalLM.from_pretrained(workdir / "final" / "hf")


def test_resume_gives_identical_params(straight, tmp_path):
  """2 steps straight vs 1 step, a new process state, then resume to 2: bitwise equal."""
  workdir, _ = straight
  train_and_evaluate(_config(1), str(tmp_path))
  train_and_evaluate(_config(2), str(tmp_path))  # resumes after step 1; no second SFT
  rows = _rows(tmp_path)
  assert [r["step"] for r in rows if r["phase"] == "rl"] == [1, 2]
  assert sum(r["phase"] == "sft" and r["step"] == 0 for r in rows) == 1
  a, b = load_state(_config(2), str(workdir)), load_state(_config(2), str(tmp_path))
  assert a.step == b.step == 2
  a, b = (dict(x.as_dict(), rng=jax.random.key_data(x.rng)) for x in (a, b))
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


def test_micro_batch_rows_that_do_not_split_the_batch_fail_before_work(tmp_path):
  c = _config(1)
  c.grpo.micro_batch_rows = 3  # the smoke batch has 2 prompts x 4 rollouts = 8 rows
  with pytest.raises(ConfigError, match="mini-batches of 8 rows do not split"):
    train_and_evaluate(c, str(tmp_path))
  assert not (tmp_path / "metrics.jsonl").exists()


def test_stop_short_out_of_range_is_named(tmp_path):
  c = _config(1)
  c.data.stop_short = 1.5
  with pytest.raises(ConfigError, match=r"config.data.stop_short must be in \[0, 1\], got 1.5"):
    train_and_evaluate(c, str(tmp_path))


def test_world_demonstrations_mix_gold_and_stop_short():
  from sr2.train import sft
  from sr2.train.task import build_task

  c = _config(1)
  c.data.stop_short = 0.6
  examples = build_task(c).sft_examples
  hops = [len(e.options) if isinstance(e, sft.Choice) else 1 for e in examples]
  assert 1 in hops and 2 in hops  # 1-hop questions keep gold; multi-hop ones get a Choice
  choice = next(e for e in examples if isinstance(e, sft.Choice))
  assert choice.weights == pytest.approx((0.4, 0.6))
  gold, short = choice.options
  assert sum(short.mask) < sum(gold.mask)  # one turn fewer
  c.data.stop_short = 0.0
  assert all(isinstance(e, sft.Example) for e in build_task(c).sft_examples)


# The child trains the smoke job and SIGKILLs itself right after starting the save of RL
# step 2 (Orbax writes it in a background thread), so the process dies mid-save.
_KILLED_CHILD = textwrap.dedent(
  """
  import os, signal, sys
  sys.path.insert(0, "tests")
  from sr2 import checkpoint
  from loop_test import _config
  from sr2.train.loop import train_and_evaluate

  save = checkpoint.Checkpointer.save
  def save_then_die(self, step, state, **kw):
    started = save(self, step, state, **kw)
    if step == 2:
      os.kill(os.getpid(), signal.SIGKILL)
    return started
  checkpoint.Checkpointer.save = save_then_die
  train_and_evaluate(_config(2), sys.argv[1])
  """
)


def test_kill9_during_a_save_then_resume(straight, tmp_path):
  workdir, want = straight
  root = pathlib.Path(__file__).parents[1]
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run(
    [sys.executable, "-c", _KILLED_CHILD, str(tmp_path)], cwd=root, env=env, capture_output=True
  )
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
  ckpts = tmp_path / "checkpoints"
  assert not (ckpts / "2").exists()  # step 2 never completed
  assert (ckpts / "1").is_dir()
  # Resume: continues from step 1, redoes step 2, and ends where the straight run ended.
  got = train_and_evaluate(_config(2), str(tmp_path))
  assert got["em_after_rl"] == want["em_after_rl"]
  assert not list(ckpts.glob("*.orbax-checkpoint-tmp*"))
  a, b = load_state(_config(2), str(workdir)), load_state(_config(2), str(tmp_path))
  a, b = (dict(x.as_dict(), rng=jax.random.key_data(x.rng)) for x in (a, b))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  # Every RL step is logged once, with the straight run's values.
  rows = [r for r in _rows(tmp_path) if r["phase"] == "rl"]
  assert [r["step"] for r in rows] == [1, 2]
  for r, w in zip(rows, [r for r in _rows(workdir) if r["phase"] == "rl"], strict=True):
    assert r["loss"] == w["loss"] and r["reward"] == w["reward"]


def _search_r2_config(arm):
  return load_config_file(CONFIGS / "search_r2.py", f"tiny_world,{arm},smoke")


def test_search_r2_step_logs_refiner_rewards_and_drivers(tmp_path):
  c = _search_r2_config("search_r2")
  c.rl.steps = 1
  summary = train_and_evaluate(c, str(tmp_path))
  (row,) = [r for r in _rows(tmp_path) if r["phase"] == "rl"]
  rows_g = c.rl.prompts_per_step * c.grpo.group_size
  # Joint optimisation: one decision sample per judged trajectory joins the batch.
  assert row["decision_rows"] == row["refiner/decisions"] > 0
  assert row["batch_rows"] == rows_g + row["decision_rows"]
  for key in (
    "refiner/v_inter",
    "drivers/a_prec",
    "drivers/s_trim",
    "drivers/g_bar",
    "trimmer/gate_acc",
    "trimmer/trim_recall",
    "process",
    "entropy",
  ):
    assert np.isfinite(row[key]), key
  # The drivers' identity on this step's estimates.
  assert row["drivers/delta_j_pred"] == pytest.approx(row["refiner/delta_j"], abs=1e-9)
  assert 0 <= summary["em_after_rl"] <= 1
  # The starting policy's gate and Trimmer, measured once before the first step.
  before = summary["trimmer_before_rl"]
  assert 0 <= before["gate_acc"] <= 1 and 0 <= before["trim_recall"] <= 1


def test_arms_differ_in_their_switches():
  r1, mr, mrpr, r2 = (_search_r2_config(a) for a in ("search_r1", "mr", "mr_pr", "search_r2"))
  assert not r1.refiner.enabled and r1.reward.process == "none"
  assert mr.refiner.enabled and not mr.refiner.joint and mr.reward.process == "none"
  assert mrpr.refiner.enabled and not mrpr.refiner.joint and mrpr.reward.process == "lexical"
  assert r2.refiner.enabled and r2.refiner.joint and r2.reward.process == "lexical"
  nmax3, g10 = _search_r2_config("nmax3"), _search_r2_config("search_r1_g10")
  assert nmax3.refiner.max_revisions == 3 and not nmax3.refiner.joint
  assert g10.grpo.group_size == 10 and not g10.refiner.enabled
  dw = _search_r2_config("search_r2_dw")
  assert r2.refiner.decision_weight == 1.0 and dw.refiner.decision_weight == 0.02
  assert dw.refiner.joint and dw.reward.process == "lexical"
  # The continuation arms differ from theirs only in the refiner's prompt.
  for base, cont in ((mr, "mr_cont"), (r2, "search_r2_cont")):
    c = _search_r2_config(cont)
    assert base.refiner.prompt == "table12" and c.refiner.prompt == "continuation"
    c.refiner.prompt = "table12"
    assert c.to_dict() == base.to_dict()


@pytest.mark.parametrize(
  "backbone", ["smollm2", "qwen2.5-coder-0.5b", "qwen2.5-7b", "qwen3-8b", "qwen2.5-32b-instruct"]
)
def test_paper_and_small_backbone_configs_validate(backbone):
  from sr2.train.setup import batch_rows, check_config

  typed = check_config(load_config_file(CONFIGS / "search_r2.py", f"{backbone},search_r1"))
  small = backbone in ("smollm2", "qwen2.5-coder-0.5b")
  if not small:  # the paper's §4: G=5, 512 prompts, 300 steps, lr 1e-6, KL 0.001, no SFT
    assert typed["grpo"].group_size == 5 and typed["rl"].prompts_per_step == 512
    assert typed["rl"].steps == 300 and typed["grpo"].kl_coef == 0.001
    assert batch_rows(typed["rl"], typed["grpo"], typed["refiner"]) == 2560
  assert (typed["sft"].steps > 0) == small  # the small ones learn the protocol first
  typed = check_config(load_config_file(CONFIGS / "search_r2.py", f"{backbone},search_r2"))
  assert typed["refiner"].enabled and typed["reward"].process == "lexical"


def test_init_from_shares_the_warm_start(straight, tmp_path):
  workdir, want = straight
  assert (workdir / "warm_start").is_dir()  # tiny_world keeps its warm start
  c = _search_r2_config("mr")
  c.rl.steps = 1
  got = train_and_evaluate(c, str(tmp_path), init_from=str(workdir))
  assert got["em_before_rl"] == want["em_before_rl"] and got["init_from"] == str(workdir)
  assert not [r for r in _rows(tmp_path) if r["phase"] == "sft"]  # no SFT of its own
  with pytest.raises(ConfigError, match="keep_warm_start"):
    train_and_evaluate(_config(1), str(tmp_path / "other"), init_from=str(tmp_path))


def _golden_step(workdir):
  """One GRPO step of the smoke config after its SFT warm start, seed 0.

  The smoke warm start never answers right, so every group would have equal rewards and
  the update would not move; the reward is shaped to vary within groups (EM + 0.1 per
  search + 0.01 per turn), so the step's loss, gradient and KL are non-zero.
  """
  from sr2.train import loop, warm_start
  from sr2.train.metrics import MetricWriter
  from sr2.train.state import fresh_state

  s = loop.setup(_config(1))
  writer = MetricWriter(workdir, tensorboard=False, console=False)
  state = warm_start.warm_start(s, fresh_state(s), writer)
  fns = loop.step_fns(s)
  real = fns.reward_fn

  def shaped(questions, trajs):
    outcome, process, _ = real(questions, trajs)
    extra = np.asarray([0.1 * t.num_searches + 0.01 * t.num_turns for t in trajs])
    return outcome, process, outcome + extra

  fns = dataclasses.replace(fns, reward_fn=shaped)
  return loop.grpo_step(s, fns, state)


def test_train_step_golden(tmp_path):
  state, row, _ = _golden_step(tmp_path)
  assert state.step == 1
  # What a change in each means:
  # - batch_rows / batch_len: how the step's rows are laid out (collection, batch assembly).
  # - reward / searches / turns: the rollout itself (sampler, protocol, retriever, seed use).
  # - loss, grad_norm, kl_loss, clip_frac: the update's math (log-probs, GRPO loss, micro-
  #   batches) on the same rollouts; a float reassociation moves them by ~1e-6 relative.
  want = GOLDEN
  assert row["batch_rows"] == want["batch_rows"], "the batch's composition changed"
  assert row["batch_len"] == want["batch_len"], "the batch's length bucket changed"
  for key in ("reward", "em", "searches", "turns", "response_tokens"):
    assert row[key] == pytest.approx(want[key], abs=1e-9), f"the rollout changed: {key}"
  for key in ("loss", "grad_norm", "kl_loss", "entropy"):
    assert row[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), f"the update changed: {key}"


# From `python -c "import sys; sys.path.insert(0, 'tests'); import loop_test, json, tempfile;
# print(json.dumps(loop_test._golden_step(tempfile.mkdtemp())[1]))"` on the 2-core CPU.
GOLDEN = {
  "batch_rows": 8.0,
  "batch_len": 768.0,
  "reward": 0.049999999999999996,
  "em": 0.0,
  "searches": 0.125,
  "turns": 3.75,
  "response_tokens": 158.375,
  "loss": 2.0489096641540527e-07,  # ratio = 1 at the first step: -mean(adv) ~ 0
  "grad_norm": 0.3339817225933075,
  "kl_loss": 0.0,  # params = reference at the first step
  "entropy": 6.866125583648682,
}
