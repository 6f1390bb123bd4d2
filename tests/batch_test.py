"""Joint optimisation samples and the drivers' estimators."""

import numpy as np
import pytest

from sr2.agent.refiner import Decision, RefinerConfig
from sr2.agent.rollout import Trajectory
from sr2.rl import drivers, joint


def _traj(prompt, response, mask, logp):
  return Trajectory(
    prompt_ids=prompt,
    response_ids=response,
    logprobs=logp,
    loss_mask=mask,
    turn_ids=[0] * len(response),
    steps=[(0, len(response))],
    queries=[],
    doc_ids=[],
    observations=[],
    response="",
    answer=None,
    finish="answer",
    num_turns=1,
    invalid_turns=0,
  )


def _decision(prompt, step, token, logprob):
  lp = tuple(-1.0 for _ in range(3))
  return Decision(tuple(prompt), lp, step > 0, step, token, logprob)


def test_decisions_carry_the_advantage_of_the_trajectory_they_produced():
  trajs = [_traj([1, 2], [3, 4, 5], [1, 0, 1], [-0.1, 0.0, -0.3]), _traj([1], [6], [1], [-0.2])]
  adv = [0.7, -0.7]
  decisions = [[_decision([9, 9, 9], 2, 52, -0.5)], [_decision([8, 8], 0, 50, -0.05)]]
  batch, info = joint.assemble(trajs, adv, decisions, rows=6, pad_id=0, buckets=(8,))
  assert info == {"batch_rows": 4.0, "decision_rows": 2.0, "batch_len": 8.0}
  np.testing.assert_allclose(batch["adv"], [0.7, -0.7, 0.7, -0.7, 0, 0])
  # Row 2: the refiner prompt then the emitted index token "2" (id 52), trained (mask 1) with
  # its judgement log-prob; target index t predicts token t + 1, so the mask sits at t = 2.
  np.testing.assert_array_equal(batch["tokens"][2], [9, 9, 9, 52, 0, 0, 0, 0])
  np.testing.assert_array_equal(batch["mask"][2], [0, 0, 1, 0, 0, 0, 0])
  np.testing.assert_allclose(batch["old_logp"][2], [0, 0, -0.5, 0, 0, 0, 0])
  np.testing.assert_array_equal(batch["tokens"][3][:3], [8, 8, 50])
  np.testing.assert_array_equal(batch["mask"][3], [0, 1, 0, 0, 0, 0, 0])
  # Trajectory rows keep their own masks; padding rows have none.
  np.testing.assert_array_equal(batch["mask"][0], [0, 1, 0, 1, 0, 0, 0])
  assert batch["mask"][4:].sum() == 0


def test_decision_weight_scales_only_the_decision_rows_advantages():
  trajs = [_traj([1], [3], [1], [-0.1]), _traj([1], [6], [1], [-0.2])]
  decisions = [[_decision([9], 1, 51, -0.5)], [_decision([8], 0, 50, -0.05)]]
  batch, _ = joint.assemble(
    trajs, [0.7, -0.7], decisions, rows=4, pad_id=0, buckets=(4,), decision_weight=0.02
  )
  np.testing.assert_allclose(batch["adv"], [0.7, -0.7, 0.014, -0.014])
  np.testing.assert_array_equal(batch["mask"][2:].sum(axis=1), [1, 1])


@pytest.mark.parametrize("weight", [0, -0.5, True, "0.1"])
def test_decision_weight_must_be_a_positive_number(weight):
  with pytest.raises(ValueError, match="refiner.decision_weight"):
    RefinerConfig(enabled=True, decision_weight=weight)


def test_without_joint_only_trajectories_enter():
  trajs = [_traj([1], [2], [1], [-0.1])] * 2
  decisions = [[_decision([9], 1, 51, -0.2)], []]
  batch, info = joint.assemble(trajs, [1.0, -1.0], None, rows=2, pad_id=0, buckets=(4,))
  assert info["decision_rows"] == 0 and batch["tokens"].shape == (2, 4)
  with pytest.raises(ValueError, match="exceed"):
    joint.assemble(trajs, [1.0, -1.0], decisions, rows=2, pad_id=0)


def test_decomposition_identity_on_hand_numbers():
  # Four drafts: the gate accepts 0 and 1, revises 2 and 3.
  accepted = np.array([1, 1, 0, 0])
  r = np.array([1.0, 0.0, 0.0, 0.0])  # draft rewards
  j = np.array([0.0, 1.0, 1.0, 0.0])  # rewards after cut-and-regenerate (probe / final)
  g = np.array([0.0, 0.0, 1.0, 0.0])  # random-cut gains
  d = drivers.decomposition(accepted, r, j, g)
  # V = 1 - 2/4 = 0.5. R - J = (1, -1, -1, 0), mean -0.25; alpha - mean = (.5, .5, -.5, -.5).
  # Cov = mean(.5*1.25, .5*-.75, -.5*-.75, -.5*.25) = (0.625 - 0.375 + 0.375 - 0.125) / 4 = 0.125.
  assert d["v_inter"] == 0.5 and d["a_prec"] == pytest.approx(0.125)
  # dJ_trim = mean(J - R) = 0.25; G = 0.25; S_trim = 0.
  assert d["delta_j_trim"] == pytest.approx(0.25) and d["g_bar"] == pytest.approx(0.25)
  assert d["s_trim"] == pytest.approx(0.0)
  # The mixture's reward: accepted keep R, revised take J -> (1, 0, 1, 0), mean .5 vs .25.
  obs = drivers.observed(accepted, r, np.where(accepted == 1, r, j))
  assert obs["delta_j"] == pytest.approx(0.25) == pytest.approx(d["delta_j_pred"])
  assert obs["v_inter"] == 0.5 and obs["gain_revised"] == pytest.approx(0.5)


def test_decomposition_identity_holds_on_random_data():
  rng = np.random.default_rng(0)
  for _ in range(20):
    n = int(rng.integers(2, 50))
    a = rng.integers(0, 2, n)
    r, j = rng.integers(0, 2, n) * 1.5, rng.integers(0, 2, n) * 1.0
    d = drivers.decomposition(a, r, j, rng.normal(size=n))
    final = np.where(a == 1, r, j)
    assert d["delta_j_pred"] == pytest.approx(final.mean() - r.mean())


def test_decomposition_rejects_ragged_input():
  with pytest.raises(ValueError, match="equal-length"):
    drivers.decomposition(np.ones(3), np.ones(3), np.ones(2), np.ones(3))
