"""The sampler's state laid out over 4 fake CPU devices: rows split across devices, the
same tokens as one device.

Fake devices must be configured before jax starts, so the work runs in a subprocess.
"""

import os
import subprocess
import sys
import textwrap

_SCRIPT = textwrap.dedent(
  """
  import jax, jax.numpy as jnp, numpy as np
  from sr2 import models
  from sr2.parallel import MeshConfig, make_mesh, tree_shardings, AxisRules
  from sr2.sampling import Sampler, SamplingConfig, Temperature
  from sr2.sampling import sampler as sampler_lib
  assert len(jax.devices()) == 4
  c = models.preset("tiny", n_heads=4, n_kv_heads=2)
  params = models.init_params(c, jax.random.key(0))
  rng = np.random.default_rng(0)
  prompts = [rng.integers(0, c.vocab_size, n).tolist() for n in (5, 9, 3, 12, 7, 4, 10, 6)]
  cfg = SamplingConfig(max_len=64, method=Temperature(1.0), stop_strings=(), stop_on_eos=False)

  def run(sampler, p):
    st = sampler.prefill(p, prompts, jax.random.key(3))
    st = sampler.decode(p, st, 12)
    st = sampler.truncate(st, [1, 6], [11, 8])
    st = sampler.append(p, st, [1, 6], [[7, 8, 9], [4]])
    return sampler.decode(p, st, 10)

  one = run(Sampler(c, None, cfg), params)
  for mesh_cfg in (MeshConfig(data=4), MeshConfig(data=2, fsdp=2), MeshConfig(data=2, tensor=2)):
    mesh = make_mesh(mesh_cfg)
    sharded = Sampler(c, None, cfg, mesh=mesh)
    p = jax.device_put(params, tree_shardings(models.param_axes(c), params, mesh, AxisRules()))
    st = run(sharded, p)
    want = sharded.state_shardings(8)
    for name in ("tokens", "logprobs", "lengths", "done", "rng"):
      got = getattr(st, name).sharding
      assert got.is_equivalent_to(getattr(want, name), getattr(st, name).ndim), (name, got)
    assert st.cache[0]["k"].sharding.is_equivalent_to(want.cache[0]["k"], 4)
    rows_per_device = {s.data.shape[0] for s in st.tokens.addressable_shards}
    assert rows_per_device == {8 // (mesh_cfg.data * mesh_cfg.fsdp)}, rows_per_device
    kv = {s.data.shape for s in st.cache[0]["k"].addressable_shards}
    np.testing.assert_array_equal(np.asarray(st.tokens), np.asarray(one.tokens))
    np.testing.assert_array_equal(np.asarray(st.lengths), np.asarray(one.lengths))
    np.testing.assert_allclose(np.asarray(st.logprobs), np.asarray(one.logprobs), atol=1e-5)
    print(mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.tensor, "ok", sorted(kv))
  """
)


def test_sharded_rollout_state_decodes_as_one_device():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = [x for x in proc.stdout.splitlines() if " ok " in x]
  assert len(lines) == 3, proc.stdout
  # KV heads split over tensor=2 where they divide: the third mesh's shards hold 1 of 2 heads.
  assert "(4, 64, 1," in lines[2], lines[2]
