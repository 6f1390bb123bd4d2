"""Clocks the benchmarks share: median wall time of a jitted call, and compile seconds."""

from __future__ import annotations

import statistics
import time

import jax

COMPILE_EVENTS = (
  "/jax/core/compile/jaxpr_trace_duration",
  "/jax/core/compile/jaxpr_to_mlir_module_duration",
  "/jax/core/compile/backend_compile_duration",
)


class CompileClock:
  """Seconds JAX spends tracing, lowering and compiling while the context is open."""

  def __init__(self):
    self.seconds = 0.0

  def __call__(self, event: str, duration: float, **_) -> None:
    if event in COMPILE_EVENTS:
      self.seconds += duration

  def __enter__(self) -> CompileClock:
    jax.monitoring.register_event_duration_secs_listener(self)
    return self

  def __exit__(self, *exc) -> None:
    jax.monitoring.unregister_event_duration_listener(self)


def median_time(fn, repeats: int) -> tuple[float, list[float]]:
  """(median, all) seconds of `repeats` calls of `fn`, each waited for to the end."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times), times
