"""One job over many processes: JAX's multi-controller runtime, as the training loop uses it.

Every process runs the same program on its own devices (a Cloud TPU VM host, a GPU node, or
N fake CPU devices here). The training loop splits each step this way:
  * rollouts are host work (parsing, BM25) around small jitted programs, so each process
    runs its own share of the step's prompts on its own devices, on a process-local view
    of the params (`local_params`: no copy when the mesh keeps a whole copy per process).
    Nothing in the rollout waits on another process;
  * the update and the reference log-probs are global programs: each process contributes
    its rows (`global_batch`) and every process calls them in the same order;
  * host numbers that every process needs (the batch length, the step's metrics, the
    evaluation's answers) travel through `gather`;
  * only process 0 writes files (`is_writer`); checkpoints are written by all, through Orbax.

With one process every function here is the identity or its one-process equivalent.
"""

from __future__ import annotations

import json
import math
import socket
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding

from sr2.parallel.mesh import AXES, MeshConfig, make_mesh


def initialize(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  cpu_devices: int = 0,
  timeout_s: int = 300,
) -> None:
  """Starts this process's part of a multi-process job, before any JAX computation.

  Args:
    coordinator_address: "host:port" of process 0. None: JAX detects the cluster (Cloud TPU
      VM slices, SLURM, ...) if there is one; else this is a one-process run.
    num_processes, process_id: the job's size and this process's number (with an address).
    cpu_devices: N fake CPU devices for this process (tests, laptops); with several
      processes their collectives go through gloo.
    timeout_s: how long to wait for every process to reach the coordinator.

  Raises:
    ValueError: flags that contradict each other, named.
    TimeoutError: the coordinator did not answer within `timeout_s` (checked by every
      process but process 0, which runs it); the message has its address.
  """
  if cpu_devices:
    jax.config.update("jax_num_cpu_devices", cpu_devices)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if coordinator_address is None:
    if num_processes not in (None, 1) or process_id not in (None, 0):
      raise ValueError(
        f"--num_processes={num_processes} --process_id={process_id} need --coordinator_address"
      )
    if _cluster_detected():
      jax.distributed.initialize(initialization_timeout=timeout_s)
    return
  if num_processes is None or num_processes < 1:
    raise ValueError(f"--num_processes={num_processes}; expected an int >= 1")
  if process_id is None or not 0 <= process_id < num_processes:
    raise ValueError(
      f"--process_id={process_id} is out of range for --num_processes={num_processes} "
      f"(expected 0..{num_processes - 1})"
    )
  if process_id != 0:
    # The runtime aborts the process (no Python error) when the coordinator never answers:
    # wait for its port here first, so an unreachable address is a clear error.
    _wait_for(coordinator_address, timeout_s)
  jax.distributed.initialize(
    coordinator_address,
    num_processes=num_processes,
    process_id=process_id,
    initialization_timeout=timeout_s,
  )


def _wait_for(address: str, timeout_s: float) -> None:
  """Returns once something accepts TCP connections at "host:port"; else TimeoutError."""
  host, _, port = address.rpartition(":")
  if not host or not port.isdigit():
    raise ValueError(f"--coordinator_address={address!r}; expected host:port")
  deadline = time.monotonic() + timeout_s
  while True:
    try:
      with socket.create_connection((host.strip("[]"), int(port)), timeout=2):
        return
    except OSError as e:
      if time.monotonic() >= deadline:
        raise TimeoutError(
          f"--coordinator_address={address}: nothing answered there within {timeout_s} s "
          f"({e}); start process 0 first, or check the address and port"
        ) from None
      time.sleep(0.5)


def _cluster_detected() -> bool:
  """Whether JAX's cluster detection finds a multi-host environment (a TPU VM slice, ...)."""
  try:
    from jax._src import clusters  # JAX's own detectors; private, so checked defensively
  except ImportError:
    return False
  return any(c.is_env_present() for c in getattr(clusters.ClusterEnv, "_cluster_types", ()))


def is_writer() -> bool:
  """Whether this process writes the run's files (process 0)."""
  return jax.process_index() == 0


def share(n: int, what: str) -> range:
  """This process's contiguous share of `n` items (prompts, questions) split evenly.

  Raises ValueError naming `what` when the process count does not divide `n`.
  """
  p = jax.process_count()
  if n % p:
    raise ValueError(f"{what}={n} does not split evenly over {p} processes (--num_processes)")
  k = n // p
  return range(jax.process_index() * k, (jax.process_index() + 1) * k)


def uneven_share(n: int) -> range:
  """This process's share of `n` items, the first `n % P` processes taking one more."""
  p, i = jax.process_count(), jax.process_index()
  k, extra = divmod(n, p)
  start = i * k + min(i, extra)
  return range(start, start + k + (i < extra))


def local_mesh(mesh: Mesh, process: int | None = None) -> Mesh:
  """The part of `mesh` on one process's devices (default: this one's), same axis names.

  When the processes split the `data` axis, this is a block of the global mesh: a param's
  shards on the process then form a whole copy of it, laid out as on the global mesh.
  Otherwise (a model sharded across hosts) the local mesh shards params over its own
  devices on `fsdp`. `process` lets an ahead-of-time compile (sr2/aot) take one host's
  chips of a slice it only describes.
  """
  owners = np.vectorize(lambda d: d.process_index)(mesh.devices)
  count = len(np.unique(owners))
  if count == 1:
    return mesh
  me = jax.process_index() if process is None else process
  mine = owners == me
  data, fsdp, tensor = (mesh.shape[a] for a in AXES)
  if data % count == 0:
    return Mesh(mesh.devices[mine].reshape(-1, fsdp, tensor), AXES)
  devices = mesh.devices[mine].reshape(-1)
  return make_mesh(MeshConfig(data=1, fsdp=-1, tensor=tensor), devices)


def hosts_mesh(mesh: Mesh) -> Mesh:
  """`mesh`'s devices with a leading "hosts" axis: one `local_mesh` per process, stacked.

  A layout on it that does not name "hosts" is a whole copy of an array per process,
  sharded within each process as on its local mesh.
  """
  count = jax.process_count()
  blocks = [local_mesh(mesh, process=p).devices for p in range(count)]
  return Mesh(np.stack(blocks), ("hosts", *AXES))


def local_params(params: Any, mesh: Mesh) -> Any:
  """`params` (global arrays) as arrays on this process's `mesh` (`local_mesh`).

  Where this process's shards already hold the whole array laid out as the local mesh
  wants (the processes split `data`), the result is a view of the same buffers (no copy).
  Otherwise (fsdp across hosts) one jitted reshard on the devices gathers a copy of each
  array into every process, laid out as the local mesh wants (`hosts_mesh`), and the
  result is a view of that: the gather runs over the device interconnect, not the host.
  """
  if jax.process_count() == 1:
    return params

  def view(x, sharding):
    want = sharding.devices_indices_map(x.shape)
    have = {s.device: s for s in x.addressable_shards}
    if all(d in have and _same_index(have[d].index, want[d], x.shape) for d in want):
      return jax.make_array_from_single_device_arrays(
        x.shape, sharding, [have[d].data for d in want]
      )
    return None

  local = jax.tree.map(lambda x: NamedSharding(mesh, x.sharding.spec), params)
  views = jax.tree.map(view, params, local)
  if all(v is not None for v in jax.tree.leaves(views, is_leaf=lambda v: v is None)):
    return views
  leaves, treedef = jax.tree.flatten(params)
  spread = hosts_mesh(leaves[0].sharding.mesh)
  copies = jax.device_put(leaves, [NamedSharding(spread, x.sharding.spec) for x in leaves])
  return jax.tree.unflatten(
    treedef,
    [view(c, NamedSharding(mesh, x.sharding.spec)) for c, x in zip(copies, leaves, strict=True)],
  )


def _same_index(a, b, shape) -> bool:
  norm = lambda idx: tuple(s.indices(n)[:2] for s, n in zip(idx, shape, strict=True))
  return norm(a) == norm(b)


def to_global(tree: Any, shardings: Any) -> Any:
  """Arrays that every process holds whole and alike, placed on global `shardings`."""
  if jax.process_count() == 1:
    return jax.device_put(tree, shardings)

  def put(x, sharding):
    host = np.asarray(x) if not jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else None
    if host is None:
      data = to_global(jax.random.key_data(x), sharding)
      return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

  return jax.tree.map(put, tree, shardings)


def to_host(x: jax.Array) -> np.ndarray:
  """A host copy of a replicated global array (a PRNG key becomes its key data)."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if jax.process_count() == 1 or x.is_fully_addressable:
    return np.asarray(jax.device_get(x))
  return np.asarray(x.addressable_data(0))


def local_key(key: jax.Array) -> jax.Array:
  """A copy of a replicated global PRNG key on this process's default device."""
  if jax.process_count() == 1:
    return key
  return jax.random.wrap_key_data(to_host(key), impl=jax.random.key_impl(key))


def global_batch(batch: dict[str, np.ndarray], shardings: dict[str, NamedSharding]) -> dict:
  """One global array per field from every process's rows (process order = row order)."""
  if jax.process_count() == 1:
    return {k: jax.device_put(v, shardings[k]) for k, v in batch.items()}
  return {
    k: jax.make_array_from_process_local_data(shardings[k], np.asarray(v)) for k, v in batch.items()
  }


def gather(x: np.ndarray) -> np.ndarray:
  """Every process's `x` (same shape but the first dim's size), concatenated in order."""
  x = np.asarray(x)
  if jax.process_count() == 1:
    return x
  sizes = multihost_utils.process_allgather(np.asarray([len(x)]))
  rows = int(np.max(sizes))
  padded = np.zeros((rows, *x.shape[1:]), x.dtype)
  padded[: len(x)] = x
  out = multihost_utils.process_allgather(padded)  # [P, rows, ...]
  return np.concatenate([out[i, : int(n)] for i, n in enumerate(sizes.reshape(-1))])


def gather_json(obj: Any) -> list[Any]:
  """Every process's JSON-able `obj`, in process order."""
  if jax.process_count() == 1:
    return [obj]
  data = np.frombuffer(json.dumps(obj).encode(), np.uint8)
  return [json.loads(bytes(row).decode()) for row in _gather_ragged(data)]


def _gather_ragged(x: np.ndarray) -> list[np.ndarray]:
  sizes = multihost_utils.process_allgather(np.asarray([len(x)])).reshape(-1)
  padded = np.zeros((int(sizes.max()),), x.dtype)
  padded[: len(x)] = x
  out = multihost_utils.process_allgather(padded)
  return [out[i, : int(n)] for i, n in enumerate(sizes)]


def merge_metrics(rows: Sequence[dict[str, float]], sums: Sequence[str] = ()) -> dict[str, float]:
  """Per-process metric dicts as one: seconds (`*_s`) take the slowest process, `sums` add
  up, anything else is the mean over the processes that report it."""
  out: dict[str, float] = {}
  for key in sorted({k for r in rows for k in r}):
    values = [float(r[key]) for r in rows if key in r]
    if key.endswith("_s"):
      out[key] = max(values)
    elif key in sums:
      out[key] = float(sum(values))
    else:
      out[key] = float(math.fsum(values) / len(values))
  return out


def barrier(name: str) -> None:
  """Waits until every process gets here (no-op with one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)
