"""Logical axis names -> mesh axes, and the shardings they give params and caches.

Params and activations name their dimensions logically (`embed`, `heads`, `kv_heads`, `mlp`,
`vocab`, `batch`, `seq`, `head_dim`); one `AxisRules` maps each name to mesh axes (`data`,
`fsdp`, `tensor`). A dimension whose size the mesh axes do not divide is replicated
instead (SmolLM2's 9 heads on a tensor axis of 2, say), so any preset runs on any mesh.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MeshAxes = str | tuple[str, ...] | None


@dataclasses.dataclass(frozen=True)
class AxisRules:
  """Where each logical axis lives on the mesh (None = replicated)."""

  rules: tuple[tuple[str, MeshAxes], ...] = (
    ("batch", ("data", "fsdp")),
    ("layers", None),  # the stacked layers' leading axis (`model.scan_layers`)
    ("seq", None),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
  )

  def __post_init__(self):
    names = [n for n, _ in self.rules]
    if len(set(names)) != len(names):
      raise ValueError(f"AxisRules names a logical axis twice: {names}")

  def mesh_axes(self, logical: str | None) -> MeshAxes:
    if logical is None:
      return None
    for name, axes in self.rules:
      if name == logical:
        return axes
    raise ValueError(
      f"no rule for logical axis {logical!r}; rules cover {[n for n, _ in self.rules]}"
    )

  def spec(
    self, logical_axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh
  ) -> PartitionSpec:
    """PartitionSpec for an array of `shape`; mesh axes that do not divide a dim are dropped."""
    out, used = [], set()
    for name, size in zip(logical_axes, shape, strict=True):
      axes = self.mesh_axes(name)
      axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
      # A mesh axis shards at most one dim, and only dims it divides.
      axes = tuple(a for a in axes if a in mesh.shape and a not in used and mesh.shape[a] > 1)
      while axes and size % math.prod(mesh.shape[a] for a in axes):
        axes = axes[:-1]
      used.update(axes)
      out.append(axes[0] if len(axes) == 1 else (axes or None))
    return PartitionSpec(*out)


def _is_axes(x) -> bool:
  return isinstance(x, tuple) and all(isinstance(a, str | type(None)) for a in x)


def tree_shardings(axes_tree: Any, shapes_tree: Any, mesh: Mesh, rules: AxisRules) -> Any:
  """NamedShardings for a pytree, given its logical axes and its shapes (arrays or SDS)."""
  flat_axes, treedef = jax.tree.flatten(axes_tree, is_leaf=_is_axes)
  flat_shapes = treedef.flatten_up_to(shapes_tree)
  return treedef.unflatten(
    [
      NamedSharding(mesh, rules.spec(a, s.shape, mesh))
      for a, s in zip(flat_axes, flat_shapes, strict=True)
    ]
  )
