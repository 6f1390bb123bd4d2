"""What a run learns on: the synthetic world's task, and QA files in FlashRAG format."""

import json
import pathlib

import ml_collections
import pytest

from sr2.configlib import ConfigError, from_config, load_config_file
from sr2.data import actor_prompt
from sr2.train import sft
from sr2.train import task as task_lib
from sr2.train.task import qa as qa_lib

CONFIGS = pathlib.Path(__file__).parents[1] / "configs"


@pytest.fixture(scope="module")
def world():
  return task_lib.build_task(load_config_file(CONFIGS / "tiny_world.py", "smoke"))


def test_world_task_splits_prompts_and_demonstrations(world):
  assert {"train", "dev", "test"} <= set(world.splits)
  train = world.split("train")
  assert train and all(q.golds and q.hops >= 1 for q in train)
  # One demonstration per training question; stop_short > 0 mixes gold and short ones.
  assert len(world.sft_examples) == len(train)
  assert all(isinstance(e, sft.Example | sft.Choice) for e in world.sft_examples)
  q = train[0]
  assert world.tokenizer.decode(world.prompt_ids(q)) == actor_prompt(q.question)
  assert world.model.vocab_size == len(world.tokenizer)


def test_world_judge_cases_carry_the_known_first_flaw(world):
  cases = world.judge_cases
  assert cases
  gold = [c for c in cases if c.kind == "gold"]
  bad = [c for c in cases if c.kind != "gold"]
  assert gold and bad
  assert all(c.flawed_step == 0 for c in gold)
  assert all(1 <= c.flawed_step <= len(c.steps) for c in bad)
  # Every rendered step is (assistant text, observation or None); only the last lacks one.
  for c in cases:
    assert all(o is not None for _, o in c.steps[:-1])


def test_judgement_demonstrations_carry_the_worlds_flaw_indices():
  from sr2.agent.refiner_prompts import prompt_ids
  from sr2.data import WorldConfig, build_world
  from sr2.data.trajectories import render_steps

  c = load_config_file(CONFIGS / "tiny_world.py", "smoke")
  c.data.judge_demos = 5
  task = task_lib.build_task(c)
  train = task.split("train")
  demos = task.sft_examples[len(train) :]
  assert len(demos) == 10 and all(sum(e.mask) == 1 and e.mask[-1] == 1 for e in demos)
  # The same world, rebuilt: demonstration 2i is question i's gold plan, 2i+1 a corrupted
  # one (kinds in turn); the trained token is the digit of its first flawed step.
  world = build_world(from_config(WorldConfig, c.data.world, "config.data.world"))
  plans = []
  for i, q in enumerate([q for q in world.split("train") if q.corrupted][:5]):
    plans += [(q, q.gold), (q, q.corrupted[i % len(q.corrupted)])]
  assert {p.kind for _, p in plans} >= {"gold", "wrong_query", "misread"}
  tok = task.tokenizer
  for e, (q, plan) in zip(demos, plans, strict=True):
    assert tok.decode([e.ids[-1]]) == str(plan.flawed_step)
    steps = render_steps(plan, task.search_text)
    assert list(e.ids[:-1]) == prompt_ids(tok, q.question, steps, "table12")
  c.data.judge_demos = -1
  with pytest.raises(ConfigError, match="judge_demos must be an int >= 0, got -1"):
    task_lib.build_task(c)


def test_unknown_split_and_source_are_named(world):
  with pytest.raises(ConfigError, match="no split 'nope'"):
    world.split("nope")
  c = load_config_file(CONFIGS / "tiny_world.py", "smoke")
  c.data.source = "web"
  with pytest.raises(ConfigError, match="config.data.source='web'"):
    task_lib.build_task(c)


def _qa_root(tmp_path):
  rows = [
    {"id": "a", "question": "Where was Vorla born?", "golden_answers": ["Brezum"]},
    {"id": "b", "question": "Where is Kelt?", "golden_answers": ["Europe", "EU"]},
  ]
  for split in ("train", "dev"):
    d = tmp_path / "qa" / "mini"
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  corpus = tmp_path / "corpus.jsonl"
  corpus.write_text(json.dumps({"id": "p1", "title": "Vorla", "text": "Vorla was born in Brezum."}))
  return tmp_path, corpus


def test_qa_questions_from_flashrag_files(tmp_path):
  root, _ = _qa_root(tmp_path)
  qs = qa_lib._questions(root, ["qa/mini"], "train", limit=0)
  assert [(q.id, q.golds) for q in qs] == [("a", ("Brezum",)), ("b", ("Europe", "EU"))]
  assert [q.id for q in qa_lib._questions(root, ["qa/mini:dev"], "train", limit=1)] == ["a"]
  with pytest.raises(ConfigError, match="expected qa/<name> or multihop/<set>"):
    qa_lib._questions(root, ["mini"], "train", limit=0)
  with pytest.raises(ConfigError, match=r"has no file .*test.jsonl; expected FlashRAG JSONL"):
    qa_lib._questions(root, ["qa/mini:test"], "train", limit=0)


def test_qa_task_refuses_a_model_without_tokenizer(tmp_path):
  root, corpus = _qa_root(tmp_path)
  c = load_config_file(CONFIGS / "tiny_world.py", "smoke")
  c.data = ml_collections.ConfigDict(
    dict(
      source="qa",
      data_root=str(root),
      train=["qa/mini"],
      dev=["qa/mini"],
      test=[],
      corpus=str(corpus),
    )
  )
  c.model = ml_collections.ConfigDict(dict(source="preset:tiny"))
  with pytest.raises(ConfigError, match="has no tokenizer"):
    task_lib.build_task(c)
  c.data.corpus = str(root / "missing.jsonl")
  with pytest.raises(ConfigError, match="missing.jsonl does not exist"):
    task_lib.build_task(c)
