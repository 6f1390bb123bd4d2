"""QA datasets: the JSONL reader, the tfds builders (no TensorFlow) and the loaders."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from sr2.data import qa

SHARED_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
REPO = pathlib.Path(__file__).resolve().parents[1]


def _write(path: pathlib.Path, rows) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(
    "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8"
  )
  return path


def _rows(n: int, prefix: str, paragraphs: bool = False):
  rows = []
  for i in range(n):
    row = {
      "id": f"{prefix}_{i}",
      "question": f"Qui a écrit le livre {i}?",
      "golden_answers": [f"auteur {i}", f"alias {i}"][: 1 + i % 2],
    }
    if i % 3 == 0:
      row["metadata"] = {"type": "bridge", "level": i, "nested": {"x": [1, 2.5]}}
    elif i % 5 == 0:
      row["metadata"] = {}
    if paragraphs:
      row["paragraphs"] = [
        {"title": f"T{i}", "text": f"text {j}", "is_supporting": j == 0} for j in range(i % 3)
      ]
    rows.append(row)
  return rows


@pytest.fixture
def source(tmp_path):
  """A FlashRAG-layout source tree: qa/{nq,hotpotqa} and multihop/hotpotqa."""
  root = tmp_path / "src"
  _write(root / "qa/nq/train.jsonl", _rows(40, "train"))
  _write(root / "qa/nq/test.jsonl", _rows(25, "test"))
  _write(root / "qa/hotpotqa/train.jsonl", _rows(15, "hp"))
  _write(root / "multihop/hotpotqa/dev.jsonl", _rows(12, "dev", paragraphs=True))
  return root


def test_read_qa_jsonl(tmp_path):
  path = _write(tmp_path / "toy/test.jsonl", _rows(5, "x"))
  rows = qa.read_qa_jsonl(path)
  assert [r.id for r in rows] == [f"x_{i}" for i in range(5)]
  assert rows[1].golden_answers == ("auteur 1", "alias 1")
  assert rows[0].data_source == "toy" and rows[0].metadata["nested"] == {"x": [1, 2.5]}
  assert rows[1].metadata is None and rows[0].paragraphs is None


@pytest.mark.parametrize(
  "bad, message",
  [
    ("{not json", "not valid JSON"),
    ('["a list"]', "expected a JSON object"),
    ({"id": "", "question": "q", "golden_answers": ["a"]}, "id must be a non-empty string"),
    ({"id": "b", "question": " ", "golden_answers": ["a"]}, "question must be"),
    ({"id": "b", "question": "q"}, "golden_answers must be a non-empty list"),
    ({"id": "b", "question": "q", "golden_answers": []}, "golden_answers must be a non-empty"),
    ({"id": "b", "question": "q", "golden_answers": "a"}, "golden_answers must be a non-empty"),
    ({"id": "b", "question": "q", "golden_answers": ["a", ""]}, "non-empty strings"),
    ({"id": "x_0", "question": "q", "golden_answers": ["a"]}, "duplicate id 'x_0'"),
    (
      {"id": "b", "question": "q", "golden_answers": ["a"], "paragraphs": [{"title": 1}]},
      "paragraphs[0]",
    ),
  ],
)
def test_read_qa_jsonl_rejects_bad_rows(tmp_path, bad, message):
  path = _write(tmp_path / "d/test.jsonl", [*_rows(2, "x"), bad])
  with pytest.raises(ValueError, match=r"test\.jsonl:3: .*") as e:
    qa.read_qa_jsonl(path)
  assert message in str(e.value)


def test_read_qa_jsonl_rejects_non_utf8_naming_file_and_line(tmp_path):
  path = _write(tmp_path / "d/test.jsonl", _rows(2, "x"))
  with open(path, "ab") as f:
    f.write(b'{"id": "y", "question": "caf\xe9?", "golden_answers": ["a"]}\n')
  with pytest.raises(ValueError, match=r"test\.jsonl:3: not UTF-8 \(invalid continuation byte"):
    qa.read_qa_jsonl(path)


def test_read_qa_jsonl_rejects_empty_file(tmp_path):
  with pytest.raises(ValueError, match="no rows"):
    qa.read_qa_jsonl(_write(tmp_path / "d/test.jsonl", []))


def test_builder_round_trip_keeps_file_order(source, tmp_path):
  data_dir = tmp_path / "tfds"
  builder = qa.prepare("nq", source, data_dir)
  assert set(builder.info.splits) == {"train", "test"}
  for split in ("train", "test"):
    loaded = qa.load_split("nq", split, data_dir)
    expected = qa.read_qa_jsonl(source / f"qa/nq/{split}.jsonl")
    assert len(loaded) == len(expected)
    assert list(loaded) == expected  # also checks order: the writer shuffles by default
    assert loaded[3] == expected[3] and loaded[-1] == expected[-1]
    assert loaded[2:5] == expected[2:5]
  assert len(qa.load_split("nq", "train[:7]", data_dir)) == 7
  raw = builder.as_data_source(split="train")
  assert [raw[i]["index"] for i in range(len(raw))] == list(range(len(raw)))
  assert "tensorflow" not in sys.modules


def test_multihop_builder_keeps_paragraphs(source, tmp_path):
  data_dir = tmp_path / "tfds"
  qa.prepare("multihop/hotpotqa", source, data_dir)
  loaded = list(qa.load_split("multihop/hotpotqa", "dev", data_dir))
  assert loaded == qa.read_qa_jsonl(source / "multihop/hotpotqa/dev.jsonl")
  assert loaded[1].paragraphs == (qa.Paragraph("T1", "text 0", True),)
  assert loaded[0].paragraphs == ()


def test_training_mix_is_nq_then_hotpotqa(source, tmp_path):
  data_dir = tmp_path / "tfds"
  qa.prepare(qa.MIX_NAME, source, data_dir)
  mix = list(qa.load_split(qa.MIX_NAME, "train", data_dir))
  nq = qa.read_qa_jsonl(source / "qa/nq/train.jsonl")
  hp = qa.read_qa_jsonl(source / "qa/hotpotqa/train.jsonl")
  assert mix == nq + hp
  assert {r.data_source for r in mix[:40]} == {"nq"} and mix[-1].data_source == "hotpotqa"


def test_prepare_reuses_unless_overwrite(source, tmp_path):
  data_dir = tmp_path / "tfds"
  qa.prepare("nq", source, data_dir)
  _write(source / "qa/nq/test.jsonl", _rows(3, "new"))
  qa.prepare("nq", source, data_dir)
  assert len(qa.load_split("nq", "test", data_dir)) == 25
  qa.prepare("nq", source, data_dir, overwrite=True)
  assert [r.id for r in qa.load_split("nq", "test", data_dir)] == ["new_0", "new_1", "new_2"]


def test_loader_errors(source, tmp_path):
  with pytest.raises(ValueError, match="unknown dataset 'squad'"):
    qa.load_split("squad", "test", tmp_path)
  with pytest.raises(ValueError, match="not prepared"):
    qa.load_split("nq", "test", tmp_path / "empty")
  qa.prepare("nq", source, tmp_path / "tfds")
  with pytest.raises(ValueError, match="no split 'dev'"):
    qa.load_split("nq", "dev", tmp_path / "tfds")
  with pytest.raises(ValueError, match="no directory for dataset 'popqa'"):
    qa.prepare("popqa", source, tmp_path / "tfds")


def test_bad_source_row_fails_prepare_naming_file_and_line(tmp_path):
  root = tmp_path / "src"
  _write(root / "qa/bamboogle/test.jsonl", [*_rows(3, "x"), {"id": "y", "question": "q"}])
  with pytest.raises(ValueError, match=r"bamboogle/test\.jsonl:4: .*golden_answers"):
    qa.prepare("bamboogle", root, tmp_path / "tfds")


def test_bamboogle_from_shared_data(tmp_path):
  path = SHARED_DATA / "qa/bamboogle/test.jsonl"
  if not path.exists():
    pytest.skip(f"{path} not found")
  qa.prepare("bamboogle", SHARED_DATA, tmp_path)
  loaded = qa.load_split("bamboogle", "test", tmp_path)
  expected = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
  assert len(loaded) == len(expected) == 125
  for got, want in zip(loaded, expected, strict=True):
    assert (got.id, got.question, list(got.golden_answers)) == (
      want["id"],
      want["question"],
      want["golden_answers"],
    )
    assert got.data_source == "bamboogle"
  assert "tensorflow" not in sys.modules


def test_prepare_data_script(source, tmp_path):
  env = {**os.environ, "PYTHONPATH": str(REPO)}
  out = subprocess.run(
    [
      sys.executable,
      str(REPO / "experiments/prepare_data.py"),
      f"--source={source}",
      f"--data_dir={tmp_path / 'tfds'}",
      "--datasets=nq,multihop/hotpotqa",
    ],
    capture_output=True,
    text=True,
    env=env,
    check=True,
    timeout=120,
  )
  lines = [json.loads(line) for line in out.stdout.splitlines()]
  assert [(d["dataset"], d["rows"]) for d in lines] == [
    ("nq", {"test": 25, "train": 40}),
    ("multihop/hotpotqa", {"dev": 12}),
  ]
  assert all(d["seconds"] >= 0 for d in lines)


# Row counts of every file under ../shared/data/{qa,multihop}, from its PROVENANCE.md table.
SHARED_ROWS = {
  "multihop/2wikimultihopqa/dev.jsonl": 131,
  "multihop/2wikimultihopqa/train.jsonl": 400,
  "multihop/hotpotqa/dev.jsonl": 1342,
  "multihop/hotpotqa/train.jsonl": 88,
  "multihop/musique/dev.jsonl": 160,
  "multihop/musique/train.jsonl": 89,
  "qa/2wikimultihopqa/dev.jsonl": 12543,
  "qa/2wikimultihopqa/train.jsonl": 400,
  "qa/bamboogle/test.jsonl": 125,
  "qa/hotpotqa/dev.jsonl": 7070,
  "qa/hotpotqa/train.jsonl": 588,
  "qa/musique/dev.jsonl": 2377,
  "qa/musique/train.jsonl": 19915,
  "qa/nq/test.jsonl": 3610,
  "qa/nq/train.jsonl": 5000,
  "qa/popqa/test.jsonl": 1000,
  "qa/triviaqa/test.jsonl": 1000,
}


def _needs_shared_data():
  if not (SHARED_DATA / "qa").is_dir() or not (SHARED_DATA / "multihop").is_dir():
    pytest.skip(f"{SHARED_DATA}/qa or /multihop not found")


def test_every_shared_file_reads_with_provenance_row_counts():
  _needs_shared_data()
  found = sorted(
    str(p.relative_to(SHARED_DATA))
    for sub in ("qa", "multihop")
    for p in (SHARED_DATA / sub).rglob("*")
    if p.is_file()
  )
  assert found == sorted(SHARED_ROWS)  # a new or missing file must be added to the table
  for name, rows in SHARED_ROWS.items():
    examples = qa.read_qa_jsonl(SHARED_DATA / name)
    assert len(examples) == rows, name
    if name.startswith("multihop/"):
      assert all(any(p.is_supporting for p in ex.paragraphs) for ex in examples), name


def test_prepare_every_shared_dataset_reports_row_counts(tmp_path):
  """All of ALL_NAMES built from ../shared/data (about 6 s on the 2-core dev machine)."""
  _needs_shared_data()
  expected = {}
  for name, rows in SHARED_ROWS.items():
    sub, dataset, split = name.removesuffix(".jsonl").split("/")
    expected.setdefault(f"multihop/{dataset}" if sub == "multihop" else dataset, {})[split] = rows
  expected[qa.MIX_NAME] = {
    "train": SHARED_ROWS["qa/nq/train.jsonl"] + SHARED_ROWS["qa/hotpotqa/train.jsonl"]
  }
  assert set(expected) == set(qa.ALL_NAMES)
  for name in qa.ALL_NAMES:
    builder = qa.prepare(name, SHARED_DATA, tmp_path)
    got = {split: info.num_examples for split, info in builder.info.splits.items()}
    assert got == expected[name], name
  assert len(qa.load_split("multihop/musique", "dev", tmp_path)) == 160
  assert "tensorflow" not in sys.modules


def test_training_reads_prepared_splits_as_the_jsonl_files(source, tmp_path):
  """`config.data.tfds_dir`: the task's questions come from the prepared array_record
  splits, read on access, and equal those read from the JSONL files."""
  from sr2.train.task import qa as task

  data_dir = tmp_path / "tfds"
  qa.prepare("nq", source, data_dir)
  qa.prepare("multihop/hotpotqa", source, data_dir)
  names = ("qa/nq", "multihop/hotpotqa:dev")
  from_files = task._questions(source, names, "train", limit=10)
  lazy = task._tfds_questions(str(data_dir), names, "train", limit=10)
  assert len(lazy) == len(from_files) == 20
  assert list(lazy) == from_files and lazy[3:5] == from_files[3:5] and lazy[-1] == from_files[-1]
  assert lazy[12].gold_titles == from_files[12].gold_titles == ("T2",)
  pooled = [ex for ex, multihop in lazy.examples() if multihop]
  assert len(pooled) == 10 and all(ex.paragraphs is not None for ex in pooled)
  with pytest.raises(task.ConfigError, match="tfds_dir: dataset 'popqa' is not prepared"):
    task._tfds_questions(str(data_dir), ("qa/popqa",), "test", 0)
