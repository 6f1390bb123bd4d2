"""ModelConfig for the Llama / Qwen2 / Qwen3 decoder family, and named presets.

One frozen dataclass describes every supported architecture; the differences are flags:
Qwen2 adds q/k/v biases, Qwen3 adds per-head RMSNorm on q and k, and the output head is
tied to the embedding or not. A preset gives a shape; loading a checkpoint always reads the
checkpoint's own config (weights.py), so presets only matter for random init and planning.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from sr2.configlib import ConfigError, check_choices, check_ints, check_keys

ARCHITECTURES = ("llama", "qwen2", "qwen3")
DTYPES = ("float32", "bfloat16")
# What the backward pass keeps of each decoder block: "none" keeps every activation,
# "full" recomputes the block from its input, "dots" keeps matmul outputs only.
REMAT = ("none", "full", "dots")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Shape and numerics of a decoder-only transformer."""

  arch: str = "llama"  # one of ARCHITECTURES; sets the family defaults below only via presets.
  vocab_size: int = 256  # rows of the embedding table.
  d_model: int = 64  # residual width.
  n_layers: int = 2  # decoder blocks.
  n_heads: int = 4  # query heads.
  n_kv_heads: int = 2  # key/value heads (grouped-query attention); divides n_heads.
  head_dim: int = 16  # width of one head (need not be d_model / n_heads, as in Qwen3).
  d_ff: int = 128  # hidden width of the SwiGLU MLP.
  rope_theta: float = 10_000.0  # RoPE base frequency.
  norm_eps: float = 1e-6  # RMSNorm epsilon.
  qkv_bias: bool = False  # q/k/v projections carry a bias (Qwen2).
  qk_norm: bool = False  # RMSNorm over each q and k head before RoPE (Qwen3).
  tie_embeddings: bool = True  # the output head is the transposed embedding table.
  max_seq_len: int = 2048  # longest position the model is used at (RoPE tables, caches).
  dtype: str = "float32"  # parameter dtype; activations follow it, softmax and logits are float32.
  # params["layers"] is one dict of arrays stacked on a leading layer axis, and the uncached forward
  # pass runs the blocks as one `lax.scan` (a program whose size does not grow with depth);
  # otherwise a list of per-layer dicts, unrolled.
  scan_layers: bool = False
  # one of REMAT, how the uncached forward pass's blocks are rematerialised for the backward pass
  # (`jax.checkpoint`); the values are the same either way.
  remat: str = "none"

  def __post_init__(self):
    check_choices(self, "model", {"remat": REMAT, "arch": ARCHITECTURES, "dtype": DTYPES})
    check_ints(
      self,
      "model",
      ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff"),
    )
    if self.n_heads % self.n_kv_heads:
      raise ConfigError(
        f"model.n_heads={self.n_heads} is not a multiple of model.n_kv_heads={self.n_kv_heads}"
      )
    if self.head_dim % 2:
      raise ConfigError(f"model.head_dim={self.head_dim} must be even for RoPE")
    if not self.rope_theta > 0 or not self.norm_eps > 0:
      raise ConfigError("model.rope_theta and model.norm_eps must be positive")
    if self.max_seq_len < 1:
      raise ConfigError(f"model.max_seq_len={self.max_seq_len}; expected >= 1")

  @property
  def n_groups(self) -> int:
    """Query heads per key/value head."""
    return self.n_heads // self.n_kv_heads

  def replace(self, **kw: Any) -> ModelConfig:
    return dataclasses.replace(self, **kw)

  def num_params(self) -> int:
    """Parameter count (embedding and untied head included)."""
    d, h, k, dh, f = self.d_model, self.n_heads, self.n_kv_heads, self.head_dim, self.d_ff
    attn = d * h * dh + 2 * d * k * dh + h * dh * d
    if self.qkv_bias:
      attn += h * dh + 2 * k * dh
    if self.qk_norm:
      attn += 2 * dh
    layer = attn + 3 * d * f + 2 * d
    head = 0 if self.tie_embeddings else d * self.vocab_size
    return self.vocab_size * d + self.n_layers * layer + d + head


# What the checkpoints of a family share (a preset's overrides say where one differs); the
# Qwen2.5 and Qwen3 families start from the same vocabulary, RoPE base and norm epsilon.
_QWEN: dict[str, Any] = dict(vocab_size=151936, rope_theta=1e6, norm_eps=1e-6)
_FAMILIES: dict[str, dict[str, Any]] = {
  "smollm2": dict(arch="llama", vocab_size=49152, rope_theta=1e5, norm_eps=1e-5, max_seq_len=8192),
  "qwen2": dict(_QWEN, arch="qwen2", qkv_bias=True, max_seq_len=32768),
  "qwen3": dict(_QWEN, arch="qwen3", qk_norm=True, head_dim=128, max_seq_len=40960),
}
# The fields of a preset row, in order.
_ROW = ("d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "tie_embeddings")


def _preset(family: str, *row: Any, **overrides: Any) -> ModelConfig:
  """A preset: `row` gives the `_ROW` fields, `overrides` what the checkpoint does not share
  with its family (`_FAMILIES[family]`); head_dim, where the family sets none, is
  d_model / n_heads."""
  fields = {**_FAMILIES[family], **dict(zip(_ROW, row, strict=True)), **overrides}
  fields.setdefault("head_dim", fields["d_model"] // fields["n_heads"])
  return ModelConfig(**fields)


# Shapes of the released checkpoints (their config.json); eps and tying as published.
PRESETS: dict[str, ModelConfig] = {
  "tiny": ModelConfig(),
  # _preset(family, d_model, n_layers, n_heads, n_kv_heads, d_ff, tie_embeddings, **overrides)
  "smollm2-135m": _preset("smollm2", 576, 30, 9, 3, 1536, True),
  "qwen2.5-0.5b": _preset("qwen2", 896, 24, 14, 2, 4864, True),
  "qwen2.5-1.5b": _preset("qwen2", 1536, 28, 12, 2, 8960, True),
  "qwen2.5-3b": _preset("qwen2", 2048, 36, 16, 2, 11008, True),
  "qwen2.5-7b": _preset("qwen2", 3584, 28, 28, 4, 18944, False, vocab_size=152064),
  "qwen2.5-14b": _preset("qwen2", 5120, 48, 40, 8, 13824, False, vocab_size=152064, norm_eps=1e-5),
  "qwen2.5-32b": _preset("qwen2", 5120, 64, 40, 8, 27648, False, vocab_size=152064, norm_eps=1e-5),
  "qwen3-0.6b": _preset("qwen3", 1024, 28, 16, 8, 3072, True),
  "qwen3-1.7b": _preset("qwen3", 2048, 28, 16, 8, 6144, True),
  "qwen3-4b": _preset("qwen3", 2560, 36, 32, 8, 9728, True),
  "qwen3-8b": _preset("qwen3", 4096, 36, 32, 8, 12288, False),
}


def preset(name: str, **overrides: Any) -> ModelConfig:
  """A named preset, optionally with fields replaced (unknown fields are rejected)."""
  if name not in PRESETS:
    raise ConfigError(f"unknown model preset {name!r}; expected one of {sorted(PRESETS)}")
  check_keys(overrides.keys(), [f.name for f in dataclasses.fields(ModelConfig)], "model")
  return PRESETS[name].replace(**overrides)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """Which model to build: the `config.model` group of an experiment."""

  # a named model (`sr2.assets.NAMED_MODELS`), an HF checkpoint directory, a `.gguf` file, or
  # `preset:<name>` for randomly initialised params of a preset.
  source: str = "smollm2-135m-instruct"
  dtype: str = "float32"  # "float32" or "bfloat16" params.
  seed: int = 0  # init seed for `preset:` sources.
  scan_layers: bool = False  # stack the layers and scan over them (`ModelConfig.scan_layers`).
  remat: str = "none"  # the blocks' rematerialisation (`ModelConfig.remat`).

  def __post_init__(self):
    if not isinstance(self.source, str) or not self.source:
      raise ConfigError(f"model.source={self.source!r}; expected a model name or path")
    check_choices(self, "model", {"dtype": DTYPES, "remat": REMAT})
    if self.source.startswith("preset:") and self.source[7:] not in PRESETS:
      raise ConfigError(
        f"model.source={self.source!r}: unknown preset; expected one of {sorted(PRESETS)}"
      )
