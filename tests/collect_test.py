"""One step's experience: rollouts through `rollout.run`, rewards, and the cut draw."""

import dataclasses

import numpy as np
import pytest

from sr2.agent.refiner import RefinerConfig
from sr2.agent.rollout import RolloutConfig
from sr2.data import actor_prompt
from sr2.testing import ListRetriever, ScriptedSampler, tiny_byte_tokenizer
from sr2.train import collect as collect_lib
from sr2.train.rewards import RewardConfig, make_reward_fn
from sr2.train.task import Question, Task

PASSAGES = [
  {"id": "p1", "title": "Vorla", "text": "Vorla was born in Brezum."},
  {"id": "p2", "title": "Brezum", "text": "Brezum is a city in Kelt."},
]
TOK = tiny_byte_tokenizer()
Q = Question("q1", "Where was Vorla born?", ("Brezum",), ("Vorla",), hops=1)


def _task():
  return Task(
    splits={"train": [Q]},
    retriever=ListRetriever(PASSAGES),
    tokenizer=TOK,
    model=None,
    rollout=RolloutConfig(max_turns=3),
    init_params=lambda seed: None,
  )


# Row 0 searches, then answers right; row 1 answers wrong at once; row 2 searches, then
# answers right; so the outcome is (1, 0, 1), one search each on rows 0 and 2.
SCRIPTS = [
  ["<think>who</think><search>Vorla</search>", "<answer>Brezum</answer>"],
  ["<answer>Kelt</answer>"],
  ["<search>Vorla</search>", "<answer> brezum </answer>"],
]


def test_collect_without_refiner_scores_each_row():
  task = _task()
  sampler = ScriptedSampler(TOK, SCRIPTS)
  reward_fn = make_reward_fn(RewardConfig(process="lexical"), task)
  got = collect_lib.collect(
    task,
    sampler,
    None,
    [Q] * 3,
    reward_fn,
    RefinerConfig(),
    rng=None,
    seed=(0,),
  )
  np.testing.assert_array_equal(got.outcome, [1.0, 0.0, 1.0])
  # Lexical process reward: each searching row's one search found the gold title -> 1;
  # R = EM * (1 + process) = (2, 0, 2).
  np.testing.assert_array_equal(got.process, [1.0, 0.0, 1.0])
  np.testing.assert_array_equal(got.reward, [2.0, 0.0, 2.0])
  assert [t.num_searches for t in got.trajectories] == [1, 0, 1]
  assert got.drafts == got.trajectories and got.decisions == [[], [], []]
  np.testing.assert_array_equal(got.draft_reward, got.reward)
  assert {"rollout_s", "retrieval_s", "reward_s"} <= set(got.metrics)
  assert not any(k.startswith("refiner/") for k in got.metrics)
  # The prompt is the Actor's: `Task.prompt_ids` of each question.
  assert TOK.decode(got.trajectories[0].prompt_ids) == actor_prompt(Q.question)


def test_collect_refuses_a_sampler_that_does_not_stop_on_the_tags():
  task = _task()
  sampler = ScriptedSampler(TOK, SCRIPTS, stop_strings=("</answer>",))
  with pytest.raises(ValueError, match="must stop on"):
    collect_lib.collect(
      task,
      sampler,
      None,
      [Q] * 3,
      make_reward_fn(RewardConfig(), task),
      RefinerConfig(),
      rng=None,
      seed=(0,),
    )


def test_cut_draws_follow_the_softmax_over_steps():
  # lp = (0: ignored, ln .25, ln .75): step 2 with probability 3/4; n = 1 clips it to 1.
  lp = [0.0, np.log(0.25), np.log(0.75)]
  rng = np.random.default_rng(0)
  draws = [collect_lib._cut_from(lp, 2, rng) for _ in range(4000)]
  assert abs(np.mean(np.asarray(draws) == 2) - 0.75) < 0.03
  assert {collect_lib._cut_from(lp, 1, rng) for _ in range(50)} == {1}


def test_timed_retriever_adds_up_seconds():
  timed = collect_lib.TimedRetriever(ListRetriever(PASSAGES))
  hits = timed.search(["Vorla"], k=1)
  assert hits[0][0].id == "p1" and timed.seconds > 0
  assert dataclasses.is_dataclass(collect_lib.Collected)
