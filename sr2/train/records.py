"""A run's record in its workdir: what it ran with, checked again when it resumes.

  config.json  the config as JSON, written at the run's first start;
  run.json     {"commit", "dirty", "versions", "devices", "host", "argv", "started"} of the first
               start, and under "resumes" the same (less the versions when unchanged) for
               each resume with the step it resumed from;
  train.log    process 0's absl logging (sr2's from INFO, other libraries' from WARNING)
               and the console's metric lines.

A resume compares the config with config.json and refuses a difference, naming each field,
unless the caller allows it (`--allow_config_change`); the fields in `RESUMABLE` may
always change (extending a run, its console). A different commit is recorded, not refused:
code changes between a kill and a restart are normal in research, and run.json says so.
Everything here takes local or gs:// workdirs (`sr2.files`).
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import platform
import subprocess
import sys
from collections.abc import Mapping
from importlib import metadata
from typing import Any

import jax

from sr2 import files
from sr2.configlib import ConfigError

CONFIG, RUN, LOG = "config.json", "run.json", "train.log"
# Fields a resume may change without --allow_config_change: more steps, the console.
RESUMABLE = ("rl.steps", "rl.progress")
_PACKAGES = ("jax", "jaxlib", "libtpu", "optax", "orbax-checkpoint", "transformers", "numpy")


def config_json(config) -> dict[str, Any]:
  """The config (a ConfigDict or mapping) as JSON-able nested dicts; tuples become lists."""
  raw = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  return json.loads(json.dumps(raw, default=repr))


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """{"a.b": leaf} for a nested mapping (an empty mapping is a leaf)."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping) and v:
      out.update(flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def changed_fields(saved: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
  """Dotted names of the fields that differ (or exist on one side only), sorted."""
  a, b = flatten(saved), flatten(now)
  return sorted(k for k in a.keys() | b.keys() if a.get(k, KeyError) != b.get(k, KeyError))


def check_resume(workdir: files.PathLike, config, allow_change: bool = False) -> None:
  """Refuses to resume `workdir` with a config other than the one it started with.

  Raises:
    ConfigError: naming each changed field with its old and new value, and the flag that
      allows the change; the fields in `RESUMABLE` are not checked.
  """
  path = files.path(workdir) / CONFIG
  if allow_change or not path.exists():
    return
  saved = flatten(json.loads(path.read_text()))
  now = flatten(config_json(config))
  changed = [k for k in changed_fields(saved, now) if k not in RESUMABLE]
  if changed:
    absent = "(absent)"
    shown = "; ".join(f"{k}: {saved.get(k, absent)!r} -> {now.get(k, absent)!r}" for k in changed)
    raise ConfigError(
      f"resuming {os.fspath(workdir)} with a changed config ({shown}); resume with the config "
      f"in {CONFIG}, start a new workdir, or pass --allow_config_change"
    )


def commit() -> dict[str, Any]:
  """The git commit of the sr2 checkout that runs ("commit": None outside a git checkout)."""
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

  def git(*args):
    out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
    return out.stdout.strip() if out.returncode == 0 else None

  try:
    head = git("rev-parse", "HEAD")
    dirty = bool(git("status", "--porcelain", "--untracked-files=no")) if head else None
  except (OSError, subprocess.SubprocessError):
    head = dirty = None
  return {"commit": head, "dirty": dirty}


def versions() -> dict[str, str | None]:
  """Python's and the main packages' versions (None: not installed)."""

  def version(name):
    try:
      return metadata.version(name)
    except metadata.PackageNotFoundError:
      return None

  return {"python": platform.python_version(), **{p: version(p) for p in _PACKAGES}}


def devices() -> dict[str, Any]:
  """The devices the run sees: platform, kind, counts."""
  return {
    "platform": jax.default_backend(),
    "kind": jax.devices()[0].device_kind,
    "count": jax.device_count(),
    "local_count": jax.local_device_count(),
    "processes": jax.process_count(),
  }


def host(cpuinfo: str = "/proc/cpuinfo") -> dict[str, Any]:
  """The host: architecture, CPU model, CPU count.

  XLA compiles CPU programs for the host's instruction set, so float results, and with them
  a long SFT's drift, can differ between CPU models; the record tells such runs apart. The
  model comes from `cpuinfo` on Linux, else `platform.processor()`.
  """
  model = None
  if os.path.exists(cpuinfo):
    with open(cpuinfo) as f:
      model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None)
  return {
    "machine": platform.machine(),
    "cpu": model or platform.processor() or None,
    "cpus": os.cpu_count(),
  }


def _start() -> dict[str, Any]:
  now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
  return {**commit(), "argv": list(sys.argv), "devices": devices(), "host": host(), "started": now}


def write(workdir: files.PathLike, config, resumed_at: int | None) -> dict[str, Any]:
  """Writes config.json and run.json at a first start; adds this start to a resume's run.json.

  Returns what run.json now holds.
  """
  root = files.path(workdir)
  run_path = root / RUN
  if resumed_at is None or not run_path.exists():
    (root / CONFIG).write_text(json.dumps(config_json(config), indent=1) + "\n")
    record = {**_start(), "versions": versions(), "resumes": []}
  else:
    record = json.loads(run_path.read_text())
    start = {**_start(), "step": resumed_at}
    if (now := versions()) != record.get("versions"):
      start["versions"] = now
    record.setdefault("resumes", []).append(start)
  run_path.write_text(json.dumps(record, indent=1) + "\n")
  return record


_SR2 = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the sr2 package


def _ours_or_warnings(record: logging.LogRecord) -> bool:
  """sr2's own records at any level; other libraries' (Orbax's INFO chatter) from WARNING."""
  return record.levelno >= logging.WARNING or record.pathname.startswith(_SR2)


class _LogFile(logging.Handler):
  """A logging handler appending formatted records to a local or gs:// file."""

  def __init__(self, path: files.PathLike):
    self._file = files.AppendFile(path)  # first: a handler that failed to open is not registered
    super().__init__()
    self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    self.addFilter(_ours_or_warnings)

  def emit(self, record: logging.LogRecord) -> None:
    self._file.write(self.format(record) + "\n")
    self._file.flush()

  def line(self, text: str) -> None:
    """Writes `text` as an INFO record to the file only (the console has its own copy)."""
    self.emit(logging.LogRecord("sr2", logging.INFO, "", 0, text, None, None))

  def close(self) -> None:
    self._file.close()
    super().close()


def log_to_stdout() -> None:
  """absl logging to stdout (an entry point's choice; absl's default is stderr): sr2's own
  records from INFO, other libraries' from WARNING."""
  from absl import logging as absl_logging

  handler = absl_logging.get_absl_handler()
  handler.python_handler.stream = sys.stdout
  if _ours_or_warnings not in handler.filters:
    handler.addFilter(_ours_or_warnings)
  absl_logging.set_verbosity(absl_logging.INFO)


def log_to_file(workdir: files.PathLike) -> _LogFile:
  """Sends absl's logging (INFO and up) to `workdir/train.log` as well; returns the handler.

  A process logs to one run's file at a time: this replaces the handler an earlier run in
  the same process added (one that ended by an exception, say). `stop_logging` ends it.
  """
  from absl import logging as absl_logging

  logger = absl_logging.get_absl_logger()
  for old in [h for h in logger.handlers if isinstance(h, _LogFile)]:
    stop_logging(old)
  files.path(workdir).mkdir(parents=True, exist_ok=True)
  handler = _LogFile(files.path(workdir) / LOG)
  handler.setLevel(logging.INFO)
  logger.addHandler(handler)
  if logger.getEffectiveLevel() > logging.INFO:
    absl_logging.set_verbosity(absl_logging.INFO)
  return handler


def stop_logging(handler: logging.Handler) -> None:
  """Detaches `handler` from absl's logger and closes its file."""
  from absl import logging as absl_logging

  absl_logging.get_absl_logger().removeHandler(handler)
  handler.close()


def drop_rows_after(path: files.PathLike, step: int) -> None:
  """On resume: forget metric lines of steps the restored checkpoint does not include."""
  path = files.path(path)
  if not path.exists():
    return
  keep = []
  for line in path.read_text(encoding="utf-8").splitlines():
    try:
      row = json.loads(line)
    except json.JSONDecodeError:
      continue  # a line cut by a killed process
    if row.get("phase") == "sft" or row.get("step", 0) <= step:
      keep.append(line)
  path.write_text("".join(x + "\n" for x in keep), encoding="utf-8")
