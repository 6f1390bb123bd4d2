"""Workdirs and data paths in an object store (gs://), against an in-memory fake of GCS.

The fake is an fsspec memory file system registered for the gs/gcs protocols, as
etils.epath reaches GCS through fsspec. Like GCS it cannot append to or edit an object, so
a write that tries fails the test. Orbax's own gs:// support (tensorstore's GCS driver) is
not faked: the training run below keeps its checkpoints on the local disk.
"""

import json
import os
import pathlib
import sys

import fsspec
import numpy as np
import pytest
from etils.epath import gpath
from fsspec.implementations.memory import MemoryFileSystem

from sr2 import files
from sr2.data.examples import read_qa_jsonl
from sr2.train import samples
from sr2.train.metrics import MetricWriter, plot_curves, read_metrics

CONFIGS = pathlib.Path(__file__).parents[1] / "configs"


class _FakeGCS(MemoryFileSystem):
  """GCS as fsspec sees it, in memory, and refusing what GCS refuses (appends)."""

  protocol = ("gs", "gcs")
  store: dict = {}
  pseudo_dirs = [""]

  def __init__(self, *args, finalize_on_close=None, **kwargs):
    del finalize_on_close  # gcsfs's option, which epath passes
    super().__init__(*args, **kwargs)

  @classmethod
  def _strip_protocol(cls, path):
    path = fsspec.utils.stringify_path(path)
    for prefix in ("gs://", "gcs://"):
      if path.startswith(prefix):
        path = path[len(prefix) :]
    return "/" + path.strip("/")

  def _open(self, path, mode="rb", **kwargs):
    if "a" in mode or "+" in mode:
      raise OSError(f"GCS objects cannot be appended to or edited: {path} ({mode})")
    return super()._open(path, mode, **kwargs)


@pytest.fixture
def gcs(monkeypatch, tmp_path):
  """An empty fake GCS behind epath's gs:// paths; the test runs in an empty cwd."""
  _FakeGCS.store, _FakeGCS.pseudo_dirs = {}, [""]
  for protocol in _FakeGCS.protocol:  # undone after the test
    monkeypatch.setitem(sys.modules["fsspec.registry"]._registry, protocol, _FakeGCS)
  backend = gpath._PREFIX_TO_BACKEND["gs"]
  type(backend)._get_filesystem.cache_clear()
  _FakeGCS.clear_instance_cache()
  monkeypatch.chdir(tmp_path)
  yield _FakeGCS.store
  type(backend)._get_filesystem.cache_clear()
  assert not os.path.exists(tmp_path / "gs:"), "a gs:// path became a local folder"


def test_paths_keep_their_scheme():
  assert os.fspath(files.path("gs://b/run") / "metrics.jsonl") == "gs://b/run/metrics.jsonl"
  assert files.is_remote("gs://b/x") and not files.is_remote("/tmp/x")
  assert os.fspath(files.resolve("gs://b/data", "/repo")) == "gs://b/data"
  assert os.fspath(files.resolve("/abs/data", "/repo")) == "/abs/data"
  assert os.fspath(files.resolve("data", "/repo")) == "/repo/data"


def test_metric_writer_on_gcs_rewrites_and_resumes(gcs):
  with MetricWriter("gs://b/run", console=False) as w:
    w.write("rl", 1, {"reward": 0.5})
    # Readable after each row, though the object is never appended to.
    assert [r["step"] for r in read_metrics("gs://b/run/metrics.jsonl")] == [1]
    w.write("rl", 2, {"reward": np.float32(0.75)})
  with MetricWriter("gs://b/run", console=False) as w:  # a resumed run adds to the rows
    w.write("rl", 3, {"reward": float("nan")})
  rows = read_metrics("gs://b/run/metrics.jsonl")
  assert [r["step"] for r in rows] == [1, 2, 3] and rows[1]["reward"] == 0.75
  events = files.path("gs://b/run/tensorboard").glob("*tfevents*")
  sizes = sorted(p.stat().length for p in files.path("gs://b/run/tensorboard").iterdir())
  assert len(list(events)) == 2 and all(n > 0 for n in sizes), sizes


def test_metric_writer_on_gcs_mends_a_cut_last_line(gcs):
  files.path("gs://b/run").mkdir(parents=True)
  cut = json.dumps({"phase": "rl", "step": 1, "reward": 1.0}) + "\n" + '{"phase": "rl", "st'
  files.path("gs://b/run/metrics.jsonl").write_text(cut)
  with pytest.warns(UserWarning, match="truncated last line"):
    w = MetricWriter("gs://b/run", console=False, tensorboard=False)
  w.write("rl", 2, {"reward": 0.0})
  w.close()
  assert [r["step"] for r in read_metrics("gs://b/run/metrics.jsonl")] == [1, 2]


def test_curves_samples_and_qa_files_on_gcs(gcs):
  rows = [{"phase": "rl", "step": s, "reward": s / 2} for s in (1, 2)]
  assert plot_curves(rows, "gs://b/run/curves.png") == ["rl reward"]
  assert files.path("gs://b/run/curves.png").read_bytes()[:4] == b"\x89PNG"
  out = samples.write_step("gs://b/run", 3, [{"row": 1, "a": 2}, {"row": 0, "a": 1}])
  assert os.fspath(out) == "gs://b/run/trajectories/step_3.jsonl"
  assert [json.loads(x)["row"] for x in out.read_text().splitlines()] == [0, 1]

  qa = {"id": "q1", "question": "who?", "golden_answers": ["Ada"]}
  files.path("gs://b/data/qa/x").mkdir(parents=True)
  files.path("gs://b/data/qa/x/dev.jsonl").write_text(json.dumps(qa) + "\n")
  (ex,) = read_qa_jsonl("gs://b/data/qa/x/dev.jsonl")
  assert ex.golden_answers == ("Ada",) or list(ex.golden_answers) == ["Ada"]
  with pytest.raises(ValueError, match="gs://b/data/qa/x/train.jsonl"):
    read_qa_jsonl("gs://b/data/qa/x/train.jsonl")


def test_local_copy_and_local_dir_round_trip(gcs, tmp_path):
  with files.local_dir("gs://b/tok") as folder:
    pathlib.Path(folder, "a.json").write_text("{}")
    pathlib.Path(folder, "sub").mkdir()
    pathlib.Path(folder, "sub", "b.txt").write_text("b")
  assert files.path("gs://b/tok/sub/b.txt").read_text() == "b"
  local = files.local_copy("gs://b/tok")
  assert pathlib.Path(local, "a.json").read_text() == "{}"
  assert pathlib.Path(local, "sub", "b.txt").read_text() == "b"
  assert files.local_copy(tmp_path) == os.fspath(tmp_path)  # a local path is its own copy


def test_training_run_writes_its_workdir_to_gcs(gcs, monkeypatch, tmp_path):
  """The smoke job with a gs:// workdir: every file sr2 itself writes lands in the bucket."""
  from sr2 import checkpoint
  from sr2.configlib import load_config_file
  from sr2.train import loop

  class LocalCheckpoints(checkpoint.Checkpointer):
    def __init__(self, workdir, **kwargs):
      name = os.fspath(workdir)
      super().__init__(tmp_path / "ckpt" / name.split("://")[-1], **kwargs)

  monkeypatch.setattr(loop.checkpoint, "Checkpointer", LocalCheckpoints)
  c = load_config_file(CONFIGS / "tiny_world.py", "smoke")
  c.rl.steps = 1
  c.rl.trajectories_every = 1
  summary = loop.train_and_evaluate(c, "gs://b/run")
  run = files.path("gs://b/run")
  assert json.loads((run / "summary.json").read_text()) == summary
  phases = [r["phase"] for r in read_metrics(run / "metrics.jsonl")]
  assert "sft" in phases and phases.count("rl") == 1
  assert (run / "curves.png").exists() and (run / "trajectories" / "step_1.jsonl").exists()
  assert (run / "tokenizer").is_dir() and list((run / "tokenizer").iterdir())
  assert list((run / "tensorboard").glob("*tfevents*"))
