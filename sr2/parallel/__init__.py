"""Meshes and logical-axis sharding rules."""

from sr2.parallel.mesh import AXES, MeshConfig, make_mesh
from sr2.parallel.rules import AxisRules, tree_shardings

__all__ = ["AXES", "AxisRules", "MeshConfig", "make_mesh", "tree_shardings"]
