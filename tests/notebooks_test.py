"""Notebooks: valid JSON whose code cells compile; the slow test runs them end to end."""

import json
import pathlib

import pytest

NOTEBOOKS = sorted((pathlib.Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))


def _code_cells(path):
  nb = json.loads(path.read_text(encoding="utf-8"))
  assert nb["nbformat"] == 4
  return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_cells_compile(path):
  cells = _code_cells(path)
  assert cells
  for i, src in enumerate(cells):
    compile(src, f"{path.name}[{i}]", "exec")


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_cells_run(path):
  namespace: dict = {}
  for i, src in enumerate(_code_cells(path)):
    exec(compile(src, f"{path.name}[{i}]", "exec"), namespace)
