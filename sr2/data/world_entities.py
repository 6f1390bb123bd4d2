"""The synthetic world's entities: relations, invented names, passages and fact lookups.

Names are built from syllables, so no pretrained model knows any fact and every answer
must be searched for. Each entity (person, city, company, country) gets one templated
passage stating its facts. Distractors: landmark passages that borrow an entity's name
("Tarvel Market is a market in Pelgor."), people sharing a first name or surname, and
near-duplicate place and company names ("Tarvel" / "Tarvol").
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping, Sequence

KINDS = ("person", "city", "company", "country")
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
class Entity:
  """A person, city, company or country; `facts` maps relation -> entity id or literal."""

  id: str
  kind: str
  name: str
  facts: tuple[tuple[str, str], ...]


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


def _names(counts: Mapping[str, int], namer: _Namer) -> dict[str, list[str]]:
  out: dict[str, list[str]] = {k: [] for k in KINDS}
  firsts: list[str] = []
  lasts: list[str] = []
  while len(out["person"]) < counts["person"]:
    first = namer.word(firsts, 2, reuse=True)
    last = namer.word(lasts, 2, reuse=True)
    if f"{first} {last}" not in out["person"]:
      out["person"].append(f"{first} {last}")
      firsts.append(first)
      lasts.append(last)
  for kind, syl, suffixes in (
    ("city", 2, ("",)),
    ("company", 2, ("", "tex", "dor")),
    ("country", 2, ("ia", "land")),
  ):
    while len(out[kind]) < counts[kind]:
      out[kind].append(namer.word(out[kind], syl, namer.rng.choice(suffixes)))
  return out


def make_entities(
  counts: Mapping[str, int], distractor_rate: float, rng: random.Random
) -> tuple[Entity, ...]:
  """`counts[kind]` entities of each kind in `KINDS`, with their facts.

  Country i's capital is city i, so `counts["city"]` must be >= `counts["country"]`;
  `distractor_rate` is the chance a new name reuses or near-duplicates an earlier one.
  """
  names = _names(counts, _Namer(rng, distractor_rate))
  ids = {k: [f"{k}-{i:04d}" for i in range(len(names[k]))] for k in KINDS}
  facts: dict[str, list[tuple[str, str]]] = {}
  for i, c in enumerate(ids["country"]):
    facts[c] = [("capital", ids["city"][i]), ("flag", rng.choice(_COLOURS))]
  for i, c in enumerate(ids["city"]):
    country = ids["country"][i] if i < counts["country"] else rng.choice(ids["country"])
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


def make_passages(
  entities: tuple[Entity, ...], num_landmarks: int, rng: random.Random
) -> tuple[tuple[str, str, str], ...]:
  """One `(id, title, text)` passage per entity, then `num_landmarks` distractors."""
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
  for i in range(num_landmarks):
    kind = rng.choice(_LANDMARKS)
    title = f"{rng.choice(bases)} {kind.capitalize()}"
    text = (
      f"{title} is a {kind} in {rng.choice(cities)}. "
      f"It was built in the year {rng.randint(1600, 1999)}."
    )
    out.append((f"landmark-{i:04d}", title, text))
  return tuple(out)


# ---------------------------------------------------------------------------------------
# Fact lookups.


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


class Facts:
  """Lookups used while writing questions and trajectories."""

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
