"""The run record: config.json and run.json, the resume check, the log file."""

import json
import logging

import ml_collections
import pytest
from absl import logging as absl_logging

from sr2.configlib import ConfigError
from sr2.train import records


def _config(**rl):
  return ml_collections.ConfigDict(
    {"seed": 0, "rl": {"steps": 2, "progress": True, "lr": 1e-3, **rl}, "model": {"dims": (8, 4)}}
  )


def test_changed_fields_flattens_and_names_both_sides():
  a = {"rl": {"lr": 1.0, "steps": 2}, "x": {}, "only_a": 1}
  b = {"rl": {"lr": 2.0, "steps": 2}, "x": {}, "only_b": 1}
  assert records.changed_fields(a, b) == ["only_a", "only_b", "rl.lr"]
  assert records.changed_fields(a, a) == []


def test_first_start_writes_config_commit_versions_and_devices(tmp_path):
  run = records.write(tmp_path, _config(), resumed_at=None)
  assert json.loads((tmp_path / "config.json").read_text()) == {
    "seed": 0,
    "rl": {"steps": 2, "progress": True, "lr": 1e-3},
    "model": {"dims": [8, 4]},
  }
  saved = json.loads((tmp_path / "run.json").read_text())
  assert saved == run and saved["resumes"] == []
  assert len(saved["commit"]) == 40 and isinstance(saved["dirty"], bool)  # a git checkout
  assert saved["versions"]["jax"] and saved["versions"]["python"]
  assert saved["devices"]["platform"] == "cpu" and saved["devices"]["count"] >= 1
  assert saved["host"]["cpus"] >= 1 and saved["host"]["machine"]


def test_host_reads_the_cpu_model(tmp_path):
  info = tmp_path / "cpuinfo"
  info.write_text("processor\t: 0\nvendor_id\t: X\nmodel name\t: Test CPU 9000\nflags\t: avx\n")
  assert records.host(str(info))["cpu"] == "Test CPU 9000"
  assert records.host(str(tmp_path / "none"))["machine"]  # no cpuinfo: platform's answer


def test_a_resume_is_recorded_and_keeps_the_first_config(tmp_path):
  records.write(tmp_path, _config(), resumed_at=None)
  records.write(tmp_path, _config(steps=5), resumed_at=3)
  run = json.loads((tmp_path / "run.json").read_text())
  assert [r["step"] for r in run["resumes"]] == [3]
  assert "versions" not in run["resumes"][0]  # unchanged, so not repeated
  assert json.loads((tmp_path / "config.json").read_text())["rl"]["steps"] == 2


def test_resume_with_a_changed_field_is_refused_naming_it(tmp_path):
  records.write(tmp_path, _config(), resumed_at=None)
  records.check_resume(tmp_path, _config(steps=10, progress=False))  # RESUMABLE fields
  with pytest.raises(ConfigError, match=r"rl\.lr: 0\.001 -> 0\.01.*--allow_config_change"):
    records.check_resume(tmp_path, _config(lr=1e-2))
  c = _config()
  c.rl.new_field = 1
  with pytest.raises(ConfigError, match=r"rl\.new_field: '\(absent\)' -> 1"):
    records.check_resume(tmp_path, c)
  records.check_resume(tmp_path, _config(lr=1e-2), allow_change=True)
  records.check_resume(tmp_path / "elsewhere", _config(lr=1e-2))  # no record: nothing to check


def _log(message, level=logging.INFO, path=records.__file__):
  """An absl record as if logged from `path` (by default a module of sr2)."""
  record = logging.LogRecord("absl", level, path, 1, message, None, None)
  absl_logging.get_absl_logger().handle(record)


def test_log_file_gets_sr2_logging_and_lines(tmp_path):
  handler = records.log_to_file(tmp_path / "a")
  _log("hello 1")
  handler.line("[rl 1] reward=0.5")
  second = records.log_to_file(tmp_path / "b")  # replaces the first
  _log("second run")
  _log("chatter", path="/site-packages/orbax/x.py")  # another library's INFO: left out
  _log("beware", logging.WARNING, path="/site-packages/orbax/x.py")  # its warning: kept
  records.stop_logging(second)
  _log("after the run")
  first = (tmp_path / "a" / "train.log").read_text()
  assert "INFO hello 1" in first and "INFO [rl 1] reward=0.5" in first
  assert "second run" not in first
  log_b = (tmp_path / "b" / "train.log").read_text()
  assert "second run" in log_b and "WARNING beware" in log_b
  assert "chatter" not in log_b and "after the run" not in log_b
  logger = absl_logging.get_absl_logger()
  assert not [h for h in logger.handlers if isinstance(h, records._LogFile)]
  assert logging.INFO >= logger.getEffectiveLevel()
