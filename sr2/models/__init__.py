"""Decoder models: config, pure-functional transformer, weights and tokenizers."""

from sr2.models.config import PRESETS, ModelConfig, ModelSpec, preset
from sr2.models.tokenizer import Tokenizer, TokenizerError
from sr2.models.transformer import (
  CACHE_AXES,
  forward,
  forward_hidden,
  forward_with_cache,
  head_params,
  init_cache,
  init_params,
  logits_from_hidden,
  param_axes,
)
from sr2.models.weights import Model, WeightsError, build, load

__all__ = [
  "CACHE_AXES",
  "PRESETS",
  "Model",
  "ModelConfig",
  "ModelSpec",
  "Tokenizer",
  "TokenizerError",
  "WeightsError",
  "build",
  "forward",
  "forward_hidden",
  "forward_with_cache",
  "head_params",
  "init_cache",
  "init_params",
  "load",
  "logits_from_hidden",
  "param_axes",
  "preset",
]
