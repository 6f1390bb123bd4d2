"""The evaluation harness: scripted metrics, files written, a tiny real model, bad configs."""

import dataclasses
import json
import pathlib
import runpy

import jax
import pytest

from sr2 import models
from sr2.configlib import ConfigError
from sr2.eval import eval_config, read_prediction, run_evaluation
from sr2.eval.report import file_stem
from sr2.retrieval import pool_multihop_paragraphs
from sr2.testing import ScriptedSampler, tiny_byte_tokenizer

REPO = pathlib.Path(__file__).resolve().parents[1]
TOK = tiny_byte_tokenizer()
PARAGRAPHS = [
  {"title": "Vorla", "text": "Vorla was born in Brezum.", "is_supporting": True},
  {"title": "Brezum", "text": "Brezum is a city in Kelt.", "is_supporting": True},
  {"title": "Kelt", "text": "Kelt is a country.", "is_supporting": False},
]
ROWS = [
  {"id": "q1", "question": "Where was Vorla born?", "golden_answers": ["Brezum"]},
  {"id": "q2", "question": "Which country is Brezum in?", "golden_answers": ["Kelt"]},
  {"id": "q3", "question": "What is Kelt?", "golden_answers": ["a country", "nation"]},
]
# Per method, per question: what the fake model writes on each decode call.
SCRIPTS = {
  "direct": [["<answer> Brezum </answer>"], ["<answer> Kelt Land </answer>"], ["Nothing\nmore"]],
  "cot": [
    ["<think>hm</think> <answer> Brezum </answer>"],
    ["<think>x</think><answer>Kelt</answer>"],
    ["<think>long</think>\n<answer> a country"],  # unclosed: the fallback reads it
  ],
  "rag": [
    ["<answer> Brezum </answer>"],
    ["<answer> Kelt </answer>"],
    ["<answer> Brezum </answer>"],
  ],
  "agent": [
    ["<think>a</think><search> Vorla </search>", "<answer> Brezum </answer>"],
    ["<answer> Kelt </answer>"],
    ["I am not sure.", "<eos>"],  # invalid turn, feedback, then EOS without an answer
  ],
}
RECORD_KEYS = {
  "id",
  "question",
  "golds",
  "prediction",
  "em",
  "f1",
  "searches",
  "turns",
  "finish",
  "response",
  "answered",
  "valid_searches",
}
ROW_KEYS = {
  "finish",
  "dataset",
  "method",
  "n",
  "em",
  "f1",
  "mean_searches",
  "valid_search_rate",
  "answer_rate",
  "mean_turns",
  "mean_new_tokens",
  "wall_s",
}


def _config(data_root, **eval_overrides):
  config = runpy.run_path(str(REPO / "configs" / "smollm2_hotpotqa.py"))["get_config"]()
  config.sampling.max_len = 1024
  config.rollout.max_obs_tokens = 64
  config.eval.update(
    dict(datasets=("multihop/toy",), data_root=str(data_root), limit=0, batch_size=4)
  )
  config.eval.update(eval_overrides)
  return config


@pytest.fixture
def data_root(tmp_path):
  root = tmp_path / "data"
  for kind, extra in (("multihop", {"paragraphs": PARAGRAPHS}), ("qa", {})):
    (root / kind / "toy").mkdir(parents=True)
    lines = [json.dumps({**row, **extra}) for row in ROWS]
    (root / kind / "toy" / "dev.jsonl").write_text("\n".join(lines) + "\n")
  corpus = [
    {"id": f"w{i}", "title": p["title"], "text": p["text"]} for i, p in enumerate(PARAGRAPHS)
  ]
  (root / "corpus.jsonl").write_text("\n".join(json.dumps(p) for p in corpus) + "\n")
  return root


class _Scripted(ScriptedSampler):
  """ScriptedSampler whose decode returns fresh arrays, as the jitted sampler does.

  ScriptedSampler writes into the state's numpy arrays in place, so a caller's
  `np.asarray(state.lengths)` taken before a decode call would change under it.
  """

  def decode(self, params, state, max_new_tokens):
    fields = ("tokens", "logprobs", "lengths", "done", "finish")
    state = dataclasses.replace(state, **{f: getattr(state, f).copy() for f in fields})
    return super().decode(params, state, max_new_tokens)


def _scripted(method, sampling):
  return _Scripted(
    TOK, SCRIPTS[method], max_len=sampling.max_len, stop_strings=sampling.stop_strings
  )


def _model():
  config = models.preset("tiny", vocab_size=len(TOK), n_layers=1)
  return models.Model(config, models.init_params(config, jax.random.key(0)), TOK, "tiny-test")


def test_scripted_metrics_and_files(data_root, tmp_path):
  result = run_evaluation(
    _config(data_root), tmp_path / "work", model=_model(), make_sampler=_scripted
  )
  rows = {r["method"]: r for r in result.rows}
  assert list(rows) == ["direct", "cot", "rag", "agent"]
  assert all(set(r) == ROW_KEYS and r["n"] == 3 for r in rows.values())
  assert all(sum(r["finish"].values()) == 3 for r in rows.values())
  # direct: "Brezum" (EM 1, F1 1); "Kelt Land" vs "Kelt" (EM 0, F1 = 2PR/(P+R) with P=1/2,
  # R=1 -> 2/3); fallback "Nothing" (0, 0). EM = 1/3, F1 = (1 + 2/3 + 0)/3 = 5/9.
  assert rows["direct"]["em"] == pytest.approx(1 / 3, abs=1e-4)
  assert rows["direct"]["f1"] == pytest.approx(5 / 9, abs=1e-4)
  # cot: all three right; the third through the fallback ("a country" -> "country").
  assert rows["cot"]["em"] == 1.0 and rows["cot"]["f1"] == 1.0
  # rag: Brezum, Kelt right, "Brezum" for "What is Kelt?" wrong; one retrieval each.
  assert rows["rag"]["em"] == pytest.approx(2 / 3, abs=1e-4)
  assert rows["rag"]["mean_searches"] == 1.0 and rows["rag"]["mean_turns"] == 1.0
  # agent: searches (1 + 0 + 0)/3, turns (2 + 1 + 2)/3, EM (1 + 1 + 0)/3.
  assert rows["agent"]["em"] == pytest.approx(2 / 3, abs=1e-4)
  assert rows["agent"]["mean_searches"] == pytest.approx(1 / 3, abs=1e-4)
  assert rows["agent"]["mean_turns"] == pytest.approx(5 / 3, abs=1e-4)
  # Protocol use: q1's search retrieved Vorla's passage; q1 and q2 closed an <answer>.
  assert rows["agent"]["valid_search_rate"] == pytest.approx(1 / 3, abs=1e-4)
  assert rows["agent"]["answer_rate"] == pytest.approx(2 / 3, abs=1e-4)
  # Baselines never search themselves; direct's and cot's third reply closes no <answer>.
  assert {m: rows[m]["valid_search_rate"] for m in ("direct", "cot", "rag")} == dict.fromkeys(
    ("direct", "cot", "rag"), 0.0
  )
  assert [rows[m]["answer_rate"] for m in ("direct", "cot", "rag")] == pytest.approx(
    [2 / 3, 2 / 3, 1.0], abs=1e-4
  )
  # Model-written tokens: each baseline script up to and including its stop string.
  direct_tokens = [len(TOK.encode(s[0])) for s in SCRIPTS["direct"]]
  assert rows["direct"]["mean_new_tokens"] == pytest.approx(sum(direct_tokens) / 3, abs=1e-4)

  out = tmp_path / "work" / "eval"
  summary = json.loads((out / "results.json").read_text())
  assert summary["rows"] == result.rows and summary["config"]["eval"]["batch_size"] == 4
  md = (out / "results.md").read_text()
  assert "| EM / F1 | direct | cot | rag | agent |" in md and "| multihop/toy |" in md
  assert (
    "| dataset | method | n | EM | F1 | searches | valid search | answered | turns | tokens "
    "| wall s |" in md
  )
  for method in rows:
    path = out / "trajectories" / f"{file_stem('multihop/toy', method)}.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["id"] for r in records] == ["q1", "q2", "q3"]
    assert all(RECORD_KEYS <= set(r) for r in records)
  cot = result.trajectories[("multihop/toy", "cot")]
  assert [r["fallback"] for r in cot] == [False, False, True]
  assert cot[2]["prediction"] == "a country"
  agent = result.trajectories[("multihop/toy", "agent")]
  assert agent[0]["queries"] == ["Vorla"] and agent[2]["prediction"] is None
  assert agent[2]["finish"] == "eos" and "invalid" in agent[2]["response"]
  rag = result.trajectories[("multihop/toy", "rag")]
  pooled = {
    p["title"]: p["id"] for p in pool_multihop_paragraphs(data_root / "multihop/toy/dev.jsonl")
  }
  assert rag[0]["doc_ids"] == [[pooled["Vorla"]]]  # BM25 over the pooled paragraphs


def test_qa_dataset_uses_its_corpus_and_limit(data_root, tmp_path):
  config = _config(data_root, datasets=("qa/toy:dev",), methods=("rag",), corpus="corpus.jsonl")
  result = run_evaluation(config, tmp_path, limit=2, model=_model(), make_sampler=_scripted)
  (row,) = result.rows
  assert row["dataset"] == "qa/toy:dev" and row["n"] == 2 and row["em"] == 1.0
  records = result.trajectories[("qa/toy:dev", "rag")]
  assert records[0]["doc_ids"][0][0] == "w0"  # "Vorla" from the JSONL corpus, by its id
  assert (tmp_path / "eval" / "trajectories" / "qa_toy_dev__rag.jsonl").is_file()


def test_tiny_model_runs_every_method_with_a_padded_batch(data_root, tmp_path):
  config = _config(data_root, batch_size=2, max_new_tokens=6, cot_max_new_tokens=6)
  config.rollout.update(dict(max_turns=2, max_turn_tokens=6))
  result = run_evaluation(config, tmp_path, model=_model())
  assert [(r["method"], r["n"]) for r in result.rows] == [
    ("direct", 3),
    ("cot", 3),
    ("rag", 3),
    ("agent", 3),
  ]
  for (_, method), records in result.trajectories.items():
    for r in records:
      assert 1 <= r["new_tokens"] <= (12 if method == "agent" else 6)
      assert r["finish"] in {
        "eos",
        "stop_string",
        "max_new_tokens",
        "answer",
        "max_turns",
        "invalid",
        "context_full",
      }


@pytest.mark.parametrize(
  "text, expected",
  [
    ("<answer> Paris </answer>", ("Paris", False)),
    ("<think>a\nb</think>\n\nParis, France\nmore", ("Paris, France", True)),
    ("<think>never closed", ("", True)),
    ("It is <answer> Paris", ("Paris", True)),
    ("", ("", True)),
  ],
)
def test_read_prediction_falls_back_to_the_first_line(text, expected):
  assert read_prediction(text) == expected


@pytest.mark.parametrize("name", ["smollm2_hotpotqa", "smollm2_2wikimultihopqa", "smollm2_musique"])
def test_configs_parse(name):
  config = runpy.run_path(str(REPO / "configs" / f"{name}.py"))["get_config"]()
  spec, cfg = eval_config(config)
  assert spec.source == "smollm2-135m-instruct"
  assert cfg.datasets == (f"multihop/{name.removeprefix('smollm2_')}",)
  assert cfg.methods == ("direct", "cot", "rag", "agent") and cfg.rollout.max_turns == 4


@pytest.mark.parametrize(
  "edit, message",
  [
    (lambda c: c.eval.__setattr__("batch_sise", 4), "did you mean 'batch_size'"),
    (lambda c: c.rollout.__setattr__("top_kk", 4), "did you mean 'top_k'"),
    (lambda c: c.__setattr__("evals", 1), "unknown field 'config.evals'"),
    (lambda c: c.eval.__setattr__("methods", ("direct", "react")), "eval.methods"),
    (lambda c: c.eval.__setattr__("datasets", ("toy",)), "qa/<name> or multihop/<set>"),
    (lambda c: c.eval.__setattr__("datasets", ("qa/toy",)), "needs eval.corpora.toy"),
    (lambda c: c.eval.__setattr__("data_root", "/nonexistent/sr2"), "is not a directory"),
    (lambda c: c.sampling.__setattr__("stop_strings", ("x",)), "per method"),
  ],
)
def test_bad_configs_fail_before_loading(edit, message, data_root, tmp_path):
  config = _config(data_root)
  edit(config)
  with pytest.raises(ConfigError, match=message):
    run_evaluation(config, tmp_path)  # model=None: a load would fail differently
