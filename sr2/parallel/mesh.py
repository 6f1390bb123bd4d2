"""The device mesh from config: axes `data`, `fsdp`, `tensor`."""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np
from jax.sharding import Mesh

AXES = ("data", "fsdp", "tensor")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Sizes of the mesh axes; one size may be -1 to take the remaining devices.

  `topology` names the TPU slice the config is meant for (e.g. "v5p-16";
  sr2/parallel/topology.py): what `experiments/compile.py` compiles for when given no
  `--topology`. Training ignores it and uses the devices it finds.
  """

  data: int = -1
  fsdp: int = 1
  tensor: int = 1
  topology: str = ""

  def __post_init__(self):
    sizes = (self.data, self.fsdp, self.tensor)
    if sum(s == -1 for s in sizes) > 1 or any(s == 0 or s < -1 for s in sizes):
      raise ValueError(
        f"mesh sizes {dict(zip(AXES, sizes, strict=True))}: each >= 1, at most one -1"
      )

  def resolve(self, n_devices: int) -> tuple[int, int, int]:
    sizes = [self.data, self.fsdp, self.tensor]
    named = lambda: dict(zip(AXES, sizes, strict=True))
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
      if n_devices % known:
        raise ValueError(f"mesh {named()} does not divide {n_devices} devices")
      sizes[sizes.index(-1)] = n_devices // known
    if math.prod(sizes) != n_devices:
      raise ValueError(f"mesh {named()} needs {math.prod(sizes)} devices; {n_devices} available")
    return tuple(sizes)


def make_mesh(config: MeshConfig = MeshConfig(), devices=None) -> Mesh:
  """A mesh over `devices` (default: all) shaped by `config`."""
  devices = list(devices if devices is not None else jax.devices())
  shape = config.resolve(len(devices))
  return Mesh(np.asarray(devices).reshape(shape), AXES)
