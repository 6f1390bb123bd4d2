"""The synthetic world: determinism, splits, reachable answers, corruptions, BM25 recall."""

import collections
import hashlib
import os
import re
import subprocess
import sys

import pytest

from sr2.data import prompts, trajectories, world
from sr2.retrieval import BM25Index, format_documents

SMALL = world.WorldConfig(
  seed=7,
  num_persons=40,
  num_cities=12,
  num_companies=10,
  num_countries=4,
  num_landmarks=10,
  questions_per_hop=(60, 60, 60),
)


@pytest.fixture(scope="module")
def w():
  return world.build_world()


@pytest.fixture(scope="module")
def index(w):
  return BM25Index.build(w.passage_dicts())


def _fingerprint(wd: world.World) -> str:
  return hashlib.sha256(repr((wd.passages, wd.questions)).encode()).hexdigest()


def test_same_seed_same_world_other_seed_other_world():
  a, b = world.build_world(SMALL), world.build_world(SMALL)
  assert a == b and _fingerprint(a) == _fingerprint(b)
  c = world.build_world(world.WorldConfig(**{**SMALL.__dict__, "seed": 8}))
  assert c.passages != a.passages and c.questions != a.questions


def test_world_does_not_depend_on_string_hashing():
  code = (
    "from sr2.data import world; import hashlib; w = world.build_world(world.WorldConfig("
    "seed=7, num_persons=40, num_cities=12, num_companies=10, num_countries=4, "
    "num_landmarks=10, questions_per_hop=(60, 60, 60))); "
    "print(hashlib.sha256(repr((w.passages, w.questions)).encode()).hexdigest())"
  )
  out = subprocess.run(
    [sys.executable, "-c", code],
    capture_output=True,
    text=True,
    check=True,
    env={**os.environ, "PYTHONHASHSEED": "12345"},
    timeout=120,
  )
  assert out.stdout.strip() == _fingerprint(world.build_world(SMALL))


def test_sizes_and_splits(w):
  cfg = w.config
  assert len(w.entities) == cfg.num_persons + cfg.num_cities + cfg.num_companies + cfg.num_countries
  assert len(w.passages) == len(w.entities) + cfg.num_landmarks
  assert len({p[0] for p in w.passages}) == len(w.passages)
  assert len({e.name for e in w.entities}) == len(w.entities)
  hops = collections.Counter(q.hops for q in w.questions)
  assert hops == {1: 600, 2: 600, 3: 600}
  texts = {s: {q.question for q in w.split(s)} for s in world.SPLITS}
  assert len(texts["train"]) == 1440 and len(texts["dev"]) == len(texts["test"]) == 180
  assert not texts["train"] & texts["dev"] and not texts["train"] & texts["test"]
  assert not texts["dev"] & texts["test"]
  assert len({q.id for q in w.questions}) == len(w.questions)
  for s in world.SPLITS:
    assert {q.hops for q in w.split(s)} == {1, 2, 3}
  ex = w.examples("dev")[0]
  assert ex.data_source == "world" and ex.golden_answers == (w.split("dev")[0].answer,)


def test_gold_searches_reach_the_answer(w):
  text = {pid: f"{title} {body}" for pid, title, body in w.passages}
  for q in w.questions:
    steps = q.gold.steps
    assert len(steps) == q.hops + 1 and q.gold.answer == q.answer
    searches = steps[:-1]
    assert [s.gold_passage_id for s in searches] == list(q.chain)
    for k, s in enumerate(searches):
      assert s.query == w.entity(s.gold_passage_id).name
      if k:  # hop k's entity is named in the passage read at hop k-1
        assert s.query in text[searches[k - 1].gold_passage_id], q
      else:
        assert s.query in q.question
    assert q.answer in text[searches[-1].gold_passage_id]
    assert q.answer not in q.question
    assert re.search(r"\bThe answer is " + re.escape(q.answer) + r"\.$", steps[-1].think)


def test_corruptions_have_the_right_first_flaw(w):
  kinds = collections.Counter()
  text = {pid: body for pid, _, body in w.passages}
  for q in w.questions:
    gold = q.gold.steps
    for c in q.corrupted:
      kinds[c.kind] += 1
      f = c.flawed_step
      assert c.steps[: f - 1] == gold[: f - 1], (q.id, c.kind)  # all before the flaw are gold
      assert c.steps[f - 1] != gold[f - 1]
      assert c.answer != q.answer
      bad = c.steps[f - 1]
      if c.kind == "wrong_query":
        assert bad.think == gold[f - 1].think and bad.query != gold[f - 1].query
        assert bad.gold_passage_id != gold[f - 1].gold_passage_id and f <= q.hops
      elif c.kind == "misread":  # states a fact the passage just read does not contain
        assert 2 <= f <= q.hops + 1
        read = gold[f - 2].gold_passage_id
        claim = bad.think.split(". ")[0] + "."
        assert claim not in text[read]
        # ... about the same subject and relation as the true fact.
        template = world.RELATIONS[q.relations[f - 2]].fact
        head, tail = template.format(s=w.entity(read).name, o="\0").split("\0")
        assert claim.startswith(head) and claim.endswith(tail)
      else:  # premature: answers while hops remain
        assert c.kind == "premature" and len(c.steps) == f <= q.hops
        assert bad.answer is not None and gold[f - 1].answer is None
  assert kinds["premature"] == len(w.questions)
  assert min(kinds.values()) >= 0.95 * len(w.questions), kinds


def test_stop_short_answers_the_bridge_entity_one_hop_early(w):
  for q in w.questions:
    if q.hops == 1:
      assert q.stop_short is None
      continue
    s, gold = q.stop_short, q.gold.steps
    assert s.kind == "premature" and s.flawed_step == q.hops == len(s.steps)
    assert s.steps[:-1] == gold[: q.hops - 1]  # every search but the last, as gold
    # The answer is the entity the last gold search looks up (the bridge), not the answer.
    assert s.answer == gold[q.hops - 1].query != q.answer


def test_bm25_ranks_gold_passage_in_top3(w, index):
  hops = [(s.query, s.gold_passage_id) for q in w.questions for s in q.gold.steps if s.query]
  hits = index.search([query for query, _ in hops], k=3)
  found = [pid in [h.id for h in hs] for (_, pid), hs in zip(hops, hits, strict=True)]
  rate = sum(found) / len(found)
  assert rate >= 0.95, f"top-3 recall of gold passages {rate:.3f} < 0.95"


def test_render_matches_the_protocol(w, index):
  q = next(q for q in w.questions if q.hops == 2)
  search = lambda query: format_documents(index.search([query], k=3)[0])
  steps = trajectories.render_steps(q.gold, search)
  text = trajectories.render_trajectory(q.gold, search)
  assert "".join(a + (t or "") for a, t in steps) == text
  pattern = (
    r"(<think>[^<]+</think>\n<search> [^<]+ </search>\n\n<information>Doc 1\(Title: "
    r"[^)]+\)[^<]+</information>\n\n){2}<think>[^<]+</think>\n<answer> ([^<]+) </answer>"
  )
  match = re.fullmatch(pattern, text)
  assert match and match.group(2) == q.answer
  assert [t is None for _, t in steps] == [False, False, True]
  prompt = prompts.refiner_prompt(q.question, steps)  # what the Meta-Refiner would read
  assert "ASSISTANT_STEP_3" in prompt and prompt.count("TOOL: <information>") == 2


@pytest.mark.parametrize(
  "field, value, message",
  [
    ("num_persons", 1, "num_persons must be >= 2"),
    ("num_cities", 2, "every country needs a capital"),
    ("num_landmarks", -1, "num_landmarks must be an int"),
    ("questions_per_hop", (1, 2), "3 entries"),
    ("questions_per_hop", (0, 0, 0), "not all 0"),
    ("split_fractions", (0.5, 0.5, 0.5), "sum to 1"),
    ("distractor_rate", 1.0, "distractor_rate"),
    ("seed", 1.5, "seed must be an int"),
  ],
)
def test_config_validation(field, value, message):
  with pytest.raises(ValueError, match=message):
    world.WorldConfig(**{field: value})


def test_too_many_questions_is_a_clear_error():
  cfg = world.WorldConfig(
    num_persons=4,
    num_cities=4,
    num_companies=2,
    num_countries=2,
    num_landmarks=0,
    questions_per_hop=(500, 0, 0),
  )
  with pytest.raises(ValueError, match=r"questions_per_hop\[0\] = 500"):
    world.build_world(cfg)


def test_step_and_trajectory_validation():
  with pytest.raises(ValueError, match="exactly one"):
    trajectories.PlanStep("t")
  with pytest.raises(ValueError, match="end with an answer"):
    trajectories.Plan((trajectories.PlanStep("t", query="q"),))
  with pytest.raises(ValueError, match="flawed_step"):
    trajectories.Plan((trajectories.PlanStep("t", answer="a"),), kind="misread", flawed_step=0)
