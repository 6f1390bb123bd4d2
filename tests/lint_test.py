"""The tree passes `ruff check` and `ruff format --check` (config in pyproject.toml)."""

import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PATHS = ["sr2", "tests", "configs", "experiments", "notebooks", "setup.py"]


@pytest.mark.parametrize("args", [["check"], ["format", "--check"]], ids=["check", "format"])
def test_ruff(args):
  ruff = shutil.which("ruff")
  if ruff is None:
    pytest.skip("ruff is not installed (it comes with the [test] extra)")
  proc = subprocess.run([ruff, *args, *PATHS], cwd=ROOT, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
