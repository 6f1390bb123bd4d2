"""Jitted KV-cache sampling: prefill/append/truncate/decode with in-loop stop strings."""

from sr2.sampling.methods import Greedy, Method, Temperature, TopK, TopP, parse_method, sample
from sr2.sampling.sampler import Sampler, rows_since
from sr2.sampling.state import (
  DEFAULT_STOP_STRINGS,
  FINISH_NAMES,
  SamplingConfig,
  SamplingState,
  bucket,
  sampling_config,
)

__all__ = [
  "DEFAULT_STOP_STRINGS",
  "FINISH_NAMES",
  "Greedy",
  "Method",
  "Sampler",
  "SamplingConfig",
  "SamplingState",
  "Temperature",
  "TopK",
  "TopP",
  "bucket",
  "parse_method",
  "rows_since",
  "sample",
  "sampling_config",
]
