"""The synthetic world: invented entities, their passages, and 1-3 hop questions.

A question follows a chain of typed relations from a start entity; each comes with a gold
trajectory and corrupted ones, and lands in the train, dev or test split. Text is short
and templated on purpose: a tiny model trained from scratch must learn it in minutes.
Entities, names and passages live in `world_entities`; steps, corruptions and rendering in
`trajectories`. This module re-exports their public names, so `world` stays the one import.

Everything is a function of `WorldConfig`: the same seed gives the same world.
"""

from __future__ import annotations

import dataclasses
import functools
import random

from sr2.configlib import is_int_at_least
from sr2.data.examples import QAExample
from sr2.data.trajectories import (
  CORRUPTIONS,
  Plan,
  build_trajectory,
  corrupt,
)
from sr2.data.world_entities import KINDS, RELATIONS, Entity, Facts, make_entities, make_passages

SPLITS = ("train", "dev", "test")


@dataclasses.dataclass(frozen=True)
class WorldConfig:
  """What world to generate."""

  seed: int = 0
  num_persons: int = 240
  num_cities: int = 60
  num_companies: int = 60
  num_countries: int = 12
  num_landmarks: int = 60  # distractor passages borrowing entity names
  questions_per_hop: tuple[int, int, int] = (600, 600, 600)  # 1-, 2- and 3-hop questions
  split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train, dev, test
  distractor_rate: float = 0.3  # chance a new name reuses a name part or near-duplicates one

  def __post_init__(self):
    for f in (
      "seed",
      "num_persons",
      "num_cities",
      "num_companies",
      "num_countries",
      "num_landmarks",
    ):
      v = getattr(self, f)
      if not is_int_at_least(v, 0):
        raise ValueError(f"WorldConfig.{f} must be an int >= 0, got {v!r}")
    for f in ("num_persons", "num_companies", "num_countries"):
      if getattr(self, f) < 2:
        raise ValueError(f"WorldConfig.{f} must be >= 2, got {getattr(self, f)}")
    if self.num_cities < self.num_countries:
      raise ValueError(
        f"WorldConfig.num_cities ({self.num_cities}) must be >= num_countries "
        f"({self.num_countries}): every country needs a capital city"
      )
    for f, n in (("questions_per_hop", 3), ("split_fractions", 3)):
      v = getattr(self, f)
      if isinstance(v, str) or len(v) != n:
        raise ValueError(f"WorldConfig.{f} must have {n} entries, got {v!r}")
      object.__setattr__(self, f, tuple(v))
    hops = self.questions_per_hop
    if not all(is_int_at_least(q, 0) for q in hops) or not sum(hops):
      raise ValueError(f"WorldConfig.questions_per_hop must be ints >= 0, not all 0, got {hops}")
    fr = self.split_fractions
    if any(not isinstance(x, int | float) or x < 0 for x in fr) or abs(sum(fr) - 1) > 1e-6:
      raise ValueError(f"WorldConfig.split_fractions must be >= 0 and sum to 1, got {fr}")
    if not 0 <= self.distractor_rate < 1:
      raise ValueError(f"WorldConfig.distractor_rate must be in [0, 1), got {self.distractor_rate}")


@dataclasses.dataclass(frozen=True)
class WorldQuestion:
  """A question, its exact answer, and the chain of entities whose passages hold it."""

  id: str
  question: str
  answer: str
  split: str
  relations: tuple[str, ...]
  chain: tuple[str, ...]  # entity ids searched at hops 1..n
  gold: Plan
  corrupted: tuple[Plan, ...]
  # Multi-hop only: searches every hop but the last, then answers with the bridge entity
  # (a premature answer one hop short; the warm start's demonstrator may imitate it).
  stop_short: Plan | None = None

  @property
  def hops(self) -> int:
    return len(self.relations)

  def to_example(self) -> QAExample:
    return QAExample(self.id, self.question, (self.answer,), data_source="world")


@dataclasses.dataclass(frozen=True)
class World:
  """Entities, passages (`{id, title, text}` dicts) and questions of one `WorldConfig`."""

  config: WorldConfig
  entities: tuple[Entity, ...]
  passages: tuple[tuple[str, str, str], ...]  # (id, title, text)
  questions: tuple[WorldQuestion, ...]

  @functools.cached_property
  def _by_id(self) -> dict[str, Entity]:
    return {e.id: e for e in self.entities}

  def entity(self, entity_id: str) -> Entity:
    return self._by_id[entity_id]

  def passage_dicts(self) -> list[dict[str, str]]:
    """The corpus in the form `sr2.retrieval.BM25Index.build` takes."""
    return [{"id": i, "title": t, "text": x} for i, t, x in self.passages]

  def split(self, name: str) -> tuple[WorldQuestion, ...]:
    if name not in SPLITS:
      raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
    return tuple(q for q in self.questions if q.split == name)

  def examples(self, split: str) -> list[QAExample]:
    return [q.to_example() for q in self.split(split)]

  def texts(self) -> list[str]:
    """Every string the world can show a model (to fit a small tokenizer on)."""
    out = [f"{t} {x}" for _, t, x in self.passages]
    for q in self.questions:
      out.append(q.question)
      for traj in (q.gold, *q.corrupted):
        out.extend(f"{s.think} {s.query or s.answer}" for s in traj.steps)
    return out


# ---------------------------------------------------------------------------------------
# Questions.


def _paths(hops: int) -> list[tuple[str, ...]]:
  paths = [(r,) for r in RELATIONS]
  for _ in range(hops - 1):
    paths = [
      p + (r,) for p in paths for r in RELATIONS if RELATIONS[r].subj == RELATIONS[p[-1]].obj
    ]
  return paths


def _candidates(fx: Facts, hops: int, rng: random.Random) -> list[tuple[tuple[str, ...], str]]:
  """(relations, start id) pairs whose chain never revisits an entity, mixed over paths."""
  groups = []
  for rels in _paths(hops):
    group = []
    for start in fx.ids[RELATIONS[rels[0]].subj]:
      queried, read = [start], [fx.fact[(start, rels[0])]]
      fx.walk(rels, queried, read)
      seen = [*queried, *(read[-1:] if read[-1] in fx.by_id else [])]
      if len(set(seen)) == len(seen):
        group.append((rels, start))
    rng.shuffle(group)
    groups.append(group)
  # Round-robin over relation paths so rare question types are not drowned out.
  return [g[i] for i in range(max(map(len, groups), default=0)) for g in groups if i < len(g)]


def _question(fx: Facts, rels, start: str, qid: str, split: str, seed: int) -> WorldQuestion:
  chain, values = [start], [fx.fact[(start, rels[0])]]
  fx.walk(rels, chain, values)
  subject = fx.text(start)
  for r in rels[:-1]:
    subject = RELATIONS[r].phrase.format(s=subject)
  rng = random.Random(f"sr2-world:{seed}:{qid}")
  corrupted = [
    corrupt(fx, rels, chain, values, kind, rng.randrange(len(rels)), rng) for kind in CORRUPTIONS
  ]
  return WorldQuestion(
    qid,
    RELATIONS[rels[-1]].ask.format(s=subject),
    fx.text(values[-1]),
    split,
    tuple(rels),
    tuple(chain),
    build_trajectory(fx, rels, chain, values, chain),
    tuple(c for c in corrupted if c is not None),
    corrupt(fx, rels, chain, values, "premature", len(rels) - 1, rng) if len(rels) > 1 else None,
  )


def build_world(config: WorldConfig | None = None) -> World:
  """Generates the world of `config` (default `WorldConfig()`); deterministic per config.

  Raises:
    ValueError: if the entities cannot support `config.questions_per_hop` distinct
      questions of some hop count.
  """
  cfg = WorldConfig() if config is None else config
  rng = random.Random(f"sr2-world:{cfg.seed}")
  counts = (cfg.num_persons, cfg.num_cities, cfg.num_companies, cfg.num_countries)
  entities = make_entities(dict(zip(KINDS, counts, strict=True)), cfg.distractor_rate, rng)
  passages = make_passages(entities, cfg.num_landmarks, rng)
  fx = Facts(entities)
  questions = []
  for hops, n in enumerate(cfg.questions_per_hop, start=1):
    if not n:
      continue
    picked = _candidates(fx, hops, rng)
    if len(picked) < n:
      raise ValueError(
        f"WorldConfig.questions_per_hop[{hops - 1}] = {n}, but this world has "
        f"only {len(picked)} distinct {hops}-hop questions; lower it or add "
        "entities"
      )
    picked = picked[:n]
    rng.shuffle(picked)
    n_train = round(cfg.split_fractions[0] * n)
    n_dev = round(cfg.split_fractions[1] * n)
    for i, (rels, start) in enumerate(picked):
      split = "train" if i < n_train else "dev" if i < n_train + n_dev else "test"
      qid = f"world{cfg.seed}-{hops}hop-{i:04d}"
      questions.append(_question(fx, rels, start, qid, split, cfg.seed))
  return World(cfg, entities, passages, tuple(questions))
