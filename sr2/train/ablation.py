"""The record of an ablation study (arms of configs/search_r2.py over seeds) and its tables.

One finished run (a workdir of experiments/train.py) gives a row (`run_row`):
  em_before_rl, em_after_rl   test EM of the starting policy and of the final one;
  em_1hop..em_3hop            the final policy's test EM by hop count;
  searches                    the final policy's searches per test question;
  v_inter, delta_j            means over the GRPO steps of the revision rate and of the
                              observed ΔJ = J_meta − J_base (rl/drivers.py), refiner arms;
  a_prec, s_trim, g_bar       means over the steps with the drivers' probes;
  gate_acc_before, trimmer_acc_before
                              the Gate's and the Trimmer's accuracy on the world's probes
                              with a known first flawed step, before RL ...
  gate_acc, trimmer_acc       ... and at the last dev evaluation (refiner arms);
  step_s                      mean seconds per GRPO step.
A quantity a run did not log (e.g. the drivers of Search-R1) is None.

The record of a study (`write_results`: STEM.json and STEM.md) holds one entry per run
(`record`: arm, seed, workdir, the train.py command that makes it, the row), the arms'
means and sample standard deviations over seeds, and each arm's paired per-seed
differences from a baseline arm with their standard error (`paired`). The pairing holds
only where a seed's runs share one warm start; `warm_start_em` checks that by their test
EM before RL. The runs themselves are made by sr2/train/ablation_runs.py, which skips the
(arm, seed) pairs a record already holds.
"""

from __future__ import annotations

import json
import math
import pathlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sr2.train.metrics import read_metrics

COLUMNS = (
  "em_before_rl",
  "em_after_rl",
  "em_1hop",
  "em_2hop",
  "em_3hop",
  "searches",
  "v_inter",
  "a_prec",
  "s_trim",
  "g_bar",
  "delta_j",
  "gate_acc_before",
  "gate_acc",
  "trimmer_acc_before",
  "trimmer_acc",
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
_LAST = {"gate_acc": "trimmer/gate_acc", "trimmer_acc": "trimmer/trim_acc"}
_BEFORE = {"gate_acc_before": "gate_acc", "trimmer_acc_before": "trim_acc"}
_PERCENT = ("em_before_rl", "em_after_rl", "em_1hop", "em_2hop", "em_3hop", "v_inter")
BASELINE = "search_r1"
SAME_EM = 1e-9  # EMs are fractions of one test set: equal warm starts give equal floats


def _mean(xs: Sequence[float]) -> float | None:
  return sum(xs) / len(xs) if xs else None


def _std(xs: Sequence[float]) -> float | None:
  """Sample standard deviation (n - 1); None under two values."""
  if len(xs) < 2:
    return None
  m = sum(xs) / len(xs)
  return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def read_summary(workdir: str | pathlib.Path) -> dict[str, Any]:
  """A run's summary.json (sr2/train/loop.py writes it); {} where there is none yet."""
  path = pathlib.Path(workdir) / "summary.json"
  return json.loads(path.read_text()) if path.exists() else {}


def is_finished(workdir: str | pathlib.Path) -> bool:
  """Whether a run wrote its final summary (summary.json with em_after_rl)."""
  return "em_after_rl" in read_summary(workdir)


def run_row(workdir: str | pathlib.Path) -> dict[str, float | None]:
  """One finished run's row (see the module docstring); raises if it has not finished."""
  workdir = pathlib.Path(workdir)
  if not is_finished(workdir):
    raise ValueError(f"{workdir}: no finished run there (summary.json has no em_after_rl)")
  summary = read_summary(workdir)
  after = summary["eval_after_rl"]
  row: dict[str, float | None] = {
    "em_before_rl": summary["em_before_rl"],
    "em_after_rl": summary["em_after_rl"],
    **{k: after.get(k) for k in ("em_1hop", "em_2hop", "em_3hop", "searches")},
  }
  rl = read_metrics(workdir / "metrics.jsonl", phase="rl")
  for name, key in _STEP_MEANS.items():
    row[name] = _mean([r[key] for r in rl if isinstance(r.get(key), int | float)])
  for name, key in _LAST.items():
    got = [r[key] for r in rl if isinstance(r.get(key), int | float)]
    row[name] = got[-1] if got else None
  before = summary.get("trimmer_before_rl") or {}
  for name, key in _BEFORE.items():
    row[name] = before.get(key)
  return row


def record(arm: str, seed: int, workdir: str | pathlib.Path, command: str) -> dict[str, Any]:
  """A run's entry in the study's record: who it is, how it was made, its row."""
  return {"arm": arm, "seed": seed, "workdir": str(workdir), "command": command, **run_row(workdir)}


def warm_start_em(runs: Iterable[Mapping[str, Any]]) -> dict[int, float]:
  """Each seed's test EM before RL, which all its runs must share.

  The runs of a seed are paired on the premise that they start from one warm start, and
  its evaluation before RL is their common `em_before_rl`. Runs that disagree started from
  different warm starts: for example one remade on another machine, whose CPU code XLA
  compiles for that host, so a long SFT can drift. Raises ValueError naming the seed and
  its arms then.
  """
  seen: dict[int, list[tuple[str, float]]] = {}
  for r in runs:
    if r.get("em_before_rl") is not None:
      seen.setdefault(r["seed"], []).append((r["arm"], r["em_before_rl"]))
  out = {}
  for seed, pairs in seen.items():
    if max(v for _, v in pairs) - min(v for _, v in pairs) > SAME_EM:
      got = ", ".join(f"{arm} {100 * v:.1f}%" for arm, v in pairs)
      raise ValueError(
        f"seed {seed}: its runs' test EM before RL differ ({got}); the runs of a seed are "
        "paired and must start from one warm start"
      )
    out[seed] = pairs[0][1]
  return out


# --------------------------------------------------------------------------- tables


def by_arm(runs: Iterable[Mapping[str, Any]], arms: Sequence[str]) -> dict[str, list[dict]]:
  """The runs of each of `arms` (in that order; arms with none left out), by seed."""
  out: dict[str, list[dict]] = {}
  for arm in arms:
    mine = sorted((dict(r) for r in runs if r["arm"] == arm), key=lambda r: r["seed"])
    if mine:
      out[arm] = mine
  return out


def arm_cells(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
  """Per column: mean, sample std (None under two seeds) and the seeds' values."""
  out = {}
  for col in COLUMNS:
    xs = [r[col] for r in rows if r.get(col) is not None]
    out[col] = {"mean": _mean(xs), "std": _std(xs), "values": [r.get(col) for r in rows]}
  return out


def paired(
  grouped: Mapping[str, Sequence[Mapping[str, Any]]],
  baseline: str = BASELINE,
  column: str = "em_after_rl",
) -> dict[str, dict[str, Any]]:
  """Each arm's per-seed difference from `baseline` on `column`, over the seeds both ran.

  Returns {arm: {seeds, diffs, mean, se}}; se = sample std / sqrt(n) (None under two
  seeds). Seeds share their warm start, so the pairing removes its variance; runs that do
  not share it raise ValueError (`warm_start_em`).
  """
  warm_start_em(r for rows in grouped.values() for r in rows)
  if baseline not in grouped:
    return {}
  base = {r["seed"]: r[column] for r in grouped[baseline]}
  out = {}
  for arm, rows in grouped.items():
    if arm == baseline:
      continue
    pairs = [(r["seed"], r[column] - base[r["seed"]]) for r in rows if r["seed"] in base]
    diffs = [d for _, d in pairs]
    sd = _std(diffs)
    out[arm] = {
      "seeds": [s for s, _ in pairs],
      "diffs": diffs,
      "mean": _mean(diffs),
      "se": sd / math.sqrt(len(diffs)) if sd is not None else None,
    }
  return out


def against(
  reference: Sequence[Mapping[str, Any]],
  run: Mapping[str, Any],
  column: str = "em_after_rl",
  k: float = 2.0,
) -> dict[str, Any]:
  """How a new run of an arm compares with that arm's runs in a reference record.

  Returns {arm, seed, value, mean, se, z, within}: the reference seeds' mean and its
  standard error (sample std / sqrt(n)), z = (value - mean) / se, and whether the value
  lies within `k` standard errors of the mean. A reproducibility check: a seed the
  reference did not use should land within two.
  """
  xs = [r[column] for r in reference if r["arm"] == run["arm"] and r.get(column) is not None]
  if len(xs) < 2:
    raise ValueError(
      f"arm {run['arm']!r}: {len(xs)} reference run(s) with {column}; expected at least 2"
    )
  if any(r["arm"] == run["arm"] and r["seed"] == run["seed"] for r in reference):
    raise ValueError(f"arm {run['arm']!r} seed {run['seed']}: already in the reference")
  mean, se = _mean(xs), _std(xs) / math.sqrt(len(xs))
  value = run[column]
  z = (value - mean) / se if se > 0 else (0.0 if value == mean else math.inf)
  return {
    "arm": run["arm"],
    "seed": run["seed"],
    "value": value,
    "mean": mean,
    "se": se,
    "z": z,
    "within": abs(z) <= k,
  }


def _fmt(col: str, mean: float | None, sd: float | None) -> str:
  if mean is None:
    return "–"
  scale, digits = (100.0, 1) if col in _PERCENT else (1.0, 2 if col == "step_s" else 3)
  return f"{mean * scale:.{digits}f}" + (f" ± {sd * scale:.{digits}f}" if sd is not None else "")


def markdown(
  grouped: Mapping[str, Sequence[Mapping[str, Any]]],
  baseline: str = BASELINE,
  columns: Sequence[str] = COLUMNS,
) -> str:
  """The arms (mean ± sample std over seeds of `columns`, EM in percent), then the paired
  differences."""
  unknown = [c for c in columns if c not in COLUMNS]
  if unknown:
    raise ValueError(f"columns {unknown}: not in the record; expected some of {COLUMNS}")
  head = ["arm", "seeds", *columns, "EM after, per seed"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for arm, rows in grouped.items():
    cells = arm_cells(rows)
    per_seed = " / ".join(
      "–" if v is None else f"{100 * v:.1f}" for v in cells["em_after_rl"]["values"]
    )
    row = [arm, ",".join(str(r["seed"]) for r in rows)]
    row += [_fmt(c, cells[c]["mean"], cells[c]["std"]) for c in columns] + [per_seed]
    lines.append("| " + " | ".join(row) + " |")
  diffs = paired(grouped, baseline)
  if diffs:
    lines += [
      "",
      f"Test EM after RL minus {baseline}'s, paired by seed (points; mean ± standard error):",
      "",
      "| arm | seeds | per seed | mean ± SE |",
      "|---|---|---|---|",
    ]
    for arm, d in diffs.items():
      per = " / ".join(f"{100 * x:+.1f}" for x in d["diffs"])
      mean = "–" if d["mean"] is None else f"{100 * d['mean']:+.1f}"
      se = "" if d["se"] is None else f" ± {100 * d['se']:.1f}"
      lines.append(f"| {arm} | {','.join(map(str, d['seeds']))} | {per} | {mean}{se} |")
  return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- the record


def read_results(stem: str | pathlib.Path) -> list[dict[str, Any]]:
  """The runs recorded in STEM.json ([] when there is none yet)."""
  path = pathlib.Path(stem).with_suffix(".json")
  return json.loads(path.read_text()).get("runs", []) if path.exists() else []


def write_results(
  stem: str | pathlib.Path,
  runs: Sequence[Mapping[str, Any]],
  arms: Sequence[str],
  meta: Mapping[str, Any],
) -> None:
  """STEM.json ({meta..., runs, arms: {arm: cells}, paired}) and STEM.md (the tables)."""
  stem = pathlib.Path(stem)
  stem.parent.mkdir(parents=True, exist_ok=True)
  grouped = by_arm(runs, arms)
  body = {
    **meta,
    "runs": [dict(r) for r in runs],
    "arms": {a: arm_cells(rows) for a, rows in grouped.items()},
    "paired": paired(grouped),
  }
  stem.with_suffix(".json").write_text(json.dumps(body, indent=1) + "\n")
  lines = [f"# {meta.get('title', stem.name)}", ""]
  lines += [f"- {k}: `{v}`" for k, v in meta.items() if k != "title"]
  stem.with_suffix(".md").write_text("\n".join(lines) + "\n\n" + markdown(grouped))
