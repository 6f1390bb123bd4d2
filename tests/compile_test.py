"""Ahead-of-time compilation for TPU slices (sr2/aot, sr2/parallel/topology.py,
experiments/compile.py): slice names everywhere; compiles only where libtpu is installed."""

import dataclasses
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

from sr2 import aot
from sr2.configlib import ConfigError
from sr2.parallel import topology

ROOT = pathlib.Path(__file__).resolve().parents[1]
GiB = 2**30


def _config(path: str, arg: str):
  spec = importlib.util.spec_from_file_location("config_module", ROOT / "configs" / path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


# --------------------------------------------------------------------------- names (no libtpu)


@pytest.mark.parametrize(
  "name, explicit, chips",
  [
    ("v4-8", "v4:2x2x1", 4),
    ("v4-32", "v4:2x2x4", 16),
    ("v4-128", "v4:4x4x4", 64),
    ("v5p-8", "v5p:2x2x1", 4),
    ("v5p-16", "v5p:2x2x2", 8),
    ("v5p-64", "v5p:2x4x4", 32),
    ("v5e-1", "v5e:1x1", 1),
    ("v5e-8", "v5e:2x4", 8),
    ("v5e-16", "v5e:4x4", 16),
    ("v5litepod-256", "v5e:16x16", 256),
    ("v6e-8", "v6e:2x4", 8),
    ("v6e-32", "v6e:4x8", 32),
    ("v5p:2x2x1", "v5p:2x2x1", 4),
    ("V5E:2x2x1", "v5e:2x2", 4),
    ("v6e:3x2", "v6e:3x2", 6),
  ],
)
def test_slice_names(name, explicit, chips):
  t = topology.parse_topology(name)
  assert (t.name, t.chips) == (explicit, chips)
  assert topology.parse_topology(t.name) == t


def test_generation_facts():
  gens = topology.GENERATIONS
  assert gens["v5p"].hbm_bytes == 95 * GiB and gens["v5e"].hbm_bytes == 16 * GiB
  assert gens["v6e"].peak_flops == 918e12 and gens["v4"].hbm_bandwidth == 1.2e12
  assert topology.parse_topology("v5p-64").hbm_bytes == 95 * GiB


@pytest.mark.parametrize(
  "name", ["v5e-2", "v5e-512", "v4-4", "v5p-12", "v7-8", "tpu", "v5p:2x2", "v5e:2x2x2", "v4:0x2x2"]
)
def test_bad_slice_names_are_named(name):
  with pytest.raises(ValueError, match=repr(name).replace("[", r"\[")):
    topology.parse_topology(name)


def test_model_config_without_weights():
  assert aot.preset_name("/path/to/Qwen2.5-7B") == "qwen2.5-7b"
  assert aot.preset_name("/path/to/Qwen2.5-32B-Instruct") == "qwen2.5-32b"
  assert aot.preset_name("preset:qwen3-8b") == "qwen3-8b"
  with pytest.raises(ConfigError, match="no-such-model"):
    aot.preset_name("/models/no-such-model")
  model = aot.model_config(_config("search_r2.py", "qwen2.5-7b,search_r2"))
  assert (model.n_layers, model.d_model, model.vocab_size, model.dtype) == (
    28,
    3584,
    152064,
    "bfloat16",
  )
  tiny = aot.model_config(_config("tiny_world.py", "smoke"))
  assert (tiny.d_model, tiny.vocab_size) == (128, 1024)


def test_plan_sizes():
  plan = aot.make_plan(_config("search_r2.py", "qwen2.5-7b,search_r2"))
  assert plan.update_rows == 512 * 5 * 2  # B*G trajectories + one decision row each
  assert (plan.rollout_rows, plan.prefill_tokens) == (64, 4096)  # rollout.batch_rows per host
  assert plan.programs == ("update", "reference_logprobs", "extend", "decode", "truncate", "judge")
  smoke = aot.make_plan(_config("tiny_world.py", "smoke"), rollout_rows=4)
  assert (smoke.rollout_rows, smoke.prefill_tokens) == (4, 1024)  # capped at rl.max_len
  assert smoke.programs == ("update", "reference_logprobs", "extend", "decode")


# --------------------------------------------------------------------------- compiling (libtpu)


@pytest.fixture(scope="module")
def smoke_records():
  pytest.importorskip("libtpu", reason="compiling for a TPU slice needs libtpu (jax[tpu])")
  config = _config("tiny_world.py", "smoke")
  return list(aot.compile_programs(config, "v5e:2x2", aot.PROGRAMS))


def test_smoke_programs_fit_a_small_slice(smoke_records):
  assert [r["program"] for r in smoke_records] == list(aot.PROGRAMS)
  for r in smoke_records:
    assert (r["topology"], r["chips"], r["hbm_bytes"]) == ("v5e:2x2", 4, 16 * GiB), r
    assert r["mesh"] == {"data": 4, "fsdp": 1, "tensor": 1}, r
    assert r["argument_bytes"] > 0 and r["output_bytes"] > 0 and r["peak_bytes"] > 0, r
    assert r["temp_bytes"] >= 0 and r["flops"] > 0 and r["fits"], r
    total = r["argument_bytes"] + r["output_bytes"] + r["temp_bytes"] - r["alias_bytes"]
    assert r["peak_bytes"] == total, r
  by_name = {r["program"]: r for r in smoke_records}
  # Donated params / optimizer state / sampling state come back in place.
  for name in ("update", "extend", "decode", "truncate", "score_after"):
    assert by_name[name]["alias_bytes"] > 0, name
  assert by_name["decode"]["has_loops"]
  # The smoke's 8 update rows score in 2 passes of grpo.micro_batch_rows=4.
  assert by_name["reference_logprobs"]["has_loops"]


def test_oversized_program_does_not_fit():
  pytest.importorskip("libtpu", reason="compiling for a TPU slice needs libtpu (jax[tpu])")
  config = _config("tiny_world.py", "smoke")
  # 16384 rows x 1024 slots of KV cache: ~32 GiB on one 16 GiB v5e chip.
  (r,) = aot.compile_programs(config, "v5e-1", ["truncate"], rollout_rows=16384)
  assert r["program"] == "truncate" and r["fits"] is False
  assert "RESOURCE_EXHAUSTED" in r["error"] or r["peak_bytes"] > r["hbm_bytes"]
  assert aot.not_fitting([r]) == ["truncate"]


@pytest.mark.parametrize("scan", [False, True])
def test_remat_frees_the_blocks_activations_on_a_tpu(scan):
  """`model.remat="full"` keeps a fraction of the gradient's temporaries on one TPU chip,
  with the layers unrolled as well as scanned. (Unrolled, the recomputation must not be
  merged back into the forward pass: with `prevent_cse=False` there it kept them all.)"""
  pytest.importorskip("libtpu", reason="compiling for a TPU slice needs libtpu (jax[tpu])")
  import jax
  import jax.numpy as jnp
  import numpy as np

  from sr2.models import transformer
  from sr2.models.config import ModelConfig

  chip = jax.sharding.NamedSharding(
    jax.sharding.Mesh(np.array(topology.slice_devices("v5p:2x2x1")[:1]), ("x",)),
    jax.sharding.PartitionSpec(),
  )
  on_chip = lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=chip)
  temps = {}
  for remat in ("none", "full"):
    c = ModelConfig(
      vocab_size=512, d_model=256, d_ff=1024, n_layers=8, n_heads=4, n_kv_heads=4,
      scan_layers=scan, remat=remat,
    )  # fmt: skip
    params = jax.tree.map(
      on_chip, jax.eval_shape(lambda c=c: transformer.init_params(c, jax.random.key(0)))
    )
    tokens = on_chip(jax.ShapeDtypeStruct((2, 512), jnp.int32))
    loss = lambda p, t, c=c: transformer.forward(c, p, t).astype(jnp.float32).mean()
    compiled = jax.jit(jax.grad(loss)).lower(params, tokens).compile()
    temps[remat] = compiled.memory_analysis().temp_size_in_bytes
  assert temps["full"] < 0.4 * temps["none"], temps


def _run_cli(*args):
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  cmd = [sys.executable, str(ROOT / "experiments" / "compile.py"), *args]
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_cli_names_what_does_not_fit():
  pytest.importorskip("libtpu", reason="compiling for a TPU slice needs libtpu (jax[tpu])")
  args = ["--config", "configs/tiny_world.py:smoke", "--topology", "v5e-1"]
  proc = _run_cli(*args, "--programs", "truncate", "--rollout_rows", "16384")
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert len(proc.stdout.splitlines()) == 1, (proc.stdout, proc.stderr[-3000:])
  (line,) = proc.stdout.splitlines()
  assert json.loads(line)["program"] == "truncate"
  assert "does not fit" in proc.stderr and "truncate" in proc.stderr


def test_cli_needs_a_topology():
  proc = _run_cli("--config", "configs/tiny_world.py:smoke")
  assert proc.returncode != 0 and "--topology" in proc.stderr


# --------------------------------------------------------------------------- roofline (no libtpu)


def test_model_flops_by_hand():
  from sr2.aot import roofline

  tiny = aot.model_config(_config("tiny_world.py", "smoke"))
  d, h, k, dh, f, L, v = (
    tiny.d_model,
    tiny.n_heads,
    tiny.n_kv_heads,
    tiny.head_dim,
    tiny.d_ff,
    tiny.n_layers,
    tiny.vocab_size,
  )
  weights = L * (2 * d * h * dh + 2 * d * k * dh + 3 * d * f) + d * v
  assert roofline.matmul_params(tiny) == weights
  forward = 2 * weights + 4 * L * h * dh * 100 / 2  # 100 tokens: 50 keys on average
  assert roofline.model_flops_per_token(tiny, 100, train=False) == forward
  full = dataclasses.replace(tiny, remat="full")
  assert roofline.model_flops_per_token(full, 100, train=True) == 4 * forward
  assert roofline.model_flops_per_token(tiny, 100, train=True) == 3 * forward


def test_projection_adds_up_by_hand():
  from sr2.aot import roofline

  config = _config("search_r2.py", "tiny_world,search_r2")
  plan = aot.make_plan(config, rollout_rows=4)
  topo = topology.parse_topology("v5p:2x2x2")  # 8 chips, 2 hosts
  records = {
    "extend": {"roofline_s": 0.01},
    "decode": {"roofline_s": 0.001},
    "judge": {"roofline_s": 0.5, "shape": {"rows": 2}},
  }
  out = roofline.project(plan, topo, records, hosts=2, regenerated_turns=0.5)
  rows = plan.rl.prompts_per_step * plan.grpo.group_size
  chunks = -(-rows // 2 // 4)
  turn = plan.rollout.max_turn_tokens * 0.001 + 0.01
  assert out["chunks_per_host"] == chunks
  assert out["search_r1"]["rollout_s"] == round(chunks * plan.rollout.max_turns * turn, 4)
  assert out["search_r2"]["judge_s"] == round(-(-rows // 2 // 2) * 0.5, 4)
  assert out["search_r2"]["regenerate_s"] == round(0.5 * out["search_r1"]["rollout_s"], 4)
  peak = topo.generation.peak_flops * 8
  per_token = roofline.model_flops_per_token(plan.model, plan.rl.max_len, train=True)
  update = plan.grpo.ppo_epochs * rows * plan.rl.max_len * per_token / peak
  assert out["search_r1"]["update_s"] == round(update, 4)
  # Joint optimisation: the decision rows join the update (B·G x (1 + N_max) rows).
  assert plan.update_rows == rows * 2
  assert out["search_r2"]["update_s"] == round(2 * update, 4)
  assert out["overhead"] > 0 and out["projection"] is True
