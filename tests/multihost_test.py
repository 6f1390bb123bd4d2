"""Multi-process training through jax.distributed on 127.0.0.1, against one process.

Two processes x 2 fake CPU devices run `experiments/train.py` on the smoke config; one
process x 4 devices runs it too. The first GRPO step's rollouts (token for token), rewards
and metrics must be the same, its loss within 1e-4; a kill after the first checkpoint and
a restart of both processes must resume there; only process 0 writes the run's files.
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import textwrap
import time

import jax
import pytest

from sr2.parallel import hosts

ROOT = pathlib.Path(__file__).resolve().parents[1]
TRAIN = str(ROOT / "experiments" / "train.py")
CONFIG = [
  f"--config={ROOT}/configs/tiny_world.py:smoke",
  "--config.eval.limit=4",
  "--config.eval.dev_limit=4",
  "--config.eval.batch_size=4",
]
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
ROLLOUT = ("reward", "em", "process", "searches", "turns", "invalid_turns", "response_tokens")


def _port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(workdir, processes: int, devices: int, *extra) -> list[subprocess.Popen]:
  args = [sys.executable, TRAIN, *CONFIG, f"--workdir={workdir}", f"--cpu_devices={devices}"]
  if processes > 1:
    port = _port()
    args += [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={processes}"]
  logs = pathlib.Path(workdir).parent
  return [
    subprocess.Popen(
      args + ([f"--process_id={i}"] if processes > 1 else []) + list(extra),
      env=ENV,
      stdout=open(logs / f"{pathlib.Path(workdir).name}.{i}.log", "ab"),  # noqa: SIM115
      stderr=subprocess.STDOUT,
    )
    for i in range(processes)
  ]


def _wait(procs, timeout=900) -> None:
  for p in procs:
    assert p.wait(timeout=timeout) == 0, f"process exited with {p.returncode}"


def _rows(workdir) -> list[dict]:
  lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
  return [json.loads(x) for x in lines]


def _trajectories(workdir, step: int) -> list[dict]:
  path = pathlib.Path(workdir) / "trajectories" / f"step_{step}.jsonl"
  return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """(one process x 4 devices, two processes x 2 devices killed after step 1 and restarted,
  the pids of process 0 of each start)."""
  root = tmp_path_factory.mktemp("multihost")
  single, multi = root / "single", root / "multi"
  _wait(_launch(single, 1, 4))
  # Rollouts in chunks of 2 rows on two processes: must equal one call of 8 on one.
  procs = _launch(multi, 2, 2, "--config.rollout.batch_rows=2")
  first = multi / "checkpoints" / "1"
  deadline = time.monotonic() + 900
  while not first.is_dir() and time.monotonic() < deadline and procs[0].poll() is None:
    time.sleep(0.2)
  assert first.is_dir(), "no checkpoint of step 1 appeared"
  for p in procs:
    p.send_signal(signal.SIGKILL)
    p.wait()
  killed_rows = [r for r in _rows(multi) if r["phase"] == "rl"]
  again = _launch(multi, 2, 2, "--config.rollout.batch_rows=2")
  _wait(again)
  return single, multi, killed_rows, {procs[0].pid, again[0].pid}


def test_two_processes_equal_one_process(runs):
  single, multi, *_ = runs
  one = [r for r in _rows(single) if r["phase"] == "rl"][0]
  two = [r for r in _rows(multi) if r["phase"] == "rl"][0]
  for key in ROLLOUT:
    assert one[key] == two[key], key
  assert abs(one["loss"] - two["loss"]) <= 1e-4
  assert one["batch_rows"] == two["batch_rows"] and one["batch_len"] == two["batch_len"]
  a, b = _trajectories(single, 1), _trajectories(multi, 1)
  assert [r["row"] for r in a] == [r["row"] for r in b] == list(range(8))
  for x, y in zip(a, b, strict=True):
    assert x["response_ids"] == y["response_ids"] and x["reward"] == y["reward"]


def test_restart_resumes_from_the_last_checkpoint(runs):
  _, multi, killed_rows, _ = runs
  assert [r["step"] for r in killed_rows] == [1], "the kill was meant to land after step 1"
  rows = _rows(multi)
  assert [r["step"] for r in rows if r["phase"] == "rl"] == [1, 2]
  # The warm start ran once: SFT rows and the evaluation before RL are not repeated.
  assert len([r for r in rows if r["phase"] == "eval" and r["step"] == 0]) == 1
  summary = json.loads((multi / "summary.json").read_text())
  assert "em_after_rl" in summary and "em_before_rl" in summary


def test_only_process_0_writes(runs):
  _, multi, _, writer_pids = runs
  events = list((multi / "tensorboard").glob("*tfevents*"))
  assert events and {int(e.name.split(".")[-2]) for e in events} <= writer_pids
  steps = [r["step"] for r in _rows(multi) if r["phase"] == "rl"]
  assert len(steps) == len(set(steps))  # one metrics row per step


# --------------------------------------------------------------------------- bad input


def test_a_process_count_that_does_not_divide_the_prompts(monkeypatch):
  monkeypatch.setattr(jax, "process_count", lambda: 3)
  with pytest.raises(ValueError, match=r"rl.prompts_per_step=8 .* 3 processes .*--num_processes"):
    hosts.share(8, "rl.prompts_per_step")


def test_process_id_out_of_range_and_missing_flags():
  with pytest.raises(ValueError, match=r"--process_id=2 is out of range for --num_processes=2"):
    hosts.initialize("127.0.0.1:1", num_processes=2, process_id=2)
  with pytest.raises(ValueError, match="need --coordinator_address"):
    hosts.initialize(None, num_processes=2, process_id=1)


def test_an_unreachable_coordinator_times_out_naming_it():
  # In a child: jax.distributed may only be initialised once per process.
  code = (
    f"from sr2.parallel import hosts\nhosts.initialize('127.0.0.1:{_port()}', 2, 1, timeout_s=2)\n"
  )
  out = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True)
  assert out.returncode != 0
  assert "TimeoutError: --coordinator_address=127.0.0.1:" in out.stderr
  assert "nothing answered there within 2 s" in out.stderr


def test_a_mesh_that_does_not_match_the_devices(tmp_path):
  out = subprocess.run(
    [sys.executable, TRAIN, *CONFIG, f"--workdir={tmp_path}", "--cpu_devices=4"]
    + ["--config.mesh.data=3"],
    env=ENV,
    capture_output=True,
    text=True,
  )
  assert out.returncode != 0
  assert "config.mesh" in out.stderr and "needs 3 devices; 4 available" in out.stderr
  assert not (tmp_path / "checkpoints").exists()  # failed before anything ran


_LOCAL_PARAMS = textwrap.dedent(
  """
  import sys

  import jax
  import numpy as np
  from jax.sharding import NamedSharding, PartitionSpec as P

  from sr2.parallel import hosts
  from sr2.parallel.mesh import MeshConfig, make_mesh

  hosts.initialize(sys.argv[1], num_processes=2, process_id=int(sys.argv[2]), cpu_devices=2)
  host = {
    "w": np.arange(8 * 6, dtype=np.float32).reshape(8, 6),
    "b": np.arange(4, dtype=np.float32),
  }
  specs = {"w": P("fsdp", None), "b": P(None)}
  for config in (MeshConfig(data=1, fsdp=4), MeshConfig(data=2, fsdp=2)):
    mesh = make_mesh(config)
    shardings = {k: NamedSharding(mesh, specs[k]) for k in host}
    params = hosts.to_global(host, shardings)
    local = hosts.local_mesh(mesh)
    got = hosts.local_params(params, local)
    for k, x in got.items():
      assert x.sharding.mesh.devices.tolist() == local.devices.tolist(), (config, k)
      assert x.sharding.spec == specs[k], (config, k, x.sharding.spec)
      assert all(d.process_index == jax.process_index() for d in x.sharding.device_set)
      np.testing.assert_array_equal(np.asarray(x), host[k])
    # w over the local mesh's 2 devices along fsdp: each holds 4 of its 8 rows.
    assert {s.data.shape for s in got["w"].addressable_shards} == {(4, 6)}, config
    print(config, "ok", dict(local.shape), flush=True)
  """
)


def test_local_params_reshards_fsdp_across_hosts(tmp_path):
  """Params sharded over fsdp across both processes (the paper configs' mesh) and over data
  (a copy per process): each process gets the whole arrays, sharded over its own devices."""
  script = tmp_path / "local_params.py"
  script.write_text(_LOCAL_PARAMS)
  address = f"127.0.0.1:{_port()}"
  procs = [
    subprocess.Popen(
      [sys.executable, str(script), address, str(i)],
      env=ENV,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
    )
    for i in range(2)
  ]
  for p in procs:
    out = p.communicate(timeout=300)[0].decode()
    assert p.returncode == 0, out[-3000:]
    assert out.count(" ok ") == 2, out[-3000:]
