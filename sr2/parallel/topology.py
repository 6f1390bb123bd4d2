"""TPU slices by name: per-chip facts of each generation and the slice's (compile-only) devices.

A slice is named as Cloud TPU names accelerator types, `<generation>-<count>` (`v4-32`,
`v5e-16`, `v5p-64`, `v6e-8`, `v5litepod-16`), or explicitly as `<generation>:<shape>`
(`v5p:2x2x4`, `v5e:4x4`). In the counted form v4 and v5p count TensorCores, two per
chip (`v5p-64` is 32 chips), and v5e and v6e count chips. Counted names map to the shape
Cloud TPU gives that slice: for v4/v5p a 2x2x1 host doubled along z, y, x in turn
(2x2x2, 2x2x4, 2x4x4, 4x4x4, ...), for v5e/v6e 1x1, then 2x2 doubled along y, x in turn
(2x4, 4x4, 4x8, ...); other shapes take the explicit form.

Parsing needs nothing but Python; `slice_devices` needs libtpu (`jax[tpu]`), which can
describe a slice's devices on a host without TPUs, enough to compile for them (sr2/aot).
The names libtpu takes (`jax.experimental.topologies.get_topology_desc`, checked with
jax 0.10.2): "v4:AxBxC", "v5p:AxBxC" (or "v5:"), "v5e:AxB", "v6e:AxB" ("v5litepod" is
rejected); v4 needs chip_config_name="megacore" for one device per chip (without it each
TensorCore is a device), and slices smaller than a 2x2x1 host need chips_per_host_bounds.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re

GiB = 1024**3


@dataclasses.dataclass(frozen=True)
class Generation:
  """Per-chip facts of a TPU generation."""

  name: str  # the generation as slice names spell it ("v5p").
  device_kind: str  # what JAX reports as `device.device_kind` for its chips.
  dims: int  # torus dimensions of a slice (3 for v4/v5p, 2 for v5e/v6e).
  cores_per_name: int  # TensorCores a chip adds to the count in a `<generation>-<count>` name.
  max_chips: int  # the largest slice Cloud TPU offers.
  hbm_bytes: int  # HBM per chip.
  peak_flops: float  # peak dense bf16 FLOP/s per chip.
  hbm_bandwidth: float  # HBM bytes/s per chip.


# Per-chip HBM, peak bf16 FLOP/s and HBM bandwidth as Google publishes them for Cloud TPU
# (cloud.google.com/tpu/docs/v4, /v5e, /v5p, /v6e): the vendor's figures, not measured here.
GENERATIONS: dict[str, Generation] = {
  "v4": Generation("v4", "TPU v4", 3, 2, 4096, 32 * GiB, 275e12, 1.2e12),
  "v5e": Generation("v5e", "TPU v5 lite", 2, 1, 256, 16 * GiB, 197e12, 8.1e11),
  "v5p": Generation("v5p", "TPU v5", 3, 2, 8960, 95 * GiB, 459e12, 2.76e12),
  "v6e": Generation("v6e", "TPU v6 lite", 2, 1, 256, 32 * GiB, 918e12, 1.64e12),
}
# Other spellings of a generation in slice names (Cloud TPU's accelerator type for v5e).
ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6": "v6e"}


@dataclasses.dataclass(frozen=True)
class Topology:
  """A slice: a generation and the chips' torus shape (2 or 3 dims)."""

  generation: Generation
  shape: tuple[int, ...]

  @property
  def chips(self) -> int:
    return math.prod(self.shape)

  @property
  def name(self) -> str:
    """The explicit name, also what libtpu takes: "v5p:2x2x1", "v5e:2x2"."""
    return f"{self.generation.name}:{'x'.join(map(str, self.shape))}"

  @property
  def hbm_bytes(self) -> int:
    """HBM of one chip."""
    return self.generation.hbm_bytes


def _generation(name: str, original: str) -> Generation:
  key = ALIASES.get(name, name)
  if key not in GENERATIONS:
    raise ValueError(
      f"unknown TPU slice {original!r}: generation {name!r} is not one of "
      f"{sorted(GENERATIONS)} (or {sorted(ALIASES)})"
    )
  return GENERATIONS[key]


def default_shape(gen: Generation, chips: int) -> tuple[int, ...] | None:
  """The torus shape Cloud TPU gives a slice of `chips` chips, or None if it offers none."""
  if gen.dims == 2 and chips == 1:
    return (1, 1)
  if chips < 4 or chips > gen.max_chips or chips & (chips - 1):
    return None
  shape = [2, 2] if gen.dims == 2 else [2, 2, 1]
  if gen.dims == 3 and chips >= 8:
    shape[2] = 2
  i = 0
  while math.prod(shape) < chips:
    shape[-1 - i % gen.dims] *= 2
    i += 1
  return tuple(shape)


def parse_topology(name: str) -> Topology:
  """The slice a name denotes (see the module docstring); ValueError naming it otherwise."""
  if not isinstance(name, str):
    raise ValueError(f"TPU slice name {name!r} is not a string")
  text = name.strip().lower()
  explicit = re.fullmatch(r"(v[0-9a-z]+):(\d+(?:x\d+)*)", text)
  if explicit:
    gen = _generation(explicit[1], name)
    shape = tuple(int(s) for s in explicit[2].split("x"))
    if gen.dims == 2 and len(shape) == 3 and shape[2] == 1:
      shape = shape[:2]
    if len(shape) != gen.dims or min(shape) < 1:
      dims = "x".join("ABC"[: gen.dims])
      raise ValueError(
        f"TPU slice {name!r}: a {gen.name} slice is {dims} chips with positive sizes"
      )
    return Topology(gen, shape)
  counted = re.fullmatch(r"(v[0-9a-z]+)-(\d+)", text)
  if counted:
    gen, count = _generation(counted[1], name), int(counted[2])
    unit = "TensorCores (2 per chip)" if gen.cores_per_name == 2 else "chips"
    shape = None
    if count % gen.cores_per_name == 0:
      shape = default_shape(gen, count // gen.cores_per_name)
    if shape is None:
      first = 4 * gen.cores_per_name
      raise ValueError(
        f"TPU slice {name!r}: {gen.name} names count {unit}; Cloud TPU slices have "
        f"{'1 or ' if gen.dims == 2 else ''}{4 * gen.cores_per_name}, "
        f"{8 * gen.cores_per_name}, {16 * gen.cores_per_name}, ... up to "
        f"{gen.max_chips * gen.cores_per_name} (e.g. {gen.name}-{first}); name other "
        f"shapes explicitly, e.g. {gen.name}:{'x'.join(['2'] * gen.dims)}"
      )
    return Topology(gen, shape)
  raise ValueError(
    f"unknown TPU slice {name!r}: expected <generation>-<count> (v4-32, v5e-16, v5p-64, "
    f"v6e-8) or <generation>:<shape> (v5p:2x2x1, v5e:2x2) with a generation in "
    f"{sorted(GENERATIONS)}"
  )


def has_libtpu() -> bool:
  """Whether libtpu is installed (what `slice_devices` needs; no TPU hardware needed)."""
  import importlib.util

  return importlib.util.find_spec("libtpu") is not None


def slice_devices(name: str | Topology) -> list:
  """The compile-only devices of a slice, one per chip, in libtpu's order.

  They can be put in a `jax.sharding.Mesh` and compiled for (`jit(...).lower(...).compile()`)
  on a host without TPUs; nothing can run on them. Needs libtpu (`jax[tpu]`).
  """
  topo = name if isinstance(name, Topology) else parse_topology(name)
  if not has_libtpu():
    raise RuntimeError(
      f"describing the TPU slice {topo.name} needs libtpu: pip install 'jax[tpu]==<your jax "
      "version>' (no TPU needed)"
    )
  from jax.experimental import topologies

  # libtpu holds a lockfile so that two processes do not drive one TPU; compile-only
  # devices drive nothing, and without this a second process compiling fails.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  shape3 = (*topo.shape, 1) if len(topo.shape) == 2 else topo.shape
  # libtpu's default host is 2x2x1 chips; along a dimension 2 does not divide, 1 chip.
  host = tuple(2 if i < 2 and s % 2 == 0 else 1 for i, s in enumerate(shape3))
  kwargs = dict(chips_per_host_bounds=host)
  if topo.generation.name == "v4":
    kwargs["chip_config_name"] = "megacore"  # one device per chip, as JAX runs v4
  devices = list(topologies.get_topology_desc(topo.name, "tpu", **kwargs).devices)
  kinds = {d.device_kind for d in devices}
  if len(devices) != topo.chips or kinds != {topo.generation.device_kind}:
    raise RuntimeError(
      f"libtpu describes {topo.name} as {len(devices)} devices of kind {sorted(kinds)}; "
      f"expected {topo.chips} of kind {topo.generation.device_kind!r}"
    )
  return devices
