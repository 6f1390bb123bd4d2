"""Ahead-of-time compilation of a training step's programs for a TPU slice, on any host.

`compile_programs(config, "v5p-16")` lowers and compiles, one at a time, the jitted
programs one GRPO step of `config` runs, at the config's real shapes and with the run's
shardings, for the devices libtpu describes for the slice (sr2/parallel/topology.py; no
TPU needed, only libtpu). Nothing is loaded (no weights, data or tokenizer: the model's
shape comes from the config, `model_config`) and nothing runs; each program yields one
record of XLA's per-chip memory and FLOP counts:

  program, topology, chips, mesh, shape   what was compiled, where, at which sizes
  argument_bytes, output_bytes, temp_bytes, alias_bytes
                                          XLA's buffer assignment per chip (alias: outputs
                                          that reuse donated arguments)
  peak_bytes                              argument + output + temp - alias
  hbm_bytes, fits                         the chip's HBM (topology.GENERATIONS); peak <= HBM
  flops, bytes_accessed                   XLA's cost analysis of one chip's program
  roofline_s                              max(flops / peak FLOP/s, bytes / HBM bandwidth)
  has_loops                               the program has loops (see below)
  compile_s                               lower + compile wall time on this host

When XLA itself refuses a program (it needs more HBM than the chip has) the record has
fits False, the error text, and None for the numbers. The memory is that of one program
alone: buffers that outlive it (the reference params during the update, the sampler's
state during the update) are not in it. XLA keeps some HBM for itself, so a program can
fail a little under `hbm_bytes`. XLA's cost analysis counts the body of every loop once,
whatever its trip count (checked: a `lax.scan` of 4 matmuls counts as 1), so where
`has_loops` is true flops, bytes and roofline are per iteration, not per call: `decode`'s
are one token step, the update's one micro-batch (of one mini-batch), and with
`model.scan_layers` the layers' share is one layer's.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sr2.agent import scoring
from sr2.aot.plan import EOS_IDS, PROGRAMS, SCORE_CHUNK, SLICE_PROGRAMS, Plan, make_plan, slice_mesh
from sr2.models import transformer
from sr2.parallel import AxisRules, hosts
from sr2.parallel import topology as topology_lib
from sr2.rl import update
from sr2.sampling import kernels
from sr2.sampling import stops as stops_lib
from sr2.sampling.methods import Temperature
from sr2.sampling.state import SamplingConfig, SamplingState, bucket

_OOM_MARKERS = ("RESOURCE_EXHAUSTED", "exceeds available HBM", "Ran out of memory")


def _sds(shape, dtype, sharding) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(tuple(shape), dtype, sharding=sharding)


def _with_shardings(shapes, shardings):
  return jax.tree.map(lambda s, sh: _sds(s.shape, s.dtype, sh), shapes, shardings)


class _Inputs:
  """Abstract (shape, dtype, sharding) arguments of the programs on one mesh."""

  def __init__(self, plan: Plan, mesh: Mesh, rules: AxisRules | None = None):
    self.plan, self.mesh, self.rules = plan, mesh, rules or AxisRules()
    self.replicated = NamedSharding(mesh, PartitionSpec())
    self.shardings = update.make_shardings(
      plan.model, plan.optimizer, mesh, self.rules, batch_rows=plan.update_rows
    )
    shapes = jax.eval_shape(lambda: transformer.init_params(plan.model, jax.random.key(0)))
    self.params = _with_shardings(shapes, self.shardings.params)
    opt_shapes = jax.eval_shape(plan.optimizer.init, shapes)
    self.opt_state = _with_shardings(opt_shapes, self.shardings.opt_state)
    key = jax.eval_shape(lambda: jax.random.key(0))
    self.key = _sds(key.shape, key.dtype, self.replicated)

  def array(self, shape, dtype, axes) -> jax.ShapeDtypeStruct:
    """An array laid out by its logical `axes` (None: replicated dim)."""
    return _sds(shape, dtype, NamedSharding(self.mesh, self.rules.spec(axes, shape, self.mesh)))

  def rows(self, rows: int, *rest: int, dtype=jnp.int32) -> jax.ShapeDtypeStruct:
    """[rows, *rest], rows over the batch axes."""
    return self.array((rows, *rest), dtype, ("batch",) + (None,) * len(rest))

  def batch(self) -> dict:
    rows, t = self.plan.update_rows, self.plan.rl.max_len
    specs = dict(
      tokens=((rows, t), jnp.int32),
      mask=((rows, t - 1), jnp.int32),
      old_logp=((rows, t - 1), jnp.float32),
      ref_logp=((rows, t - 1), jnp.float32),
      adv=((rows,), jnp.float32),
    )
    return {k: _sds(s, d, self.shardings.batch[k]) for k, (s, d) in specs.items()}

  def state(self, n_stop: int) -> SamplingState:
    """An abstract SamplingState of `rollout_rows` rows of `rl.max_len` tokens."""
    plan = self.plan
    b, cap = plan.rollout_rows, plan.rl.max_len
    cache = jax.eval_shape(lambda: transformer.init_cache(plan.model, b, cap))
    axes = transformer.CACHE_AXES
    return SamplingState(
      tokens=self.array((b, cap), jnp.int32, ("batch", "seq")),
      logprobs=self.array((b, cap), jnp.float32, ("batch", "seq")),
      lengths=self.rows(b),
      turn_start=self.rows(b),
      done=self.rows(b, dtype=jnp.bool_),
      finish=self.rows(b),
      stop_state=self.rows(b, n_stop),
      cache=jax.tree.map(lambda s: self.array(s.shape, s.dtype, axes), cache),
      rng=self.rows(b, dtype=self.key.dtype),  # one key per row
    )


# --------------------------------------------------------------------------- compiling


# The fields `_record` reads off a compiled program, in record order; a program XLA refuses
# has None for each but `hbm_bytes` and `fits`.
_RECORD_FIELDS = (
  "argument_bytes",
  "output_bytes",
  "temp_bytes",
  "alias_bytes",
  "peak_bytes",
  "hbm_bytes",
  "fits",
  "flops",
  "bytes_accessed",
  "roofline_s",
  "has_loops",
)


def _record(compiled, hbm: int, gen: topology_lib.Generation) -> dict:
  m = compiled.memory_analysis()
  mem = dict(
    argument_bytes=int(m.argument_size_in_bytes),
    output_bytes=int(m.output_size_in_bytes),
    temp_bytes=int(m.temp_size_in_bytes),
    alias_bytes=int(m.alias_size_in_bytes),
  )
  peak = mem["argument_bytes"] + mem["output_bytes"] + mem["temp_bytes"] - mem["alias_bytes"]
  cost = compiled.cost_analysis()
  cost = (cost[0] if cost else {}) if isinstance(cost, list | tuple) else (cost or {})
  flops, accessed = cost.get("flops"), cost.get("bytes accessed")
  roofline = None
  if flops is not None and accessed is not None:
    roofline = max(flops / gen.peak_flops, accessed / gen.hbm_bandwidth)
  return dict(
    **mem,
    peak_bytes=peak,
    hbm_bytes=hbm,
    fits=peak <= hbm,
    flops=flops,
    bytes_accessed=accessed,
    roofline_s=roofline,
    has_loops=" while(" in compiled.as_text(),
  )


def _is_oom(e: Exception) -> bool:
  return any(marker in str(e) for marker in _OOM_MARKERS)


def compile_program(
  fn, args: Sequence, *, out_shardings=None, donate_argnums=(), topo: topology_lib.Topology
) -> dict:
  """Lowers and compiles `jit(fn)` at abstract `args`; the memory/FLOPs record, or fits
  False with the error when XLA runs out of HBM (any other error propagates)."""
  t0 = time.perf_counter()
  jitted = jax.jit(fn, out_shardings=out_shardings, donate_argnums=donate_argnums)
  try:
    compiled = jitted.lower(*args).compile()
  except Exception as e:  # XLA raises JaxRuntimeError (or XlaRuntimeError) for OOM
    if not _is_oom(e):
      raise
    refused = dict(hbm_bytes=topo.hbm_bytes, fits=False, error=str(e).strip()[:2000])
    record = {**dict.fromkeys(_RECORD_FIELDS), **refused}
  else:
    record = _record(compiled, topo.hbm_bytes, topo.generation)
  return {**record, "compile_s": round(time.perf_counter() - t0, 2)}


def _program(name: str, plan: Plan, x: _Inputs):
  """(fn, abstract args, out_shardings, donate_argnums, shape) of program `name`."""
  model, rl, cap = plan.model, plan.rl, plan.rl.max_len
  b = plan.rollout_rows
  if name == "update":
    fn = functools.partial(update.update_step, model, plan.grpo, plan.optimizer)
    sh = x.shardings
    args = (x.params, x.opt_state, x.batch(), x.key)
    return fn, args, (sh.params, sh.opt_state, None), (0, 1), dict(rows=plan.update_rows, T=cap)
  if name == "reference_logprobs":
    chunk, micro = plan.grpo.logprob_chunk or None, plan.grpo.micro_batch_rows or None
    fn = lambda params, tokens: update.reference_logprobs(model, params, tokens, chunk, micro)
    tokens = x.batch()["tokens"]
    out = x.shardings.batch["ref_logp"]
    return fn, (x.params, tokens), out, (), dict(rows=plan.update_rows, T=cap)
  if name == "judge":
    rows = plan.refiner.judge_rows or rl.prompts_per_step * plan.grpo.group_size
    length = bucket(plan.refiner.max_prompt_tokens, scoring.JUDGE_BUCKETS)
    choices = plan.rollout.max_turns + 1
    fn = functools.partial(scoring._next_token_logprobs, model)
    args = (x.params, x.rows(rows, length), x.rows(rows), x.rows(rows, choices))
    return fn, args, None, (), dict(rows=rows, T=length, choices=choices)
  sampling = SamplingConfig(max_len=cap, method=Temperature(rl.temperature), logprobs="raw")
  state = x.state(len(sampling.stop_strings))
  state_out = jax.tree.map(lambda s: s.sharding, state)
  shape = dict(rows=b, capacity=cap)
  if name == "extend":
    c = plan.prefill_tokens
    fn = functools.partial(kernels.extend, model, c)
    args = (x.params, state, x.rows(b, c), x.rows(b))
    return fn, args, state_out, (1,), {**shape, "chunk": c, "span": c}
  if name == "decode":
    # The automaton's shapes depend on the stop strings and the vocabulary, not the tokens.
    stops = stops_lib.build_stop_tables([b""] * model.vocab_size, sampling.stop_strings)
    table, lengths = stops.next_state.shape, stops.lengths.shape
    fn = functools.partial(kernels.decode, model, sampling, cap)
    args = (
      x.params,
      state,
      _sds((), jnp.int32, x.replicated),
      _sds(table, jnp.int32, x.replicated),
      _sds(lengths, jnp.int32, x.replicated),
      _sds((EOS_IDS,), jnp.int32, x.replicated),
    )
    shape = {**shape, "span": cap, "max_new": plan.rollout.max_turn_tokens}
    return fn, args, state_out, (1,), shape
  if name == "truncate":
    args = (state, x.rows(b), x.rows(b, dtype=jnp.bool_))
    return kernels.truncate, args, state_out, (0,), shape
  if name == "score_after":
    k = -(-(plan.rollout.max_turns + 1) // 8) * 8  # the sampler pads choices to 8s
    fn = functools.partial(kernels.score_after, model, cap)
    args = (x.params, state, x.rows(b, SCORE_CHUNK), x.rows(b), x.rows(b, k))
    return fn, args, (state_out, None), (1,), {**shape, "chunk": SCORE_CHUNK, "span": cap}
  raise ValueError(f"unknown program {name!r}; expected one of {PROGRAMS}")


def compile_programs(
  config,
  topology: str,
  programs: Sequence[str] | None = None,
  rollout_rows: int | None = None,
  prefill_tokens: int | None = None,
) -> Iterator[dict]:
  """Compiles `programs` (default: those a step of `config` runs) for the slice `topology`.

  Yields one record per program as it is compiled (see the module docstring); configs,
  names and sizes are checked before anything compiles.

  Args:
    config: a training config (configs/*.py), e.g. `configs/search_r2.py:qwen2.5-7b,search_r2`.
    topology: a TPU slice name (`topology.parse_topology`): "v5p-16", "v5e:2x2".
    programs: names from PROGRAMS.
    rollout_rows: rows of the rollout programs (default: `config.rollout.batch_rows` if
      the config has it, else B*G, the whole step's rollouts, as the loop samples them).
    prefill_tokens: the prompt chunk of `extend` (default 4096, capped at rl.max_len).
  """
  topo = topology_lib.parse_topology(topology)
  plan = make_plan(config, rollout_rows, prefill_tokens)
  programs = tuple(programs or plan.programs)
  unknown = [p for p in programs if p not in PROGRAMS]
  if unknown:
    raise ValueError(f"unknown programs {unknown}; expected some of {PROGRAMS}")
  plan.mesh.resolve(topo.chips)  # a mesh that does not fit the slice fails before libtpu
  mesh = slice_mesh(topology_lib.slice_devices(topo), plan.mesh)
  # The update and the reference run over the whole slice; rollouts (and the refiner's
  # judgement) run on each host's own chips, as the training loop runs them.
  host = hosts.local_mesh(mesh, process=0)
  n_hosts = len({d.process_index for d in mesh.devices.flat})
  inputs = {"slice": _Inputs(plan, mesh), "host": _Inputs(plan, host)}
  for name in programs:
    where = "slice" if name in SLICE_PROGRAMS else "host"
    m = inputs[where].mesh
    fn, args, out, donate, shape = _program(name, plan, inputs[where])
    with jax.set_mesh(m):  # the model's activation constraints read it
      record = compile_program(fn, args, out_shardings=out, donate_argnums=donate, topo=topo)
    info = dict(topology=topo.name, chips=topo.chips, hosts=n_hosts, runs_on=where)
    info["mesh"] = dict(m.shape)
    yield {"program": name, **info, "shape": shape, **record}


def not_fitting(records: Sequence[dict]) -> list[str]:
  """Names of the programs whose record does not fit."""
  return [r["program"] for r in records if not r["fits"]]


def gib(n: float | None) -> str:
  """Bytes as GiB for messages."""
  return "?" if n is None else f"{n / 2**30:.2f} GiB"
