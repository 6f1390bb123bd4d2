"""Metric rows: JSONL round trip, TensorBoard events, resume, the curves PNG."""

import math
import struct

import jax.numpy as jnp
import numpy as np
import pytest

from sr2.rl.metrics import MetricWriter, plot_curves, read_metrics


def test_jsonl_round_trip_with_nonfinite_and_array_scalars(tmp_path):
  with MetricWriter(tmp_path, tensorboard=False) as w:
    w.write("rl", 1, {"a": np.float32(0.5), "b": jnp.asarray(2.0), "c": float("nan")})
    w.write("rl", 2, {"a": float("inf"), "b": -math.inf, "c": 3})
  rows = read_metrics(tmp_path / "metrics.jsonl")
  assert rows[0]["phase"] == "rl" and rows[0]["step"] == 1 and rows[0]["a"] == 0.5
  assert rows[0]["b"] == 2.0 and math.isnan(rows[0]["c"])
  assert rows[1]["a"] == math.inf and rows[1]["b"] == -math.inf and rows[1]["c"] == 3


def test_appends_on_resume_and_skips_a_cut_last_line(tmp_path):
  with MetricWriter(tmp_path, tensorboard=False) as w:
    w.write("rl", 1, {"x": 1.0})
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"phase": "rl", "st')  # a killed writer
  with pytest.warns(UserWarning, match="truncated"):
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1]


def _events(directory):
  """(tag, step, value) of every scalar in a TFRecord events file (length-prefixed protos)."""
  from tensorboardX.proto.event_pb2 import Event

  (path,) = directory.glob("events.out.tfevents.*")
  data, out, pos = path.read_bytes(), [], 0
  while pos < len(data):
    n = struct.unpack("<Q", data[pos : pos + 8])[0]
    event = Event.FromString(data[pos + 12 : pos + 12 + n])
    out += [(v.tag, event.step, v.simple_value) for v in event.summary.value]
    pos += 12 + n + 4
  return out


def test_tensorboard_events_hold_the_scalars(tmp_path):
  with MetricWriter(tmp_path) as w:
    for step in (1, 2, 3):
      w.write("rl", step, {"reward": step / 10, "note": "text is skipped"})
  got = [(t, s, round(v, 6)) for t, s, v in _events(tmp_path / "tensorboard")]
  assert got == [("rl/reward", 1, 0.1), ("rl/reward", 2, 0.2), ("rl/reward", 3, 0.3)]


def test_progress_bar_on_a_non_tty(tmp_path, capsys):
  with MetricWriter(tmp_path, tensorboard=False, progress_total=3, progress_desc="GRPO") as w:
    w.skip_to(1)
    w.write("rl", 2, {"reward": 0.25, "em": 0.2, "step_s": 1.5})
  assert "GRPO" in capsys.readouterr().err


def test_plot_curves_draws_present_keys_only(tmp_path):
  rows = [
    {"phase": "sft", "step": 0, "sft_loss": 3.0},
    {"phase": "sft", "step": 10, "sft_loss": 2.0},
  ]
  rows += [{"phase": "rl", "step": s, "reward": s / 10, "kl_loss": 0.01 * s} for s in (1, 2, 3)]
  rows += [
    {"phase": "eval", "step": 0, "test/em": 0.3},
    {"phase": "eval", "step": 3, "test/em": 0.4},
  ]
  titles = plot_curves(rows, tmp_path / "c.png")
  assert titles == [
    "sft loss",
    "rl reward",
    "rl kl_loss",
    "eval EM (dev during RL, test at start and end)",
  ]
  assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
