"""Notebooks: clean, valid JSON whose code cells compile, with the install cell first; the
slow test executes each one in a real Jupyter kernel at smoke sizes."""

import json
import pathlib
import re
import sys
import time

import pytest

NOTEBOOKS = sorted((pathlib.Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT_S = 1200  # the smoke trainings take ~2.5 min alone; the CI cores are shared


def _cells(path):
  nb = json.loads(path.read_text(encoding="utf-8"))
  assert nb["nbformat"] == 4
  return nb["cells"]


def _code_cells(path):
  return ["".join(c["source"]) for c in _cells(path) if c["cell_type"] == "code"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_cells_compile(path):
  cells = _code_cells(path)
  assert cells
  for i, src in enumerate(cells):
    compile(src, f"{path.name}[{i}]", "exec")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path):
  for i, cell in enumerate(_cells(path)):
    if cell["cell_type"] == "code":
      assert cell["outputs"] == [], f"{path.name} cell {i} has outputs: clear them"
      assert cell["execution_count"] is None, f"{path.name} cell {i} has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_first_code_cell_installs_sr2(path):
  src = _code_cells(path)[0]
  # Installs only where sr2 is missing, from one pip source, keeping the runtime's jax.
  assert 'importlib.util.find_spec("sr2") is None' in src
  assert len(re.findall(r"^SR2_SOURCE = ", src, re.M)) == 1
  assert '[sys.executable, "-m", "pip", "install"]' in src and "!pip" not in src
  assert '"-c"' in src and "jaxlib" in src
  assert "SR2_NOTEBOOK_SMOKE" in src
  assert "git clone" not in src


# ---------------------------------------------------------------------------- execution


def _kernelspec(tmp_path, monkeypatch):
  """The name of a kernel on this interpreter (this venv's python), found through
  $JUPYTER_PATH ahead of any other "python3" kernelspec on the machine."""
  spec = tmp_path / "jupyter" / "kernels" / "sr2-test"
  spec.mkdir(parents=True)
  argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
  spec.joinpath("kernel.json").write_text(
    json.dumps({"argv": argv, "display_name": "sr2 test", "language": "python"})
  )
  monkeypatch.setenv("JUPYTER_PATH", str(spec.parents[1]))
  return spec.name


def _text(outputs):
  return "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")


def _failure(path, i, cell, error):
  outputs = cell.get("outputs", [])
  errors = [o for o in outputs if o.get("output_type") == "error"]
  if errors:
    what = f"{errors[0]['ename']}: {errors[0]['evalue']}\n" + "\n".join(errors[0]["traceback"])
  else:
    what = f"{type(error).__name__}: {error}"
  what = re.sub(r"\x1b\[[0-9;]*m", "", what)  # the traceback's colours
  stream = _text(outputs)[-3000:]
  head = f"{path.name}: cell {i} (counting from 0) failed"
  report = f"{head}\n--- source\n{cell['source']}\n--- error\n{what}"
  return report + (f"\n--- its printed output (end)\n{stream}" if stream else "")


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_in_a_kernel(path, tmp_path, monkeypatch):
  nbformat = pytest.importorskip("nbformat")
  nbclient = pytest.importorskip("nbclient")
  pytest.importorskip("ipykernel")
  monkeypatch.setenv("SR2_NOTEBOOK_SMOKE", "1")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("SR2_WORKDIR", str(tmp_path / "no_run"))  # no run there: a smoke run
  monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
  cwd = tmp_path / "cwd"  # nothing beside the kernel shadows the package or lands in the repo
  cwd.mkdir()
  nb = nbformat.read(path, as_version=4)
  nb.cells.insert(0, nbformat.v4.new_code_cell("import sys\nprint(sys.executable)"))
  client = nbclient.NotebookClient(
    nb,
    kernel_name=_kernelspec(tmp_path, monkeypatch),
    timeout=CELL_TIMEOUT_S,
    resources={"metadata": {"path": str(cwd)}},  # the kernel's working directory
  )
  start = time.perf_counter()
  with client.setup_kernel():
    client.execute_cell(nb.cells[0], 0)
    assert _text(nb.cells[0].outputs).strip() == sys.executable, "the kernel runs another Python"
    for i, cell in enumerate(nb.cells[1:], 1):
      if cell.cell_type != "code":
        continue
      failure = None
      try:
        client.execute_cell(cell, i)
      except Exception as e:  # CellExecutionError, CellTimeoutError, a dead kernel
        failure = _failure(path, i - 1, cell, e)
      if failure:  # outside the except: the report without the exception chain
        pytest.fail(failure, pytrace=False)
  print(f"{path.name}: executed in {time.perf_counter() - start:.1f} s")
  assert not list(cwd.iterdir()), "the notebook wrote into its working directory"
