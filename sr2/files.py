"""Paths that are local or in an object store (gs://, s3://), through etils.epath.

A run's workdir and data paths may be either. `pathlib.Path("gs://b/run")` would quietly
become a local folder "gs:/b/run"; `path()` keeps the scheme. Object stores cannot append to
or edit an object in place, so what sr2 appends to (metrics.jsonl, TensorBoard events) goes
through `AppendFile`, which appends locally and rewrites the whole object remotely at each
flush. Those files stay small (one line per logged step), so a rewrite costs little.
Libraries that only write local folders (a tokenizer's `save_pretrained`) go through
`local_dir`, which writes to a temporary folder and copies it up.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
from collections.abc import Iterator

from etils import epath

PathLike = str | os.PathLike


def path(p: PathLike) -> epath.Path:
  """`p` as an epath.Path (a gs:// or s3:// address keeps its scheme)."""
  return epath.Path(p)


def is_remote(p: PathLike) -> bool:
  """Whether `p` names an object store (has a URL scheme) rather than the local disk."""
  return "://" in os.fspath(p)


def resolve(p: PathLike, root: PathLike) -> epath.Path:
  """`p` itself when it is absolute or remote, else `root / p`."""
  q = path(p)
  return q if is_remote(p) or os.path.isabs(os.fspath(p)) else path(root) / os.fspath(p)


class AppendFile:
  """A file opened for appending, on a local disk or in an object store.

  Locally it is a plain append-mode file. Remotely it holds the object's contents in memory
  and writes the whole object at every `flush()` (and at `close()`), since objects cannot be
  appended to; a reader sees everything up to the last flush. `binary` takes bytes
  (TensorBoard's event records) instead of text.
  """

  def __init__(self, p: PathLike, binary: bool = False):
    self.path = path(p)
    self._local = not is_remote(p)
    self._closed = False
    if self._local:
      mode, encoding = ("ab", None) if binary else ("a", "utf-8")
      self._file = open(os.fspath(p), mode, encoding=encoding)  # noqa: SIM115 (see close())
    else:
      self._buffer = io.BytesIO() if binary else io.StringIO()
      if self.path.exists():
        self._buffer.write(self.path.read_bytes() if binary else self.path.read_text("utf-8"))
      self._dirty = True  # the object exists after the first flush, even if empty

  @property
  def closed(self) -> bool:
    return self._closed

  def write(self, data: str | bytes) -> None:
    if self._local:
      self._file.write(data)
    else:
      self._buffer.write(data)
      self._dirty = True

  def flush(self) -> None:
    if self._local:
      self._file.flush()
    elif self._dirty:
      data = self._buffer.getvalue()
      with self.path.open("wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode("utf-8"))
      self._dirty = False

  def close(self) -> None:
    if self._closed:
      return
    self.flush()
    if self._local:
      self._file.close()
    self._closed = True


class _EpathEventFiles:
  """A tensorboardX writer factory that writes its event files through epath."""

  def open(self, p: str) -> AppendFile:
    return AppendFile(p, binary=True)

  def directory_check(self, p: str) -> None:
    path(p).mkdir(parents=True, exist_ok=True)


def tensorboard_logdir(logdir: PathLike) -> str:
  """`logdir` as tensorboardX's SummaryWriter takes it, with object stores written through epath.

  tensorboardX's own gs:// and s3:// writers need google-cloud-storage or boto3; this
  registers an epath one for the scheme instead (a process-wide registration, idempotent).
  """
  name = os.fspath(logdir)
  if is_remote(name):
    from tensorboardX import record_writer

    record_writer.register_writer_factory(name.split(":")[0], _EpathEventFiles())
  return name


@contextlib.contextmanager
def local_dir(p: PathLike) -> Iterator[str]:
  """A local folder to write `p`'s files into; for a remote `p`, copied up on exit."""
  if not is_remote(p):
    os.makedirs(os.fspath(p), exist_ok=True)
    yield os.fspath(p)
    return
  with tempfile.TemporaryDirectory(prefix="sr2-upload-") as tmp:
    yield tmp
    copy_tree(tmp, p)


def copy_tree(src: PathLike, dst: PathLike) -> None:
  """Copies the folder `src` (local or remote) into `dst` (local or remote), file by file."""
  src, dst = path(src), path(dst)
  dst.mkdir(parents=True, exist_ok=True)
  for child in src.iterdir():
    if child.is_dir():
      copy_tree(child, dst / child.name)
    else:
      with child.open("rb") as fin, (dst / child.name).open("wb") as fout:
        shutil.copyfileobj(fin, fout)


def local_copy(p: PathLike) -> str:
  """A local path with `p`'s contents: `p` itself when local, else a cached download.

  For what must be a local file or folder, e.g. a memory-mapped BM25 index. A remote folder
  is copied once to `$TMPDIR/sr2-remote/<bucket>/<path>`, and reused while that copy exists
  (a copy is complete once its marker file is written).
  """
  if not is_remote(p):
    return os.fspath(p)
  name = os.fspath(p)
  local = os.path.join(tempfile.gettempdir(), "sr2-remote", name.split("://", 1)[1].strip("/"))
  done = local + ".complete"
  if not os.path.exists(done):
    src = path(p)
    if src.is_dir():
      copy_tree(src, local)
    else:
      os.makedirs(os.path.dirname(local), exist_ok=True)
      with src.open("rb") as fin, open(local, "wb") as fout:
        shutil.copyfileobj(fin, fout)
    open(done, "w").close()
  return local
