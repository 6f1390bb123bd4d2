"""Tests for sr2.retrieval.corpus: readers, multi-hop pooling, observation formatting."""

import json
import pathlib

import pytest

from sr2.retrieval import (
  BM25Index,
  CorpusError,
  Hit,
  format_documents,
  format_information,
  pool_multihop_paragraphs,
  read_jsonl_corpus,
)

_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"


def _need(path: pathlib.Path) -> pathlib.Path:
  if not path.exists():
    pytest.skip(f"{path} not found (shared data not present)")
  return path


def _write(path: pathlib.Path, lines: list) -> pathlib.Path:
  path.write_text(
    "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), encoding="utf-8"
  )
  return path


def test_read_title_text_and_flashrag_rows(tmp_path):
  path = _write(
    tmp_path / "c.jsonl",
    [
      {"id": "1", "title": "Rome", "text": "Capital of Italy."},
      "",
      {"id": 2, "contents": '"Oslo"\nCapital of Norway.\nSecond line.'},
      {"id": "3", "contents": "Unquoted title\ntext"},
      {"id": "4", "contents": "no newline at all"},
    ],
  )
  assert read_jsonl_corpus(path) == [
    {"id": "1", "title": "Rome", "text": "Capital of Italy."},
    {"id": "2", "title": "Oslo", "text": "Capital of Norway.\nSecond line."},
    {"id": "3", "title": "Unquoted title", "text": "text"},
    {"id": "4", "title": "", "text": "no newline at all"},
  ]


def test_read_real_corpus():
  passages = read_jsonl_corpus(_need(_DATA / "corpus" / "wiki_intros.jsonl"))
  assert len(passages) == 12_373
  assert passages[0]["id"] == "ovos-en-00000-0"
  assert passages[0]["title"] == "20th-century classical music"


@pytest.mark.parametrize(
  "lines, match",
  [
    (['{"id": "1", "title": "t", "text": "x"}', "{not json"], r"c\.jsonl:2: not valid JSON"),
    (["[1, 2]"], r"c\.jsonl:1: expected a JSON object"),
    ([{"id": "1", "body": "x"}], r"c\.jsonl:1: expected keys id\+title\+text or id\+contents"),
    (
      [{"id": "1", "title": "t", "text": "x"}, {"id": "1", "title": "u", "text": "y"}],
      r"c\.jsonl:2: id '1' already used on line 1",
    ),
    ([{"id": "", "title": "t", "text": "x"}], r"c\.jsonl:1: empty id"),
    ([{"id": None, "title": "t", "text": "x"}], r"c\.jsonl:1: field 'id' must be str"),
    ([{"id": "1", "title": 3, "text": "x"}], r"c\.jsonl:1: field 'title' must be str"),
    (
      ['{"id": "1", "title": "t", "text": "lone \\ud800 surrogate"}'],
      r"c\.jsonl:1: field 'text' is not valid Unicode",
    ),
    ([""], "no passages"),
  ],
)
def test_read_rejects_bad_lines(tmp_path, lines, match):
  with pytest.raises(CorpusError, match=match):
    read_jsonl_corpus(_write(tmp_path / "c.jsonl", lines))


def test_read_rejects_non_utf8_and_missing_file(tmp_path):
  path = tmp_path / "c.jsonl"
  path.write_bytes(b'{"id": "1", "title": "t", "text": "ok"}\n{"id": "2", "text": "caf\xe9"}\n')
  with pytest.raises(CorpusError, match=r"c\.jsonl:2: not UTF-8"):
    read_jsonl_corpus(path)
  with pytest.raises(CorpusError, match="cannot open"):
    read_jsonl_corpus(tmp_path / "nope.jsonl")


def _row(*paragraphs):
  return {
    "question": "q",
    "paragraphs": [{"title": t, "text": x, "is_supporting": False} for t, x in paragraphs],
  }


def test_pool_dedups_on_title_and_normalised_text():
  rows = [
    _row(("Rome", "Capital  of Italy."), ("Oslo", "Capital of Norway.")),
    _row(("Rome", " Capital of\nItaly. "), ("Roma", "Capital of Italy.")),
  ]
  pooled = pool_multihop_paragraphs(rows)
  assert [(p["title"], p["text"]) for p in pooled] == [
    ("Rome", "Capital of Italy."),
    ("Oslo", "Capital of Norway."),
    ("Roma", "Capital of Italy."),
  ]
  assert all(p["id"].startswith("mh-") and len(p["id"]) == 15 for p in pooled)
  # Ids depend only on the paragraph, not on run or input order.
  again = pool_multihop_paragraphs(rows[::-1])
  assert {p["id"]: p for p in again} == {p["id"]: p for p in pooled}


def test_pool_rejects_bad_rows(tmp_path):
  with pytest.raises(CorpusError, match=r"rows\[0\]: expected a list under 'paragraphs'"):
    pool_multihop_paragraphs([{"question": "q"}])
  with pytest.raises(CorpusError, match=r"paragraphs\[0\]: expected a dict"):
    pool_multihop_paragraphs([{"paragraphs": [{"title": "t"}]}])
  with pytest.raises(CorpusError, match="single row dict"):
    pool_multihop_paragraphs({"paragraphs": []})
  with pytest.raises(CorpusError, match="hold no paragraphs"):
    pool_multihop_paragraphs([{"paragraphs": []}])
  with pytest.raises(CorpusError, match=r"m\.jsonl:1: expected a list"):
    pool_multihop_paragraphs(_write(tmp_path / "m.jsonl", [{"paragraphs": "x"}]))


def test_pool_real_multihop_sets_contains_every_supporting_paragraph():
  paths = [_need(_DATA / "multihop" / name / "dev.jsonl") for name in ("hotpotqa", "musique")]
  pooled = pool_multihop_paragraphs(paths)
  rows = [json.loads(line) for path in paths for line in path.open(encoding="utf-8")]
  total = sum(len(row["paragraphs"]) for row in rows)
  assert len(pooled) < total  # the sets share paragraphs
  assert len({p["id"] for p in pooled}) == len(pooled)
  titles = {(p["title"], p["text"]) for p in pooled}
  for row in rows:
    for para in row["paragraphs"]:
      if para["is_supporting"]:
        assert (para["title"].strip(), " ".join(para["text"].split())) in titles
  BM25Index.build(pooled[:50])  # a valid corpus


_HITS = [Hit("a", "Rome", "Capital of Italy.", 2.0), Hit("b", "Oslo", "Capital of Norway.", 1.0)]


def test_format_documents_exact():
  assert format_documents(_HITS) == (
    "Doc 1(Title: Rome) Capital of Italy.\nDoc 2(Title: Oslo) Capital of Norway."
  )
  assert format_documents([{"title": "T", "text": "x"}]) == "Doc 1(Title: T) x"
  assert format_documents([]) == ""
  assert format_information(_HITS[:1]) == (
    "\n\n<information>Doc 1(Title: Rome) Capital of Italy.</information>\n\n"
  )


def test_format_documents_word_cap():
  # Words: "Doc" "1(Title:" "Rome)" "Capital" "of" "Italy." "Doc" "2(Title:" -> 8.
  assert format_documents(_HITS, max_tokens=6) == "Doc 1(Title: Rome) Capital of Italy."
  assert format_documents(_HITS, max_tokens=8) == (
    "Doc 1(Title: Rome) Capital of Italy.\nDoc 2(Title:"
  )
  assert format_documents(_HITS, max_tokens=None) == format_documents(_HITS, max_tokens=10**6)


class _ByteTokenizer:
  """One token per UTF-8 byte: cuts can split a character, as byte-level BPE can."""

  def encode(self, text: str) -> list[int]:
    return list(text.encode("utf-8"))

  def decode(self, ids: list[int]) -> str:
    return bytes(ids).decode("utf-8", errors="replace")


def test_format_documents_token_cap():
  tok = _ByteTokenizer()
  hits = [Hit("a", "Café", "Crème brûlée", 1.0)]
  full = "Doc 1(Title: Café) Crème brûlée"
  assert format_documents(hits, tokenizer=tok, max_tokens=100) == full
  # "Doc 1(Title: Caf" is 16 bytes and "é" two more: 17 tokens would split the "é".
  assert format_documents(hits, tokenizer=tok, max_tokens=17) == "Doc 1(Title: Caf"
  assert format_documents(hits, tokenizer=tok, max_tokens=18) == "Doc 1(Title: Café"
  for cap in range(1, 40):
    out = format_documents(hits, tokenizer=tok, max_tokens=cap)
    assert len(tok.encode(out)) <= cap and full.startswith(out)
  info = format_information(hits, tokenizer=tok, max_tokens=5)
  assert info == "\n\n<information>Doc 1</information>\n\n"


def test_format_documents_rejects_bad_cap():
  for cap in (0, -3, 2.5, True):
    with pytest.raises(CorpusError, match="max_tokens"):
      format_documents(_HITS, max_tokens=cap)
