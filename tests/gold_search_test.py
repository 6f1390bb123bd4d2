"""Gold search trajectories on the real multi-hop train rows (sr2/data/gold_search.py)."""

import functools

import pytest
from conftest import SHARED_DATA

from sr2.agent import protocol
from sr2.agent.rollout import RolloutConfig
from sr2.configlib import ConfigError
from sr2.data import prompts
from sr2.data.examples import Paragraph, QAExample, read_qa_jsonl
from sr2.data.gold_search import entity, gold_plan, gold_plans, hop_order
from sr2.data.trajectories import render_steps
from sr2.retrieval import BM25Index, pool_multihop_paragraphs
from sr2.testing import tiny_byte_tokenizer
from sr2.train.task import Task
from sr2.train.task.qa import _gold_demonstrations

SETS = ("hotpotqa", "2wikimultihopqa", "musique")
TOP_K = 3
needs_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="needs ../shared/data")


@functools.cache
def _train():
  """The three sets' train rows and BM25 over their pooled paragraphs."""
  paths = [SHARED_DATA / "multihop" / s / "train.jsonl" for s in SETS]
  rows = [ex for p in paths for ex in read_qa_jsonl(p)]
  return rows, BM25Index.build(pool_multihop_paragraphs(paths))


def _search(index):
  return lambda q: index.search([q], k=TOP_K)[0]


def _row(paragraphs, metadata=None, question="Who founded the city where X was born?"):
  ps = tuple(Paragraph(t, text, sup) for t, text, sup in paragraphs)
  return QAExample("q1", question, ("Ann Smith",), paragraphs=ps, metadata=metadata)


def test_entity_drops_a_trailing_disambiguation():
  assert entity("Lilu (mythology)") == "Lilu"
  assert entity("Get Low (Dillon Francis and DJ Snake song)") == "Get Low"
  assert entity("Alû") == "Alû"
  assert entity("(Untitled)") == "(Untitled)"  # nothing would be left


def test_hop_order_follows_musique_decomposition_and_2wiki_evidences():
  ps = [("A", "a text", False), ("Beta", "b text", True), ("Gamma", "g text", True)]
  musique = {"question_decomposition": [{"paragraph_support_idx": 2}, {"paragraph_support_idx": 1}]}
  assert [p.title for p in hop_order(_row(ps, musique))] == ["Gamma", "Beta"]
  wiki = {"evidences": [["Gamma", "founded by", "Beta"], ["Beta", "born in", "Ann Smith"]]}
  assert [p.title for p in hop_order(_row(ps, wiki))] == ["Gamma", "Beta"]
  # 2Wiki titles carry a disambiguation the evidence subject lacks.
  ps2 = [("Get Low (song)", "by Dillon Francis", True), ("Dillon Francis", "born 1987", True)]
  wiki2 = {
    "evidences": [["Get Low", "performer", "Dillon Francis"], ["Dillon Francis", "dob", "1987"]]
  }
  assert [p.title for p in hop_order(_row(ps2, wiki2))] == ["Get Low (song)", "Dillon Francis"]


def test_hop_order_without_metadata_reads_the_bridge_after_the_passage_that_names_it():
  ps = [
    ("Paris Smith", "Paris Smith founded the town.", True),  # the bridge: named in hop 1
    ("X (band)", "X was born in the town of Paris Smith.", True),  # named in the question
  ]
  assert [p.title for p in hop_order(_row(ps))] == ["X (band)", "Paris Smith"]
  assert hop_order(_row([("A", "t", False)])) == []


def test_a_row_without_a_retrievable_query_is_dropped_with_its_reason():
  ps = [("Nowhere", "no such passage", True)]
  plan, reason = gold_plan(_row(ps), lambda q: [])
  assert plan is None and reason == "not_retrieved"
  kept, dropped = gold_plans([_row(ps), _row([("A", "t", False)])], lambda q: [])
  assert kept == [] and dropped["not_retrieved"] == 1 and dropped["no_supporting"] == 1


@needs_data
def test_every_kept_search_retrieves_its_supporting_paragraph_within_top_k():
  rows, index = _train()
  kept, dropped = gold_plans(rows, _search(index))
  assert len(kept) + sum(dropped.values()) == len(rows)
  assert len(kept) >= 0.85 * len(rows), dropped  # 529 of 577 at this commit
  for ex, plan in kept:
    supporting = {p.title for p in ex.paragraphs if p.is_supporting}
    searched = [s for s in plan.steps if s.query is not None]
    assert len(searched) == len(hop_order(ex))
    for step in searched:
      hits = index.search([step.query], k=TOP_K)[0]
      assert step.gold_passage_id in [h.id for h in hits], (ex.id, step.query)
      assert next(h.title for h in hits if h.id == step.gold_passage_id) in supporting
    assert plan.answer == ex.golden_answers[0]


@needs_data
def test_a_rendered_trajectory_parses_back_into_the_same_steps():
  rows, index = _train()
  kept, _ = gold_plans(rows[:120], _search(index))
  docs = lambda q: _task(index).search_text(q)
  for _, plan in kept:
    text = "".join(a + (o or "") for a, o in render_steps(plan, docs))
    steps = protocol.split_steps(text)
    assert len(steps) == len(plan.steps)
    for got, want in zip(steps, plan.steps, strict=True):
      turn = protocol.parse_turn(got.assistant_text)
      assert turn.kind == ("search" if want.query is not None else "answer"), got.assistant_text
      assert (turn.query, turn.answer, turn.think) == (want.query, want.answer, want.think)
      assert turn.note is None  # nothing tolerated: a clean turn
      assert (got.tool_text is None) == (want.query is None)


def _task(index, chat=False):
  tok = tiny_byte_tokenizer()
  if chat:  # a chat template, as SmolLM2's: the demonstrations go through it
    tok._tok.chat_template = (
      "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}<|assistant|>"
    )
  return Task(
    splits={},
    retriever=index,
    tokenizer=tok,
    model=None,
    rollout=RolloutConfig(top_k=TOP_K, max_obs_tokens=500),
    init_params=None,
    pretrained=True,
  )


@needs_data
def test_the_loss_mask_covers_exactly_the_model_written_tokens():
  rows, index = _train()
  task = _task(index, chat=True)
  examples, notes = _gold_demonstrations(task, rows[:40], max_len=4096)
  kept, _ = gold_plans(rows[:40], _search(index))
  assert notes["demonstrations"] == len(examples) == len(kept)
  tok = task.tokenizer
  for ex_, (row, plan) in zip(examples, kept, strict=True):
    steps = render_steps(plan, task.search_text)
    prompt = tok.encode(prompts.actor_prompt(row.question, prompts.chat_of(tok)))
    assert prompt[:5] != tok.encode(prompts.actor_prompt(row.question))[:5]  # chat form
    assert list(ex_.ids[: len(prompt)]) == prompt and not any(ex_.mask[: len(prompt)])
    # Byte-level BPE: runs of mask 1 decode to exactly the assistant texts, runs of 0 to
    # the observations, in order.
    runs, cur = [], []
    for t, m in zip(ex_.ids[len(prompt) :], ex_.mask[len(prompt) :], strict=True):
      if cur and cur[-1][1] != m:
        runs.append(cur)
        cur = []
      cur.append((t, m))
    runs.append(cur)
    want = [x for a, o in steps for x in ((a, 1), (o, 0)) if x[0] is not None]
    got = [(tok.decode([t for t, _ in r]), r[0][1]) for r in runs]
    assert got == want


@needs_data
def test_demonstrations_longer_than_the_rows_are_dropped_and_counted():
  rows, index = _train()
  every, _ = _gold_demonstrations(_task(index), rows[:40], max_len=1 << 20)
  cap = sorted(len(e.ids) for e in every)[len(every) // 2]
  examples, notes = _gold_demonstrations(_task(index), rows[:40], max_len=cap)
  assert [e for e in every if len(e.ids) <= cap] == examples
  assert notes["dropped"]["too_long"] == len(every) - len(examples) > 0
  assert notes["demonstrations"] + sum(notes["dropped"].values()) == 40
  with pytest.raises(ConfigError, match="raise config.rl.max_len"):
    _gold_demonstrations(_task(index), rows[:40], max_len=10)
