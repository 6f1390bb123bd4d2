"""The GRPO batch: alignment, and the refiner's decision rows under joint optimisation."""

import numpy as np
import pytest

from sr2.agent.refiner import Decision, RefinerConfig
from sr2.agent.rollout import Trajectory
from sr2.rl import batch as batch_lib


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
  batch, info = batch_lib.assemble_batch(trajs, adv, decisions, rows=6, pad_id=0, buckets=(8,))
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
  batch, _ = batch_lib.assemble_batch(
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
  batch, info = batch_lib.assemble_batch(trajs, [1.0, -1.0], None, rows=2, pad_id=0, buckets=(4,))
  assert info["decision_rows"] == 0 and batch["tokens"].shape == (2, 4)
  with pytest.raises(ValueError, match="exceed"):
    batch_lib.assemble_batch(trajs, [1.0, -1.0], decisions, rows=2, pad_id=0)


def test_policy_batch_alignment():
  b = batch_lib.policy_batch(
    prompts=[[5, 6, 7]],
    responses=[[8, 9, 10]],
    loss_masks=[[1, 0, 1]],
    logprobs=[[-0.1, 0.0, -0.3]],
    advantages=[0.5],
    pad_id=0,
    length=8,
  )
  np.testing.assert_array_equal(b["tokens"], [[5, 6, 7, 8, 9, 10, 0, 0]])
  # Target t predicts token t + 1: token 8 (mask 1) is target 2, 9 is 3, 10 is 4.
  np.testing.assert_array_equal(b["mask"], [[0, 0, 1, 0, 1, 0, 0]])
  np.testing.assert_allclose(b["old_logp"], [[0, 0, -0.1, 0, -0.3, 0, 0]])
