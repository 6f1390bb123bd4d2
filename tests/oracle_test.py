"""The oracle Meta-Refiner: cuts at the known first flaw, accepts what has none."""

import pathlib

import numpy as np
import pytest

from sr2.agent.oracle import GoldPlan, first_flaw, oracle_judge
from sr2.agent.refiner import RefinerConfig
from sr2.configlib import ConfigError, load_config_file
from sr2.testing import tiny_byte_tokenizer
from sr2.train.evaluation import trimmer_accuracy
from sr2.train.task import build_task

CONFIGS = pathlib.Path(__file__).parents[1] / "configs"
PLAN = GoldPlan(("Vorla", "Brezum"), ("Kelt",))
INFO = "<information>Doc 1(Title: x) y</information>"


def _search(q):
  return (f"<think>t</think>\n<search> {q} </search>", INFO)


def _answer(a):
  return (f"<think>t</think>\n<answer> {a} </answer>", None)


@pytest.mark.parametrize(
  ("steps", "flaw"),
  [
    ([_search("Vorla"), _search("Brezum"), _answer("Kelt")], 0),  # gold
    ([_search("vorla"), _search("BREZUM."), _answer("kelt")], 0),  # names compared normalised
    ([_search("Mirod"), _search("Vorla"), _search("Brezum"), _answer("Kelt")], 0),  # right answer
    ([_search("Mirod"), _search("Brezum"), _answer("Mirod")], 1),  # wrong query
    ([_search("Vorla"), _search("Mirod"), _answer("Mirod")], 2),  # misread shows next step
    ([_search("Vorla"), _answer("Brezum")], 2),  # premature answer
    ([_search("Vorla"), _search("Vorla"), _answer("x")], 2),  # a repeated search
    ([_search("Vorla"), _search("Brezum"), _search("Kelt")], 3),  # a search after the last hop
    ([_search("Vorla"), _search("Brezum"), _answer("Mirod")], 3),  # wrong final answer
    ([_search("Vorla"), ("no tags at all", None)], 2),  # an invalid step
    ([_search("Vorla"), _search("Brezum")], 0),  # turns ran out with every search right
  ],
)
def test_first_flaw_by_hand(steps, flaw):
  assert first_flaw(steps, PLAN) == flaw


def test_oracle_decisions_read_like_the_judges():
  tok = tiny_byte_tokenizer()
  judge = oracle_judge({"q?": PLAN}, tok)
  bad, good = (
    [_search("Vorla"), _answer("Brezum")],
    [_search("Vorla"), _search("Brezum"), _answer("Kelt")],
  )
  d_bad, d_good, none = judge([("q?", bad), ("q?", good), ("q?", [])], None)
  assert d_bad.revise and d_bad.step == 2 and d_bad.token == tok.encode("2")[0]
  assert np.argmax(d_bad.choice_logprobs) == 2 and len(d_bad.choice_logprobs) == 3
  assert not d_good.revise and d_good.step == 0 and d_good.token == tok.encode("0")[0]
  assert none is None  # no steps: not judged, as the learned judge
  with pytest.raises(KeyError, match="no gold plan for question 'other'"):
    judge([("other", good)], None)


def test_oracle_cuts_the_worlds_corruptions_at_their_recorded_flaw():
  """On every judge case of the world (gold and each corruption), exactly the known step."""
  c = load_config_file(CONFIGS / "tiny_world.py", "smoke")
  task = build_task(c)
  judge = task.judge_fn(RefinerConfig(enabled=True, judge="oracle", joint=False))
  cases = task.judge_cases
  assert {x.kind for x in cases} == {"gold", "wrong_query", "misread", "premature"}
  got = [d.step for d in judge([(x.question, list(x.steps)) for x in cases], None)]
  assert got == [x.flawed_step for x in cases]
  acc = trimmer_accuracy(
    task, None, cases, RefinerConfig(enabled=True, judge="oracle", joint=False)
  )
  assert acc["gate_acc"] == acc["trim_acc"] == acc["trim_recall"] == 1.0


def test_oracle_config_is_checked():
  with pytest.raises(ValueError, match="judge='oracle' needs refiner.joint=False"):
    RefinerConfig(enabled=True, judge="oracle", joint=True)
  with pytest.raises(
    ValueError, match=r"refiner.judge='llm'; expected one of \('policy', 'oracle'\)"
  ):
    RefinerConfig(judge="llm")
  with pytest.raises(ValueError, match="mr_oracle.*tiny_world only"):
    load_config_file(CONFIGS / "search_r2.py", "smollm2,mr_oracle")
  c = load_config_file(CONFIGS / "search_r2.py", "tiny_world,mr_oracle,smoke")
  assert (c.refiner.judge, c.refiner.joint, c.refiner.enabled) == ("oracle", False, True)


def test_oracle_on_a_task_without_plans_is_named():
  task = build_task(load_config_file(CONFIGS / "tiny_world.py", "smoke"))
  task.gold_plans = {}
  with pytest.raises(ConfigError, match="judge='oracle' needs the world's gold plans"):
    task.judge_fn(RefinerConfig(enabled=True, judge="oracle", joint=False))
