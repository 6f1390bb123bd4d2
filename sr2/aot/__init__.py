"""Ahead-of-time compilation of a training step's programs for a TPU slice, on any host.

plan.py      what a config's step compiles: the model (no weights), sizes, mesh
programs.py  lowering and compiling each program; XLA's per-chip memory and FLOPs
roofline.py  a projection of a step's seconds from the compiled programs and the chip's peaks
"""

from sr2.aot.plan import (
  DEFAULT_PREFILL_TOKENS,
  PROGRAMS,
  Plan,
  config_topology,
  make_plan,
  model_config,
  preset_name,
)
from sr2.aot.programs import compile_program, compile_programs, gib, not_fitting
from sr2.aot.roofline import project

__all__ = [
  "DEFAULT_PREFILL_TOKENS",
  "PROGRAMS",
  "Plan",
  "compile_program",
  "compile_programs",
  "config_topology",
  "gib",
  "make_plan",
  "model_config",
  "not_fitting",
  "preset_name",
  "project",
]
