"""Evaluation: datasets × methods (direct, cot, rag, the search agent) → EM/F1 tables."""

from sr2.eval.harness import (
  DatasetSpec,
  EvalConfig,
  EvalResult,
  eval_config,
  evaluate,
  resolve_datasets,
  summarize,
)
from sr2.eval.methods import METHODS, read_prediction
from sr2.eval.report import markdown_table, run_evaluation, write_results

__all__ = [
  "METHODS",
  "DatasetSpec",
  "EvalConfig",
  "EvalResult",
  "eval_config",
  "evaluate",
  "markdown_table",
  "read_prediction",
  "resolve_datasets",
  "run_evaluation",
  "summarize",
  "write_results",
]
