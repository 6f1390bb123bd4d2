"""The ablation table: the arms of configs/search_r2.py over seeds, read from their workdirs.

One run (a workdir of experiments/train.py) gives a row:
  em_before, em_after   test EM of the warm start and of the final policy (summary.json);
  em_1hop..em_3hop      the final policy's test EM by hop count;
  searches              the final policy's searches per test question;
  v_inter, delta_j      means over the GRPO steps of the revision rate and of the observed
                        ΔJ = J_meta − J_base (rl/drivers.py), refiner arms only;
  a_prec, s_trim, g_bar means over the steps with the drivers' probes;
  gate_acc, trim_acc    the Gate's and the Trimmer's accuracy on the world's probes with a
                        known first flawed step, at the last dev evaluation;
  step_s                mean seconds per GRPO step.
An arm's cell is the mean and the sample standard deviation over its seeds; a quantity a
run did not log (e.g. the drivers of Search-R1) is left out of its mean, and is "–" when
no seed logged it.
"""

from __future__ import annotations

import json
import math
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

from sr2.train.metrics import read_metrics

COLUMNS = (
  "em_before",
  "em_after",
  "em_1hop",
  "em_2hop",
  "em_3hop",
  "searches",
  "v_inter",
  "a_prec",
  "s_trim",
  "g_bar",
  "delta_j",
  "gate_acc",
  "trim_acc",
  "step_s",
)
_STEP_MEANS = {
  "v_inter": "refiner/v_inter",
  "delta_j": "refiner/delta_j",
  "a_prec": "drivers/a_prec",
  "s_trim": "drivers/s_trim",
  "g_bar": "drivers/g_bar",
  "step_s": "step_s",
}
_LAST = {"gate_acc": "trimmer/gate_acc", "trim_acc": "trimmer/trim_acc"}
_PERCENT = ("em_before", "em_after", "em_1hop", "em_2hop", "em_3hop", "v_inter")


def _mean(xs: Sequence[float]) -> float | None:
  return sum(xs) / len(xs) if xs else None


def run_row(workdir: str | pathlib.Path) -> dict[str, float | None]:
  """One finished run's row (see the module docstring); raises if it has not finished."""
  workdir = pathlib.Path(workdir)
  path = workdir / "summary.json"
  summary = json.loads(path.read_text()) if path.exists() else {}
  if "em_after_rl" not in summary:
    raise ValueError(f"{workdir}: no finished run there (summary.json has no em_after_rl)")
  after = summary["eval_after_rl"]
  row: dict[str, float | None] = {
    "em_before": summary["em_before_rl"],
    "em_after": summary["em_after_rl"],
    **{k: after.get(k) for k in ("em_1hop", "em_2hop", "em_3hop", "searches")},
  }
  rl = read_metrics(workdir / "metrics.jsonl", phase="rl")
  for name, key in _STEP_MEANS.items():
    row[name] = _mean([r[key] for r in rl if isinstance(r.get(key), int | float)])
  for name, key in _LAST.items():
    got = [r[key] for r in rl if isinstance(r.get(key), int | float)]
    row[name] = got[-1] if got else None
  return row


def arm_cells(rows: Sequence[Mapping[str, float | None]]) -> dict[str, dict[str, Any]]:
  """Per column: mean, sample std (None for one seed) and the seeds' values."""
  out = {}
  for col in COLUMNS:
    xs = [r[col] for r in rows if r.get(col) is not None]
    m = _mean(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else None
    out[col] = {"mean": m, "std": sd, "values": [r.get(col) for r in rows]}
  return out


def _fmt(col: str, cell: Mapping[str, Any]) -> str:
  m, sd = cell["mean"], cell["std"]
  if m is None:
    return "–"
  scale, digits = (100.0, 1) if col in _PERCENT else (1.0, 2 if col == "step_s" else 3)
  text = f"{m * scale:.{digits}f}"
  return text + (f" ± {sd * scale:.{digits}f}" if sd is not None else "")


def markdown(table: Mapping[str, Mapping[str, Any]]) -> str:
  """The arms as rows of a markdown table: EM in percent, mean ± std over seeds."""
  head = ["arm", "seeds", *COLUMNS, "EM after, per seed"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for arm, t in table.items():
    cells = t["cells"]
    per_seed = " / ".join(
      "–" if v is None else f"{100 * v:.1f}" for v in cells["em_after"]["values"]
    )
    row = [arm, ",".join(str(s) for s in t["seeds"])]
    row += [_fmt(c, cells[c]) for c in COLUMNS] + [per_seed]
    lines.append("| " + " | ".join(row) + " |")
  return "\n".join(lines) + "\n"


def build_table(runs: Mapping[str, Mapping[int, str | pathlib.Path]]) -> dict[str, Any]:
  """{arm: {seed: workdir}} -> {arm: {seeds, workdirs, rows, cells}} in the given arm order."""
  table = {}
  for arm, by_seed in runs.items():
    seeds = sorted(by_seed)
    rows = [run_row(by_seed[s]) for s in seeds]
    table[arm] = {
      "seeds": seeds,
      "workdirs": [str(by_seed[s]) for s in seeds],
      "rows": rows,
      "cells": arm_cells(rows),
    }
  return table


def workdir_of(root: str | pathlib.Path, arm: str, seed: int) -> pathlib.Path:
  """Where the ablation driver runs `arm` with `seed`: ROOT/ARM/seedN."""
  return pathlib.Path(root) / arm / f"seed{seed}"


def run_arms(
  config_of,
  arms: Sequence[str],
  seeds: Sequence[int],
  root: str | pathlib.Path,
  *,
  init_from: str = "",
  reuse: Mapping[str, str] | None = None,
) -> dict[str, dict[int, pathlib.Path]]:
  """Trains every (seed, arm) not finished yet, seed by seed; returns {arm: {seed: workdir}}.

  Args:
    config_of: arm -> its ConfigDict (the seed is set here).
    arms, seeds: what to run; all arms of a seed run before the next seed.
    root: runs go to `workdir_of(root, arm, seed)`; a finished one is kept, an interrupted
      one resumes from its checkpoint.
    init_from: a workdir pattern with `{seed}` whose kept warm start every run of that seed
      starts from (`--init_from`), so the arms differ only after the warm start; "" = each
      run does its own.
    reuse: arm -> workdir pattern with `{seed}` of runs made elsewhere (e.g. the main job's
      runs as the Search-R1 arm); they must have finished.
  """
  from sr2.train.loop import train_and_evaluate  # the training stack, only when runs are made

  reuse = dict(reuse or {})
  runs: dict[str, dict[int, pathlib.Path]] = {arm: {} for arm in arms}
  for seed in seeds:
    for arm in arms:
      if arm in reuse:
        workdir = pathlib.Path(reuse[arm].format(seed=seed))
        run_row(workdir)  # raises now, not after the other runs, if it has not finished
      else:
        workdir = workdir_of(root, arm, seed)
        if not is_finished(workdir):
          config = config_of(arm)
          config.seed = seed
          start = init_from.format(seed=seed) if init_from else None
          train_and_evaluate(config, str(workdir), start)
      runs[arm][seed] = workdir
  return runs


def is_finished(workdir: str | pathlib.Path) -> bool:
  """Whether a run wrote its final summary (summary.json with em_after_rl)."""
  path = pathlib.Path(workdir) / "summary.json"
  return path.exists() and "em_after_rl" in json.loads(path.read_text())


def finished_runs(
  root: str | pathlib.Path,
  arms: Sequence[str],
  seeds: Sequence[int],
  reuse: Mapping[str, str] | None = None,
) -> tuple[dict[str, dict[int, pathlib.Path]], list[str]]:
  """The finished runs among arms x seeds ({arm: {seed: workdir}}, arms with none dropped)
  and the others as "ARM/seedN", for a table of what exists so far."""
  reuse = dict(reuse or {})
  runs, missing = {}, []
  for arm in arms:
    for seed in seeds:
      w = pathlib.Path(reuse[arm].format(seed=seed)) if arm in reuse else None
      w = w or workdir_of(root, arm, seed)
      if is_finished(w):
        runs.setdefault(arm, {})[seed] = w
      else:
        missing.append(f"{arm}/seed{seed}")
  return runs, missing


def write_results(table: Mapping[str, Any], stem: str | pathlib.Path, meta: Mapping) -> None:
  """STEM.json (the table with `meta`: command, config, machine) and STEM.md."""
  stem = pathlib.Path(stem)
  stem.parent.mkdir(parents=True, exist_ok=True)
  stem.with_suffix(".json").write_text(json.dumps({**meta, "arms": table}, indent=1) + "\n")
  lines = [f"# {meta.get('title', stem.name)}", ""]
  lines += [f"- {k}: `{v}`" for k, v in meta.items() if k != "title"]
  stem.with_suffix(".md").write_text("\n".join(lines) + "\n\n" + markdown(table))
