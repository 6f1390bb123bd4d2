"""Metric rows: JSONL round trip, TensorBoard events, resume, console, the curves PNG."""

import io
import json
import math
import struct

import jax.numpy as jnp
import numpy as np
import pytest

from sr2.train.metrics import MetricWriter, curves_figure, plot_curves, read_metrics

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _strict_json(line):
  def no_constants(name):
    raise AssertionError(f"{name} is not JSON")

  return json.loads(line, parse_constant=no_constants)


def test_jsonl_round_trip_with_nonfinite_and_array_scalars(tmp_path):
  with MetricWriter(tmp_path, tensorboard=False, console=False) as w:
    w.write(
      "rl",
      np.int64(1),
      {
        "f32": np.float32(0.5),
        "i64": np.int64(7),
        "flag": np.bool_(True),
        "jax": jnp.asarray(2.0),
        "bf16": jnp.asarray(1.5, jnp.bfloat16),
        "nan": float("nan"),
        "np_nan": np.float32("nan"),
        "vec": np.array([1.0, np.inf]),
        "note": "text",
      },
    )
    w.write("eval", 2, {"inf": jnp.inf, "-inf": -math.inf, "int": 3})
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert [_strict_json(x)["step"] for x in lines] == [1, 2]  # NaN/Inf stored as strings
  a, b = read_metrics(tmp_path / "metrics.jsonl")
  assert (a["phase"], a["step"], a["f32"], a["i64"], a["flag"]) == ("rl", 1, 0.5, 7, True)
  assert (a["jax"], a["bf16"], a["vec"], a["note"]) == (2.0, 1.5, [1.0, math.inf], "text")
  assert math.isnan(a["nan"]) and math.isnan(a["np_nan"])
  assert type(a["i64"]) is int and type(a["f32"]) is float
  assert (b["inf"], b["-inf"], b["int"]) == (math.inf, -math.inf, 3)
  assert read_metrics(tmp_path / "metrics.jsonl", phase="eval") == [b]


def test_phase_and_step_are_reserved(tmp_path):
  with MetricWriter(tmp_path, tensorboard=False, console=False) as w:
    with pytest.raises(ValueError, match="reserved"):
      w.write("rl", 1, {"step": 2})


def test_resume_appends_to_the_file_and_adds_an_events_file(tmp_path):
  for step in (1, 2):  # the same second: tensorboardX alone would reuse the file name
    with MetricWriter(tmp_path, console=False) as w:
      w.write("rl", step, {"x": float(step)})
  assert [(r["step"], r["x"]) for r in read_metrics(tmp_path / "metrics.jsonl")] == [
    (1, 1.0),
    (2, 2.0),
  ]
  files = sorted((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
  assert sorted(s for f in files for _, s, _ in _scalars(f)) == [1, 2]


def test_a_cut_last_line_is_skipped_on_read_and_cut_before_appending(tmp_path):
  path = tmp_path / "metrics.jsonl"
  with MetricWriter(tmp_path, tensorboard=False, console=False) as w:
    w.write("rl", 1, {"x": 1.0})
  with open(path, "a") as f:
    f.write('{"phase": "rl", "st')  # a writer killed mid-row
  with pytest.warns(UserWarning, match="truncated"):
    assert [r["step"] for r in read_metrics(path)] == [1]
  with pytest.warns(UserWarning, match="truncated"):
    w = MetricWriter(tmp_path, tensorboard=False, console=False)
  with w:
    w.write("rl", 2, {"x": 2.0})
  assert [r["step"] for r in read_metrics(path)] == [1, 2]  # no warning: the file is whole


def test_a_whole_last_line_without_newline_is_kept(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"phase": "rl", "step": 1}')
  with MetricWriter(tmp_path, tensorboard=False, console=False) as w:
    w.write("rl", 2, {})
  assert [r["step"] for r in read_metrics(path)] == [1, 2]


def test_a_bad_line_before_the_last_is_an_error(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"phase": "rl", "st\n{"phase": "rl", "step": 2}\n')
  with pytest.raises(ValueError, match="metrics.jsonl:1"):
    read_metrics(path)


def _crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), bit by bit."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc ^= byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
  return crc ^ 0xFFFFFFFF


def _masked(crc: int) -> int:
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def test_crc32c_check_value():
  assert _crc32c(b"123456789") == 0xE3069283  # the standard check value


def _scalars(path):
  """(tag, step, value) of every scalar in a TFRecord events file, checking both CRCs.

  A record is: uint64 length, masked CRC32C of those 8 bytes, the Event proto, its masked CRC.
  """
  from tensorboardX.proto.event_pb2 import Event

  data, out, pos = path.read_bytes(), [], 0
  while pos < len(data):
    header, (header_crc,) = data[pos : pos + 8], struct.unpack("<I", data[pos + 8 : pos + 12])
    (n,) = struct.unpack("<Q", header)
    body = data[pos + 12 : pos + 12 + n]
    (body_crc,) = struct.unpack("<I", data[pos + 12 + n : pos + 16 + n])
    assert header_crc == _masked(_crc32c(header)) and body_crc == _masked(_crc32c(body))
    event = Event.FromString(body)
    out += [(v.tag, event.step, v.simple_value) for v in event.summary.value]
    pos += 16 + n
  assert pos == len(data)
  return out


def test_tensorboard_events_hold_the_scalars(tmp_path):
  with MetricWriter(tmp_path, console=False) as w:
    for step in (1, 2, 3):
      w.write("rl", step, {"reward": np.float32(step / 10), "note": "skipped", "vec": [1, 2]})
    w.write("eval", 3, {"test/em": 0.5, "bad": float("nan"), "ok": True})
  (path,) = (tmp_path / "tensorboard").glob("events.out.tfevents.*")
  got = [(t, s, v if math.isnan(v) else round(v, 6)) for t, s, v in _scalars(path)]
  assert got[:3] == [("rl/reward", 1, 0.1), ("rl/reward", 2, 0.2), ("rl/reward", 3, 0.3)]
  assert got[3] == ("eval/test/em", 3, 0.5) and got[5] == ("eval/ok", 3, 1.0)
  assert got[4][:2] == ("eval/bad", 3) and math.isnan(got[4][2])
  assert len(got) == 6


def test_progress_bar_on_a_non_tty_stream(tmp_path):
  out = io.StringIO()  # not a TTY, like a log file or a notebook's captured stderr
  with MetricWriter(
    tmp_path, tensorboard=False, progress_total=4, progress_desc="GRPO", stream=out
  ) as w:
    w.skip_to(1)  # resumed after step 1
    w.write("rl", 2, {"reward": 0.25, "em": np.float32(0.2), "step_s": 1.5, "other": 9.0})
    w.write("eval", 2, {"dev/em": 0.5})
    w.write("rl", 4, {"reward": 0.5})
  text = out.getvalue()
  assert "GRPO" in text and "1/4" in text and "2/4" in text and "4/4" in text
  assert "reward=0.25" in text and "em=0.2" in text and "other" not in text
  assert "[eval 2] dev/em=0.5\n" in text


def test_progress_bar_opens_at_the_first_rl_row(tmp_path):
  out = io.StringIO()
  with MetricWriter(
    tmp_path, tensorboard=False, progress_total=2, progress_desc="GRPO", stream=out
  ) as w:
    w.skip_to(0)  # a fresh run: nothing to skip, no bar yet
    w.write("sft", 10, {"sft_loss": 2.5})
    w.write("eval", 0, {"test/em": 0.25})
    before_rl = out.getvalue()
    w.write("rl", 1, {"reward": 0.5})
  assert before_rl == "[sft 10] sft_loss=2.5\n[eval 0] test/em=0.25\n"  # no "GRPO 0/2"
  assert "GRPO" in out.getvalue()[len(before_rl) :] and "1/2" in out.getvalue()


def test_console_lines_without_a_bar_and_silence(tmp_path, capsys):
  with MetricWriter(tmp_path, tensorboard=False) as w:
    w.write("sft", 10, {"sft_loss": 2.5, "sft_tokens": 100})
  assert capsys.readouterr().err == "[sft 10] sft_loss=2.5\n"
  with MetricWriter(tmp_path, tensorboard=False, progress_total=3, console=False) as w:
    w.write("rl", 1, {"reward": 1.0})
  assert capsys.readouterr() == ("", "")


def _rows():
  rows = [{"phase": "sft", "step": s, "sft_loss": 3.0 - s / 10} for s in (0, 10)]
  rows += [
    {"phase": "rl", "step": s, "reward": s / 10, "kl_loss": "nan" if s == 2 else 0.01 * s}
    for s in (1, 2, 3)
  ]
  rows[-1]["dev/em"] = 0.35
  rows += [{"phase": "eval", "step": s, "test/em": 0.3 + s / 30} for s in (0, 3)]
  return rows


def test_plot_curves_draws_present_keys_only(tmp_path):
  keys = ("reward", "em", "kl_loss", "grad_norm")  # no em or grad_norm in the rows
  titles = plot_curves(_rows(), tmp_path / "c.png", keys=keys)
  assert titles == ["sft loss", "rl reward", "rl kl_loss", "eval EM"]
  assert (tmp_path / "c.png").read_bytes()[:8] == PNG_SIGNATURE
  fig = curves_figure(_rows(), keys=keys)
  assert len(fig.axes) == 4
  em = fig.axes[-1]
  assert [line.get_label() for line in em.get_lines()] == ["dev", "test"]
  assert list(em.get_lines()[1].get_xdata()) == [0, 3]


def test_plot_curves_from_a_file_and_from_nothing(tmp_path):
  with MetricWriter(tmp_path, tensorboard=False, console=False) as w:
    for r in _rows():
      w.write(r.pop("phase"), r.pop("step"), r)
  titles = plot_curves(tmp_path / "metrics.jsonl", tmp_path / "c.png")
  assert titles == ["sft loss", "rl reward", "rl kl_loss", "eval EM"]
  assert plot_curves([], tmp_path / "empty.png") == []
  assert (tmp_path / "empty.png").read_bytes()[:8] == PNG_SIGNATURE
