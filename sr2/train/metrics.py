"""Training metrics: JSON Lines, TensorBoard events, console progress, and a curves PNG.

`MetricWriter(workdir)` sends each `write(phase, step, metrics)` row to
  - `workdir/metrics.jsonl`, one line `{"phase", "step", **metrics}`, appended and flushed per
    row. numpy/JAX scalars become Python numbers (arrays become lists). NaN and ±Inf, which JSON
    lacks, are written as the strings "nan", "inf" and "-inf" (so every line is strict JSON and
    the value survives); `read_metrics` turns those strings back into floats;
  - TensorBoard scalars `{phase}/{name}` at `step` in `workdir/tensorboard/` (tensorboardX, no
    TensorFlow; non-numeric values are skipped; tensorboardX turns characters TensorBoard forbids
    into "_"). Each writer opens its own events file, so a resumed run adds one;
  - the console (stderr unless `stream` is given): with `progress_total`, a plain-text tqdm bar
    advanced by the "rl" rows with reward, EM and seconds per step; other rows (and every row
    without a bar) as one short line. `task_bar(desc, total)` opens a bar for work between
    rows (the SFT warm start, an evaluation). Plain tqdm rather than tqdm.auto, so Colab,
    notebooks and log files without a TTY all get the same text;
  - `log` (a callable): each row's short line, e.g. for the run's log file.
`plot_curves(metrics.jsonl, png)` draws the curves with matplotlib's Agg canvas, without pyplot,
so it neither needs a display nor changes a notebook's backend.

The workdir may be local or in an object store (gs://, s3://): files go through `sr2.files`,
which rewrites metrics.jsonl and the event files whole at each flush where appending is
impossible.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TextIO

import numpy as np

from sr2 import files

_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_POSTFIX = ("reward", "em", "step_s")  # shown on the progress bar
_LINE_KEYS = ("reward", "em", "sft_loss", "step_s")  # shown in console lines, with "*/em"
CURVE_KEYS = (
  "reward",
  "em",
  "kl_loss",
  "clip_frac",
  "grad_norm",
  "response_tokens",
  "searches",
  "step_s",
  "process",
  "refiner/v_inter",
)


def _plain(v: Any) -> Any:
  """numpy/JAX scalars and arrays as Python numbers and lists (NaN/Inf kept as floats)."""
  if isinstance(v, np.generic | np.ndarray) or hasattr(v, "__array__"):
    a = np.asarray(v)
    if a.dtype.kind not in "biuUS":
      a = a.astype(np.float64)  # float16/bfloat16 have no Python counterpart
    return a.tolist()
  if isinstance(v, list | tuple):
    return [_plain(x) for x in v]
  return v


def _encode(v: Any) -> Any:
  if isinstance(v, float) and not math.isfinite(v):
    return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
  return [_encode(x) for x in v] if isinstance(v, list) else v


def _decode(v: Any) -> Any:
  if isinstance(v, str):
    return _NONFINITE.get(v, v)
  return [_decode(x) for x in v] if isinstance(v, list) else v


def _is_number(v: Any) -> bool:
  return isinstance(v, int | float)  # bool is an int


def _line(phase: str, step: int, row: Mapping[str, Any]) -> str:
  shown = [
    f"{k}={v:.4g}"
    for k, v in row.items()
    if (k in _LINE_KEYS or k.endswith("/em")) and _is_number(v)
  ]
  return f"[{phase} {step}] " + " ".join(shown)


def _mend_last_line(path) -> None:
  """Ends the file with a newline, so an append cannot glue a row onto a cut one.

  A last line that is not JSON (a writer killed mid-row) is cut off; one that is JSON but lacks
  its newline gets one.
  """
  if not path.exists():
    return
  data = path.read_bytes()
  if not data or data.endswith(b"\n"):
    return
  start = data.rfind(b"\n") + 1
  try:
    json.loads(data[start:])
    path.write_bytes(data + b"\n")
  except ValueError:
    warnings.warn(f"{path}: cutting a truncated last line before appending", stacklevel=3)
    path.write_bytes(data[:start])


class MetricWriter:
  """Writes metric rows to JSONL, TensorBoard and the console; a context manager.

  Args:
    workdir: directory of `metrics.jsonl` and `tensorboard/`, local or gs:// (created if
      missing; an existing `metrics.jsonl` is appended to).
    tensorboard: whether to write TensorBoard events.
    progress_total: number of "rl" steps for a progress bar, opened at the first "rl" row;
      None for no bar.
    progress_desc: the bar's label.
    console: False for silence (no bar, no lines).
    stream: where the console text goes; `sys.stderr` when None.
    log: called with each row's short line (e.g. to a log file), besides the console.
  """

  def __init__(
    self,
    workdir: str | os.PathLike,
    *,
    tensorboard: bool = True,
    progress_total: int | None = None,
    progress_desc: str = "train",
    console: bool = True,
    stream: TextIO | None = None,
    log: Callable[[str], None] | None = None,
  ):
    self.workdir = files.path(workdir)
    self.workdir.mkdir(parents=True, exist_ok=True)
    self.path = self.workdir / "metrics.jsonl"
    _mend_last_line(self.path)
    self._file = files.AppendFile(self.path)
    self._tb = None
    if tensorboard:
      from tensorboardX import SummaryWriter

      logdir = self.workdir / "tensorboard"
      # tensorboardX names files by the second and opens them with "wb": a writer started in
      # the same second as an earlier one (a quick resume) would erase its events.
      n = len(list(logdir.glob("*tfevents*"))) if logdir.exists() else 0
      self._tb = SummaryWriter(
        files.tensorboard_logdir(logdir), flush_secs=30, filename_suffix=f".{os.getpid()}.{n}"
      )
    self._stream = stream
    self._console = console
    self._log = log
    self._task = None  # the bar of `task_bar`, while open
    # The bar opens at the first "rl" row (or skip_to): rows before it, e.g. a warm start's,
    # are plain lines, and the bar's clock times RL steps only.
    self._progress = (progress_total, progress_desc) if console and progress_total else None
    self._bar = None

  def _out(self) -> TextIO:
    return self._stream if self._stream is not None else sys.stderr

  def _open_bar(self):
    if self._bar is None and self._progress is not None:
      from tqdm import tqdm

      total, desc = self._progress
      self._bar = tqdm(total=total, desc=desc, file=self._out(), dynamic_ncols=True)
    return self._bar

  def skip_to(self, step: int) -> None:
    """Moves the progress bar to `step` (a resumed run; the skipped steps are not timed)."""
    bar = self._open_bar() if step > 0 else self._bar
    if bar is None or step <= bar.n:
      return
    if bar.n == bar.initial:  # nothing timed yet: start the clock at `step`
      bar.reset(total=bar.total)
      bar.initial = bar.n = bar.last_print_n = step
      bar.refresh()
    else:
      bar.update(step - bar.n)

  @contextlib.contextmanager
  def task_bar(self, desc: str, total: int):
    """A plain-text tqdm bar for work between rows (SFT, an evaluation); yields the bar.

    Advance it with `bar.update(n)`. Rows written meanwhile print above it. Without a
    console, or with no progress bars (`progress_total` None), the bar is disabled.
    """
    from tqdm import tqdm

    enabled = self._progress is not None and self._bar is None
    bar = tqdm(total=total, desc=desc, file=self._out(), dynamic_ncols=True, disable=not enabled)
    self._task = bar if enabled else None
    try:
      yield bar
    finally:
      self._task = None
      bar.close()

  def write(self, phase: str, step: int, metrics: Mapping[str, Any]) -> None:
    """Writes one row; `metrics` values are numbers, numpy/JAX scalars, strings or lists."""
    if "phase" in metrics or "step" in metrics:
      raise ValueError("metric names 'phase' and 'step' are reserved")
    step = int(step)
    row = {k: _plain(v) for k, v in metrics.items()}
    line = json.dumps(
      {"phase": phase, "step": step, **{k: _encode(v) for k, v in row.items()}}, allow_nan=False
    )
    self._file.write(line + "\n")
    self._file.flush()
    if self._tb is not None:
      for k, v in row.items():
        if _is_number(v):
          self._tb.add_scalar(f"{phase}/{k}", float(v), step)
    if phase == "rl":
      self._open_bar()
    if self._bar is not None and phase == "rl":
      shown = {k: f"{row[k]:.3g}" for k in _POSTFIX if _is_number(row.get(k))}
      self._bar.set_postfix(shown, refresh=False)
      if step > self._bar.n:
        self._bar.update(step - self._bar.n)
      else:
        self._bar.refresh()
    elif (bar := self._bar or self._task) is not None:
      bar.write(_line(phase, step, row), file=self._out())
    elif self._console:
      print(_line(phase, step, row), file=self._out(), flush=True)
    if self._log is not None:
      self._log(_line(phase, step, row))

  def flush(self) -> None:
    """Pushes pending TensorBoard events to disk (JSONL rows are flushed as written)."""
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    """Flushes and closes everything; calling it again does nothing."""
    if self._file.closed:
      return
    self._file.close()
    if self._tb is not None:
      self._tb.close()
    if self._bar is not None:
      self._bar.close()

  def __enter__(self) -> MetricWriter:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def read_metrics(path: str | os.PathLike, phase: str | None = None) -> list[dict[str, Any]]:
  """The rows of a metrics.jsonl, with "nan"/"inf"/"-inf" strings back as floats.

  Args:
    path: the file a `MetricWriter` wrote.
    phase: keep only rows of this phase ("rl", "sft", "eval"); all rows when None.

  Returns:
    The rows in file order. A last line that is not JSON (a writer killed mid-row) is skipped
    with a warning; a bad line elsewhere raises ValueError naming it.
  """
  rows = []
  lines = files.path(path).read_text(encoding="utf-8").splitlines()
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError:
      if i == len(lines) - 1:
        warnings.warn(f"{path}: skipping a truncated last line", stacklevel=2)
        continue
      raise ValueError(f"{path}:{i + 1}: not valid JSON") from None
    if not isinstance(row, dict):
      raise ValueError(f"{path}:{i + 1}: expected a JSON object, got {type(row).__name__}")
    if phase is None or row.get("phase") == phase:
      rows.append({k: _decode(v) for k, v in row.items()})
  return rows


def _series(rows: Iterable[Mapping[str, Any]], key: str) -> list[tuple[int, float]]:
  return [(r["step"], r[key]) for r in rows if _is_number(r.get(key))]


def curves_figure(rows: Iterable[Mapping[str, Any]], keys: Sequence[str] = CURVE_KEYS):
  """A matplotlib Figure with one panel per curve that has data; absent keys are skipped.

  Panels, in order: "sft loss" (the "sft" rows' `sft_loss`), "rl KEY" for each of `keys` in the
  "rl" rows, and "eval EM" with one line per split (`SPLIT/em` from "eval" rows and from the
  "rl" rows that carry a dev evaluation). No rows with data give a figure without axes.
  """
  from matplotlib.figure import Figure

  by_phase: dict[str, list[dict[str, Any]]] = {}
  for r in rows:
    r = {k: _decode(v) for k, v in r.items()}
    by_phase.setdefault(r.get("phase", ""), []).append(r)
  rl = by_phase.get("rl", [])
  panels = []  # (title, {label: points})
  if sft := _series(by_phase.get("sft", []), "sft_loss"):
    panels.append(("sft loss", {"": sft}))
  panels += [(f"rl {k}", {"": pts}) for k in keys if (pts := _series(rl, k))]
  eval_rows = by_phase.get("eval", []) + rl
  em_keys = sorted({k for r in eval_rows for k in r if k.endswith("/em")})
  evals = {k.removesuffix("/em"): sorted(_series(eval_rows, k)) for k in em_keys}
  if evals := {split: pts for split, pts in evals.items() if pts}:
    panels.append(("eval EM", evals))

  cols = min(3, max(1, len(panels)))
  n_rows = max(1, math.ceil(len(panels) / cols))
  fig = Figure(figsize=(4.2 * cols, 2.8 * n_rows), layout="constrained")
  if not panels:
    fig.text(0.5, 0.5, "no metrics to plot", ha="center", va="center")
  for i, (title, lines) in enumerate(panels):
    ax = fig.add_subplot(n_rows, cols, i + 1)
    for label, pts in lines.items():
      x, y = zip(*pts, strict=True)
      ax.plot(x, y, label=label or None, marker="o" if len(x) < 20 else None, markersize=3)
    if len(lines) > 1 or any(lines):
      ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=7)
  return fig


def plot_curves(
  rows_or_path: str | os.PathLike | Iterable[Mapping[str, Any]],
  png_path: str | os.PathLike,
  keys: Sequence[str] = CURVE_KEYS,
) -> list[str]:
  """Saves `curves_figure` of a metrics.jsonl (or its rows) as a PNG.

  Args:
    rows_or_path: a metrics.jsonl path or rows as `read_metrics` returns them.
    png_path: the PNG to write (local or gs://).
    keys: "rl" metrics to draw, in order; those without data are skipped.

  Returns:
    The titles of the panels drawn.
  """
  if isinstance(rows_or_path, str | os.PathLike):
    rows_or_path = read_metrics(rows_or_path)
  fig = curves_figure(rows_or_path, keys)
  png = io.BytesIO()
  fig.savefig(png, format="png", dpi=90)
  files.path(png_path).write_bytes(png.getvalue())
  return [ax.get_title() for ax in fig.axes]


class NullWriter:
  """A `MetricWriter` that writes nothing: what every process but process 0 gets."""

  def write(self, phase: str, step: int, metrics: Mapping[str, Any]) -> None:
    del phase, step, metrics

  def skip_to(self, step: int) -> None:
    del step

  @contextlib.contextmanager
  def task_bar(self, desc: str, total: int):
    from tqdm import tqdm

    del desc
    with tqdm(total=total, disable=True) as bar:
      yield bar

  def close(self) -> None:
    pass
