"""Training metrics: JSON Lines, TensorBoard events, a console progress bar, and a PNG.

`MetricWriter(workdir)` writes each `write(phase, step, metrics)` call as
  - one line `{"phase", "step", **metrics}` appended to `workdir/metrics.jsonl`
    (numpy/JAX scalars become floats; NaN and ±Inf, which JSON lacks, are written as the
    strings "nan", "inf", "-inf" and read back as floats by `read_metrics`);
  - TensorBoard scalars `{phase}/{name}` at `step` in `workdir/tensorboard/` (tensorboardX,
    no TensorFlow needed; a resumed run adds a new events file, as TensorBoard expects);
  - with `progress_total`, a tqdm bar on stderr showing reward, EM and seconds per step.
`plot_curves(metrics.jsonl, png)` draws the training curves with matplotlib (Agg).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_POSTFIX = ("reward", "em", "step_s")
CURVE_KEYS = (
  "reward",
  "em",
  "kl_loss",
  "clip_frac",
  "grad_norm",
  "response_tokens",
  "searches",
  "step_s",
  "refiner/v_inter",
  "process",
)


def _scalar(v: Any) -> Any:
  if hasattr(v, "item") and np.ndim(v) == 0:
    v = v.item()
  if isinstance(v, float) and not math.isfinite(v):
    return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
  return v


class MetricWriter:
  """Appends metric rows to JSONL and TensorBoard; optionally drives a progress bar."""

  def __init__(
    self,
    workdir: str | os.PathLike,
    *,
    tensorboard: bool = True,
    progress_total: int | None = None,
    progress_desc: str = "train",
  ):
    self.workdir = pathlib.Path(workdir)
    self.workdir.mkdir(parents=True, exist_ok=True)
    self.path = self.workdir / "metrics.jsonl"
    self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
    self._tb = None
    if tensorboard:
      from tensorboardX import SummaryWriter

      self._tb = SummaryWriter(str(self.workdir / "tensorboard"))
    self._bar = None
    if progress_total:
      from tqdm.auto import tqdm

      self._bar = tqdm(total=progress_total, desc=progress_desc, dynamic_ncols=True)

  def skip_to(self, step: int) -> None:
    """Moves the progress bar to `step` (a resumed run)."""
    if self._bar is not None and step > self._bar.n:
      self._bar.update(step - self._bar.n)

  def write(self, phase: str, step: int, metrics: Mapping[str, Any]) -> None:
    row = {"phase": phase, "step": int(step), **{k: _scalar(v) for k, v in metrics.items()}}
    self._file.write(json.dumps(row) + "\n")
    self._file.flush()
    if self._tb is not None:
      for k, v in metrics.items():
        v = _scalar(v)
        if isinstance(v, bool | int | float) or v in _NONFINITE:
          self._tb.add_scalar(f"{phase}/{k}", float(_NONFINITE.get(v, v)), int(step))
    if self._bar is not None and phase == "rl":
      self.skip_to(int(step))
      shown = {k: f"{float(metrics[k]):.3g}" for k in _POSTFIX if k in metrics}
      self._bar.set_postfix(shown, refresh=False)

  def close(self) -> None:
    self._file.close()
    if self._tb is not None:
      self._tb.close()
    if self._bar is not None:
      self._bar.close()

  def __enter__(self) -> MetricWriter:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
  """The rows of a metrics.jsonl; a cut last line (a killed writer) is skipped with a warning."""
  rows = []
  lines = pathlib.Path(path).read_text(encoding="utf-8").splitlines()
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError:
      if i == len(lines) - 1:
        warnings.warn(f"{path}: skipping a truncated last line", stacklevel=2)
        continue
      raise ValueError(f"{path}:{i + 1}: not a JSON object") from None
    rows.append({k: _NONFINITE.get(v, v) if isinstance(v, str) else v for k, v in row.items()})
  return rows


def plot_curves(
  rows_or_path: str | os.PathLike | Iterable[Mapping[str, Any]],
  png_path: str | os.PathLike,
  keys: Sequence[str] = CURVE_KEYS,
) -> list[str]:
  """Draws one panel per present key of the "rl" rows by step, plus the SFT loss and the
  evaluation EM when logged; returns the panel titles. Absent keys are skipped."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  rows = (
    read_metrics(rows_or_path)
    if isinstance(rows_or_path, str | os.PathLike)
    else list(rows_or_path)
  )
  by_phase: dict[str, list] = {}
  for r in rows:
    by_phase.setdefault(r.get("phase", ""), []).append(r)
  panels = []
  rl = by_phase.get("rl", [])
  for k in keys:
    pts = [(r["step"], r[k]) for r in rl if isinstance(r.get(k), int | float)]
    if pts:
      panels.append((f"rl {k}", pts))
  sft = [(r["step"], r["sft_loss"]) for r in by_phase.get("sft", []) if "sft_loss" in r]
  if sft:
    panels.insert(0, ("sft loss", sft))
  evals = [
    (r["step"], v)
    for r in by_phase.get("eval", []) + rl
    for k, v in r.items()
    if k.endswith("/em") and isinstance(v, int | float)
  ]
  if evals:
    panels.append(("eval EM (dev during RL, test at start and end)", sorted(evals)))
  cols = 3
  n_rows = max(1, math.ceil(len(panels) / cols))
  fig, axes = plt.subplots(n_rows, cols, figsize=(4.2 * cols, 2.8 * n_rows), squeeze=False)
  for ax, (title, pts) in zip(axes.flat, panels, strict=False):
    x, y = zip(*pts, strict=True)
    ax.plot(x, y, marker="o" if len(x) < 20 else None, markersize=3)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=7)
  for ax in list(axes.flat)[len(panels) :]:
    ax.axis("off")
  fig.tight_layout()
  fig.savefig(png_path, dpi=90)
  plt.close(fig)
  return [t for t, _ in panels]
