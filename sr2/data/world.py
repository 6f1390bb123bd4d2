"""The synthetic world: invented entities, their passages, and 1-3 hop questions.

Names are built from syllables, so no pretrained model knows any fact and every answer
must be searched for. Each entity (person, city, company, country) gets one templated
passage stating its facts. Distractors: landmark passages that borrow an entity's name
("Tarvel Market is a market in Pelgor."), people sharing a first name or surname, and
near-duplicate place and company names ("Tarvel" / "Tarvol").

A question follows a chain of typed relations from a start entity. Its gold trajectory
searches each entity of the chain by name (hop k's entity is named in the passage read at
hop k-1) and answers with the value stated in the last passage read. Corrupted
trajectories (wrong query, misread document, premature answer) record their first flawed
step (1-based), which is what the Meta-Refiner should point at. Text is short and
templated on purpose: a tiny model trained from scratch must learn it in minutes.

Everything is a function of `WorldConfig`: the same seed gives the same world.
"""

from __future__ import annotations

import dataclasses
import functools
import random
from collections.abc import Callable, Sequence

from sr2.data import prompts
from sr2.data.qa import QAExample

KINDS = ("person", "city", "company", "country")
SPLITS = ("train", "dev", "test")
CORRUPTIONS = ("wrong_query", "misread", "premature")
_JOBS = "painter farmer doctor pilot baker teacher singer tailor lawyer sailor miner potter".split()
_COLOURS = "red blue green yellow black white orange purple grey brown".split()
_LANDMARKS = "bridge tower park market museum school garden library".split()


@dataclasses.dataclass(frozen=True)
class _Rel:
  subj: str  # entity kind
  obj: str  # entity kind, or "year" / "job" / "colour" for a literal value
  fact: str  # the passage sentence, also what a think step states
  ask: str  # the question when this relation is the last hop
  phrase: str  # a noun phrase for the object, nested by multi-hop questions


# name subject object | fact | question | phrase
_TABLE = """
born_in person city | {s} was born in {o}. | In which city was {s} born?
  | the city where {s} was born
birth_year person year | {s} was born in the year {o}. | In which year was {s} born?
  | the year when {s} was born
job person job | {s} works as a {o}. | What is the job of {s}? | the job of {s}
works_for person company | {s} works for {o}. | Which company does {s} work for?
  | the company that {s} works for
located_in city country | {s} is a city in {o}. | In which country is {s}? | the country of {s}
city_year city year | {s} was founded in the year {o}. | In which year was {s} founded?
  | the year when {s} was founded
based_in company city | {s} is a company based in {o}. | In which city is {s} based?
  | the city where {s} is based
founded_by company person | {s} was founded by {o}. | Who founded {s}? | the founder of {s}
company_year company year | {s} was founded in the year {o}. | In which year was {s} founded?
  | the year when {s} was founded
capital country city | The capital of {s} is {o}. | What is the capital of {s}?
  | the capital of {s}
flag country colour | The flag of {s} is {o}. | What colour is the flag of {s}?
  | the colour of the flag of {s}
"""


def _parse_table(table: str) -> dict[str, _Rel]:
  out = {}
  for row in table.strip().replace("\n  |", " |").splitlines():
    head, fact, ask, phrase = (x.strip() for x in row.split("|"))
    name, subj, obj = head.split()
    out[name] = _Rel(subj, obj, fact, ask, phrase)
  return out


RELATIONS = _parse_table(_TABLE)
_INTRO = {"country": "{s} is a country."}  # the other kinds state their type in a fact


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
      if isinstance(v, bool) or not isinstance(v, int) or v < 0:
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
    if any(
      isinstance(q, bool) or not isinstance(q, int) or q < 0 for q in self.questions_per_hop
    ) or not sum(self.questions_per_hop):
      raise ValueError(
        f"WorldConfig.questions_per_hop must be ints >= 0, not all 0, got {self.questions_per_hop}"
      )
    fr = self.split_fractions
    if any(not isinstance(x, int | float) or x < 0 for x in fr) or abs(sum(fr) - 1) > 1e-6:
      raise ValueError(f"WorldConfig.split_fractions must be >= 0 and sum to 1, got {fr}")
    if not 0 <= self.distractor_rate < 1:
      raise ValueError(f"WorldConfig.distractor_rate must be in [0, 1), got {self.distractor_rate}")


@dataclasses.dataclass(frozen=True)
class Entity:
  """A person, city, company or country; `facts` maps relation -> entity id or literal."""

  id: str
  kind: str
  name: str
  facts: tuple[tuple[str, str], ...]


@dataclasses.dataclass(frozen=True)
class Step:
  """One assistant turn: a think, then either a search query or a final answer.

  `gold_passage_id` is the passage the query is aimed at (the entity it names).
  """

  think: str
  query: str | None = None
  answer: str | None = None
  gold_passage_id: str | None = None

  def __post_init__(self):
    if (self.query is None) == (self.answer is None):
      raise ValueError(f"Step needs exactly one of query or answer, got {self}")


@dataclasses.dataclass(frozen=True)
class Trajectory:
  """Steps ending in an answer; `flawed_step` is the first bad step (1-based, 0 = none)."""

  steps: tuple[Step, ...]
  kind: str = "gold"
  flawed_step: int = 0

  def __post_init__(self):
    if not self.steps or self.steps[-1].answer is None:
      raise ValueError("a Trajectory must end with an answer step")
    if any(s.answer is not None for s in self.steps[:-1]):
      raise ValueError("only the last step of a Trajectory may answer")
    if self.kind not in ("gold", *CORRUPTIONS):
      raise ValueError(f"Trajectory.kind must be 'gold' or one of {CORRUPTIONS}, got {self.kind}")
    if (self.kind == "gold") != (self.flawed_step == 0) or not (
      0 <= self.flawed_step <= len(self.steps)
    ):
      raise ValueError(
        f"Trajectory.flawed_step {self.flawed_step} does not fit kind "
        f"{self.kind!r} and {len(self.steps)} steps"
      )

  @property
  def answer(self) -> str:
    return self.steps[-1].answer


@dataclasses.dataclass(frozen=True)
class WorldQuestion:
  """A question, its exact answer, and the chain of entities whose passages hold it."""

  id: str
  question: str
  answer: str
  split: str
  relations: tuple[str, ...]
  chain: tuple[str, ...]  # entity ids searched at hops 1..n
  gold: Trajectory
  corrupted: tuple[Trajectory, ...]

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
# Names and entities.

_ONSETS = "b d f g k l m n p r s t v z br dr gr kr tr st".split()
_VOWELS = "aeiou"
_CODAS = "n r l s k m".split()
_RESERVED = {
  w
  for r in RELATIONS.values()
  for t in (r.fact, r.ask, r.phrase)
  for w in t.lower().replace("?", "").replace(".", "").split()
}
_RESERVED |= {*_JOBS, *_COLOURS, *_LANDMARKS, "answer", "need", "find", "built", "stands"}


class _Namer:
  """Unique invented words; `rate` of them reuse or near-duplicate an earlier name."""

  def __init__(self, rng: random.Random, rate: float):
    self.rng, self.rate, self.used = rng, rate, set()

  def new(self, syllables: int, suffix: str = "") -> str:
    while True:
      w = "".join(self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) for _ in range(syllables))
      w += (self.rng.choice(_CODAS) if self.rng.random() < 0.5 else "") + suffix
      if w not in self.used and w not in _RESERVED:
        self.used.add(w)
        return w.capitalize()

  def near_duplicate(self, name: str) -> str | None:
    """`name` with one vowel changed, if that word is still free."""
    spots = [i for i, c in enumerate(name) if c in _VOWELS]
    i = self.rng.choice(spots)
    w = (name[:i] + self.rng.choice(_VOWELS.replace(name[i], "")) + name[i + 1 :]).lower()
    if w in self.used or w in _RESERVED:
      return None
    self.used.add(w)
    return w.capitalize()

  def word(self, pool: list[str], syllables: int, suffix: str = "", reuse: bool = False) -> str:
    """A new word, or (with probability `rate`) a reuse/near-duplicate of one in `pool`."""
    if pool and self.rng.random() < self.rate:
      old = self.rng.choice(pool)
      w = old if reuse else self.near_duplicate(old)
      if w:
        return w
    return self.new(syllables, suffix)


def _names(cfg: WorldConfig, namer: _Namer) -> dict[str, list[str]]:
  out: dict[str, list[str]] = {k: [] for k in KINDS}
  firsts: list[str] = []
  lasts: list[str] = []
  while len(out["person"]) < cfg.num_persons:
    first = namer.word(firsts, 2, reuse=True)
    last = namer.word(lasts, 2, reuse=True)
    if f"{first} {last}" not in out["person"]:
      out["person"].append(f"{first} {last}")
      firsts.append(first)
      lasts.append(last)
  for kind, n, syl, suffixes in (
    ("city", cfg.num_cities, 2, ("",)),
    ("company", cfg.num_companies, 2, ("", "tex", "dor")),
    ("country", cfg.num_countries, 2, ("ia", "land")),
  ):
    while len(out[kind]) < n:
      out[kind].append(namer.word(out[kind], syl, namer.rng.choice(suffixes)))
  return out


def _entities(cfg: WorldConfig, rng: random.Random) -> tuple[Entity, ...]:
  names = _names(cfg, _Namer(rng, cfg.distractor_rate))
  ids = {k: [f"{k}-{i:04d}" for i in range(len(names[k]))] for k in KINDS}
  facts: dict[str, list[tuple[str, str]]] = {}
  for i, c in enumerate(ids["country"]):
    facts[c] = [("capital", ids["city"][i]), ("flag", rng.choice(_COLOURS))]
  for i, c in enumerate(ids["city"]):
    country = ids["country"][i] if i < cfg.num_countries else rng.choice(ids["country"])
    facts[c] = [("located_in", country), ("city_year", str(rng.randint(1500, 1950)))]
  for c in ids["company"]:
    facts[c] = [
      ("based_in", rng.choice(ids["city"])),
      ("founded_by", rng.choice(ids["person"])),
      ("company_year", str(rng.randint(1800, 1999))),
    ]
  for p in ids["person"]:
    facts[p] = [
      ("job", rng.choice(_JOBS)),
      ("born_in", rng.choice(ids["city"])),
      ("birth_year", str(rng.randint(1900, 1999))),
      ("works_for", rng.choice(ids["company"])),
    ]
  return tuple(
    Entity(i, k, names[k][n], tuple(facts[i])) for k in KINDS for n, i in enumerate(ids[k])
  )


def _passages(entities: tuple[Entity, ...], cfg: WorldConfig, rng: random.Random):
  name = {e.id: e.name for e in entities}
  out = []
  for e in entities:
    lines = [_INTRO[e.kind].format(s=e.name)] if e.kind in _INTRO else []
    lines += [RELATIONS[r].fact.format(s=e.name, o=name.get(v, v)) for r, v in e.facts]
    out.append((e.id, e.name, " ".join(lines)))
  # Landmarks borrow a surname, city or company name, so a search for that name has to
  # tell the entity's own passage from a look-alike.
  bases = [e.name.split()[-1] for e in entities if e.kind != "country"]
  cities = [e.name for e in entities if e.kind == "city"]
  for i in range(cfg.num_landmarks):
    kind = rng.choice(_LANDMARKS)
    title = f"{rng.choice(bases)} {kind.capitalize()}"
    text = (
      f"{title} is a {kind} in {rng.choice(cities)}. "
      f"It was built in the year {rng.randint(1600, 1999)}."
    )
    out.append((f"landmark-{i:04d}", title, text))
  return tuple(out)


def _similar(entities: tuple[Entity, ...]) -> dict[str, list[str]]:
  """Look-alikes: people sharing a name part, other names equal up to their vowels."""
  groups: dict[tuple[str, str], list[str]] = {}
  for e in entities:
    keys = (
      e.name.split()
      if e.kind == "person"
      else ["".join("*" if c in _VOWELS else c for c in e.name.lower())]
    )
    for key in keys:
      groups.setdefault((e.kind, key), []).append(e.id)
  out: dict[str, list[str]] = {e.id: [] for e in entities}
  for members in groups.values():
    for m in members:
      out[m] += [o for o in members if o != m and o not in out[m]]
  return out


# ---------------------------------------------------------------------------------------
# Questions and trajectories.


class _Facts:
  """Lookups used while writing questions."""

  def __init__(self, entities: tuple[Entity, ...]):
    self.by_id = {e.id: e for e in entities}
    self.fact = {(e.id, r): v for e in entities for r, v in e.facts}
    self.ids = {k: [e.id for e in entities if e.kind == k] for k in KINDS}
    self.similar = _similar(entities)

  def text(self, value: str) -> str:
    return self.by_id[value].name if value in self.by_id else value

  def walk(self, rels: Sequence[str], queried: list[str], read: list[str]) -> None:
    """Extends a chain read up to hop len(read) - 1 by following the world's facts."""
    for r in rels[len(read) :]:
      queried.append(read[-1])
      read.append(self.fact[(read[-1], r)])

  def alternatives(self, rng: random.Random, rel: str, truth: str, near: list[str]):
    """Plausible wrong values for `rel`: look-alikes' values first, then any of the type."""
    obj = RELATIONS[rel].obj
    pool = (
      {"job": _JOBS, "colour": _COLOURS}.get(obj)
      or self.ids.get(obj)
      or [str(int(truth) + d) for d in range(-30, 31) if d]
    )
    pool = list(pool)
    rng.shuffle(pool)
    return [v for v in dict.fromkeys([*near, *pool]) if v != truth]


def _paths(hops: int) -> list[tuple[str, ...]]:
  paths = [(r,) for r in RELATIONS]
  for _ in range(hops - 1):
    paths = [
      p + (r,) for p in paths for r in RELATIONS if RELATIONS[r].subj == RELATIONS[p[-1]].obj
    ]
  return paths


def _candidates(fx: _Facts, hops: int, rng: random.Random) -> list[tuple[tuple[str, ...], str]]:
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


def _trajectory(fx: _Facts, rels, queried, read, needs, kind="gold", flawed=0, answer=None):
  steps, prev = [], ""
  for k, q in enumerate(queried):
    need = f"I need to find {RELATIONS[rels[k]].phrase.format(s=fx.text(needs[k]))}."
    steps.append(Step(f"{prev} {need}".strip(), query=fx.text(q), gold_passage_id=q))
    prev = RELATIONS[rels[k]].fact.format(s=fx.text(q), o=fx.text(read[k]))
  answer = fx.text(read[-1]) if answer is None else answer
  if not prev:  # an answer before any search
    prev = f"I need to find {RELATIONS[rels[0]].phrase.format(s=fx.text(needs[0]))}."
  steps.append(Step(f"{prev} The answer is {answer}.", answer=answer))
  return Trajectory(tuple(steps), kind, flawed)


def _corrupt(fx: _Facts, rels, chain, values, kind: str, k: int, rng: random.Random):
  """A trajectory whose first flaw is at hop `k` (0-based), or None if none differs."""
  gold_answer = fx.text(values[-1])
  if kind == "premature":  # answers at step k+1, before reading hop k's passage
    guess = (
      fx.text(values[k - 1]) if k else fx.text(fx.alternatives(rng, rels[-1], values[-1], [])[0])
    )
    return _trajectory(fx, rels, chain[:k], values[:k], chain, kind, k + 1, guess)
  if kind == "wrong_query":  # searches a look-alike of the entity it needs
    same_kind = fx.ids[fx.by_id[chain[k]].kind][:]
    rng.shuffle(same_kind)
    options = [o for o in dict.fromkeys([*fx.similar[chain[k]], *same_kind]) if o != chain[k]]
  else:  # misread: states a wrong value for what hop k's passage says
    near = [fx.fact[(s, rels[k])] for s in fx.similar[chain[k]]]
    options = fx.alternatives(rng, rels[k], values[k], near)
  for alt in options[:20]:
    if kind == "wrong_query":
      queried, read = [*chain[:k], alt], [*values[:k], fx.fact[(alt, rels[k])]]
    else:
      queried, read = list(chain[: k + 1]), [*values[:k], alt]
    fx.walk(rels, queried, read)
    if fx.text(read[-1]) != gold_answer:
      return _trajectory(
        fx,
        rels,
        queried,
        read,
        [*chain[: k + 1], *queried[k + 1 :]],
        kind,
        k + 1 if kind == "wrong_query" else k + 2,
      )
  return None


def _question(fx: _Facts, rels, start: str, qid: str, split: str, seed: int) -> WorldQuestion:
  chain, values = [start], [fx.fact[(start, rels[0])]]
  fx.walk(rels, chain, values)
  subject = fx.text(start)
  for r in rels[:-1]:
    subject = RELATIONS[r].phrase.format(s=subject)
  rng = random.Random(f"sr2-world:{seed}:{qid}")
  corrupted = [
    _corrupt(fx, rels, chain, values, kind, rng.randrange(len(rels)), rng) for kind in CORRUPTIONS
  ]
  return WorldQuestion(
    qid,
    RELATIONS[rels[-1]].ask.format(s=subject),
    fx.text(values[-1]),
    split,
    tuple(rels),
    tuple(chain),
    _trajectory(fx, rels, chain, values, chain),
    tuple(c for c in corrupted if c is not None),
  )


def build_world(config: WorldConfig | None = None) -> World:
  """Generates the world of `config` (default `WorldConfig()`); deterministic per config.

  Raises:
    ValueError: if the entities cannot support `config.questions_per_hop` distinct
      questions of some hop count.
  """
  cfg = WorldConfig() if config is None else config
  rng = random.Random(f"sr2-world:{cfg.seed}")
  entities = _entities(cfg, rng)
  passages = _passages(entities, cfg, rng)
  fx = _Facts(entities)
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


# ---------------------------------------------------------------------------------------
# Rendering in the agent's tag protocol.


def render_steps(
  trajectory: Trajectory, search_fn: Callable[[str], str]
) -> list[tuple[str, str | None]]:
  """Each step as `(assistant_text, information_text or None)`.

  Args:
    trajectory: gold or corrupted.
    search_fn: query -> observation (e.g. `Doc 1(Title: t) text` lines of the top hits).

  Returns:
    Pairs that concatenate to `render_trajectory`'s text; the information text (retrieved,
    not written by the model) is what the loss mask leaves out.
  """
  out = []
  for s in trajectory.steps:
    think = f"{prompts.THINK_OPEN}{s.think}{prompts.THINK_CLOSE}\n"
    if s.query is not None:
      act = f"{prompts.SEARCH_OPEN} {s.query} {prompts.SEARCH_CLOSE}"
      out.append((think + act, prompts.wrap_information(search_fn(s.query))))
    else:
      out.append((think + f"{prompts.ANSWER_OPEN} {s.answer} {prompts.ANSWER_CLOSE}", None))
  return out


def render_trajectory(trajectory: Trajectory, search_fn: Callable[[str], str]) -> str:
  """The trajectory as the Actor's response text, with observations from `search_fn`."""
  return "".join(a + (t or "") for a, t in render_steps(trajectory, search_fn))
