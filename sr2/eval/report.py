"""The library side of `experiments/evaluate.py`: config → evaluation → files under workdir.

DIR/eval/results.json                        {"rows": [...], "config": {...}, ...}
DIR/eval/results.md                          datasets × methods tables
DIR/eval/trajectories/<dataset>__<method>.jsonl   one record per question
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
import time
from collections.abc import Sequence
from typing import Any

from sr2 import models
from sr2.configlib import ConfigError, as_dict, is_int_at_least
from sr2.eval.harness import EvalResult, eval_config, evaluate, resolve_datasets
from sr2.parallel import hosts

_COLUMNS = (
  ("dataset", "dataset", "{}"),
  ("method", "method", "{}"),
  ("n", "n", "{}"),
  ("EM", "em", "{:.3f}"),
  ("F1", "f1", "{:.3f}"),
  ("searches", "mean_searches", "{:.2f}"),
  ("valid search", "valid_search_rate", "{:.2f}"),
  ("answered", "answer_rate", "{:.2f}"),
  ("turns", "mean_turns", "{:.2f}"),
  ("tokens", "mean_new_tokens", "{:.1f}"),
  ("wall s", "wall_s", "{:.1f}"),
)


def file_stem(dataset: str, method: str) -> str:
  """`<dataset>__<method>` with characters other than letters, digits, `.`, `-` as `_`."""
  return re.sub(r"[^A-Za-z0-9.-]+", "_", dataset) + "__" + method


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
  """EM / F1 as a datasets × methods grid, then every metric per (dataset, method)."""
  datasets = list(dict.fromkeys(r["dataset"] for r in rows))
  methods = list(dict.fromkeys(r["method"] for r in rows))
  cell = {(r["dataset"], r["method"]): r for r in rows}
  lines = [
    "| EM / F1 | " + " | ".join(methods) + " |",
    "|---|" + "---|" * len(methods),
  ]
  for d in datasets:
    cells = [
      f"{cell[d, m]['em']:.3f} / {cell[d, m]['f1']:.3f}" if (d, m) in cell else "-" for m in methods
    ]
    lines.append(f"| {d} | " + " | ".join(cells) + " |")
  lines += ["", "| " + " | ".join(c[0] for c in _COLUMNS) + " |"]
  lines.append("|---|---|" + "---:|" * (len(_COLUMNS) - 2))
  for r in rows:
    lines.append("| " + " | ".join(fmt.format(r[key]) for _, key, fmt in _COLUMNS) + " |")
  return "\n".join(lines) + "\n"


def write_results(
  result: EvalResult, workdir: str | pathlib.Path, config: dict[str, Any], **extra: Any
) -> pathlib.Path:
  """Writes results.json, results.md and the trajectories; returns `workdir/eval`."""
  out = pathlib.Path(workdir) / "eval"
  (out / "trajectories").mkdir(parents=True, exist_ok=True)
  summary = {"rows": result.rows, "config": config, **extra}
  (out / "results.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
  (out / "results.md").write_text(markdown_table(result.rows))
  for (dataset, method), records in result.trajectories.items():
    with open(out / "trajectories" / f"{file_stem(dataset, method)}.jsonl", "w") as f:
      for rec in records:
        f.write(json.dumps(rec, ensure_ascii=False) + "\n")
  return out


def _jsonable(config: Any) -> dict[str, Any]:
  return json.loads(json.dumps(as_dict(config), default=str))


def run_evaluation(
  config: Any,
  workdir: str | pathlib.Path,
  *,
  limit: int | None = None,
  model: models.Model | None = None,
  make_sampler=None,
) -> EvalResult:
  """Evaluates what `config` (see configs/smollm2_hotpotqa.py) names and writes the files.

  Args:
    config: ConfigDict with groups model, sampling, rollout, retrieval, eval.
    workdir: output root; files go under `workdir/eval`.
    limit: overrides `config.eval.limit` when not None.
    model: a ready model (skips `models.build(config.model)`), e.g. in tests.
    make_sampler: see `harness.evaluate`.

  Returns:
    The `EvalResult` that was written.
  """
  spec, cfg = eval_config(config)  # typos and bad values fail before anything loads
  if limit is not None:
    if not is_int_at_least(limit, 0):
      raise ConfigError(f"limit={limit!r}; expected an int >= 0 (0 = all questions)")
    cfg = dataclasses.replace(cfg, limit=limit)
  resolve_datasets(cfg)
  start = time.perf_counter()
  model = model or models.build(spec)
  load_s = time.perf_counter() - start
  result = evaluate(model, cfg, make_sampler)
  resolved = _jsonable(config)
  resolved["eval"]["limit"] = cfg.limit
  if not hosts.is_writer():  # every process has every record; process 0 writes them
    return result
  write_results(
    result,
    workdir,
    resolved,
    model=model.source,
    load_s=round(load_s, 2),
    total_s=round(time.perf_counter() - start, 2),
  )
  return result
