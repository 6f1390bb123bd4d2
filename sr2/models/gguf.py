"""GGUF files: tensor names, llama.cpp's Q/K permutation, dequantisation and the cache.

GGUF tensors are dequantised to float32, renamed to HF names and, for the llama
architecture, have llama.cpp's Q/K row permutation undone; from there they take the HF
path (`weights.params_from_hf`).

Dequantising is the slow step (seconds to tens of seconds), so its result is cached under
`$SR2_CACHE/converted/<key>/` (params as safetensors, config, tokenizer) and a second load
reads that instead. The cache entry is written to a temporary directory and renamed into
place, so an error never leaves a broken entry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sr2 import assets
from sr2.models import transformer
from sr2.models.config import ModelConfig
from sr2.models.tokenizer import Tokenizer
from sr2.models.weights import (
  Model,
  WeightsError,
  check_architecture,
  family_config,
  params_from_hf,
)

_CONVERTER_VERSION = 1

_GGUF_NAMES = {
  "attn_norm.weight": "input_layernorm.weight",
  "ffn_norm.weight": "post_attention_layernorm.weight",
  "attn_q.weight": "self_attn.q_proj.weight",
  "attn_k.weight": "self_attn.k_proj.weight",
  "attn_v.weight": "self_attn.v_proj.weight",
  "attn_output.weight": "self_attn.o_proj.weight",
  "attn_q.bias": "self_attn.q_proj.bias",
  "attn_k.bias": "self_attn.k_proj.bias",
  "attn_v.bias": "self_attn.v_proj.bias",
  "attn_q_norm.weight": "self_attn.q_norm.weight",
  "attn_k_norm.weight": "self_attn.k_norm.weight",
  "ffn_gate.weight": "mlp.gate_proj.weight",
  "ffn_up.weight": "mlp.up_proj.weight",
  "ffn_down.weight": "mlp.down_proj.weight",
}


def _gguf_hf_name(name: str) -> str | None:
  if name == "token_embd.weight":
    return "model.embed_tokens.weight"
  if name == "output_norm.weight":
    return "model.norm.weight"
  if name == "output.weight":
    return "lm_head.weight"
  m = re.fullmatch(r"blk\.(\d+)\.(.+)", name)
  if m and m.group(2) in _GGUF_NAMES:
    return f"model.layers.{m.group(1)}.{_GGUF_NAMES[m.group(2)]}"
  return None


def _unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
  """Inverts llama.cpp's interleaving of rotary halves in Q/K rows (llama arch only)."""
  out_dim = w.shape[0]
  return (
    w.reshape(n_heads, out_dim // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
  )


def read_gguf_metadata(reader) -> dict[str, Any]:
  """All scalar/string/array metadata fields of a `gguf.GGUFReader` as Python values."""
  return {name: field.contents() for name, field in reader.fields.items()}


def _config_from_gguf(meta: Mapping[str, Any], vocab_size: int, tied: bool) -> ModelConfig:
  arch = meta.get("general.architecture")
  check_architecture(arch, f"GGUF architecture {arch!r}")
  g = lambda key, default=None: meta.get(f"{arch}.{key}", default)
  scaling = g("rope.scaling.type")
  if scaling not in (None, "none"):
    raise WeightsError(f"unsupported RoPE scaling {scaling!r}; only unscaled RoPE is implemented")
  d, n_heads = int(g("embedding_length")), int(g("attention.head_count"))
  return family_config(
    arch,
    vocab_size=vocab_size,
    d_model=d,
    n_layers=int(g("block_count")),
    n_heads=n_heads,
    n_kv_heads=int(g("attention.head_count_kv", n_heads)),
    head_dim=int(g("attention.key_length", d // n_heads)),
    d_ff=int(g("feed_forward_length")),
    rope_theta=float(g("rope.freq_base", 10000.0)),
    # GGUF stores eps as float32; keep its shortest decimal form (1e-05, not 9.99e-06).
    norm_eps=float(
      np.format_float_positional(np.float32(g("attention.layer_norm_rms_epsilon", 1e-6)))
    ),
    tie_embeddings=tied,
    max_seq_len=int(g("context_length", 2048)),
  )


def convert_gguf(path: str | os.PathLike) -> tuple[ModelConfig, Any, Tokenizer]:
  """Dequantises a GGUF file into float32 params and builds its tokenizer (no caching)."""
  import gguf

  try:
    reader = gguf.GGUFReader(str(path))
  except Exception as e:
    raise WeightsError(f"{path} is not a readable GGUF file: {e}") from e
  meta = read_gguf_metadata(reader)
  tensors = {t.name: t for t in reader.tensors}
  if "token_embd.weight" not in tensors:
    raise WeightsError(f"{path}: GGUF has no token_embd.weight")
  vocab_size = int(tensors["token_embd.weight"].shape[1])
  config = _config_from_gguf(meta, vocab_size, tied="output.weight" not in tensors)
  hf = {}
  for name, t in tensors.items():
    hf_name = _gguf_hf_name(name)
    if hf_name is None:
      raise WeightsError(f"{path}: unexpected GGUF tensor {name!r} for architecture {config.arch}")
    hf[hf_name] = t

  def get(hf_name: str) -> np.ndarray:
    t = hf[hf_name]
    w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
    w = w.reshape(tuple(int(s) for s in reversed(t.shape)))
    if config.arch == "llama" and hf_name.endswith("q_proj.weight"):
      w = _unpermute_qk(w, config.n_heads)
    if config.arch == "llama" and hf_name.endswith("k_proj.weight"):
      w = _unpermute_qk(w, config.n_kv_heads)
    return w

  params = params_from_hf(config, get, set(hf))
  tokenizer = Tokenizer.from_gguf_metadata(config.arch, meta)
  tokenizer.check_fits(config.vocab_size)
  return config, params, tokenizer


def _flat_key(path) -> str:
  """A pytree path as a dotted safetensors key, e.g. "layers.3.q"."""
  return ".".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)


def _flatten(params) -> dict[str, np.ndarray]:
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return {_flat_key(path): np.asarray(x) for path, x in flat}


def _unflatten(config: ModelConfig, flat: Mapping[str, Any]) -> Any:
  def leaf(path, _spec):
    key = _flat_key(path)
    if key not in flat:
      raise WeightsError(f"cached params lack {key}; delete the cache entry and reload")
    return jnp.asarray(flat[key], jnp.dtype(config.dtype))

  return jax.tree_util.tree_map_with_path(
    leaf, transformer.param_shapes(config), is_leaf=transformer._is_spec
  )


def _cache_key(path: pathlib.Path) -> str:
  st = path.stat()
  ident = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|v{_CONVERTER_VERSION}"
  return f"{path.stem}-{hashlib.sha256(ident.encode()).hexdigest()[:16]}"


def load_gguf(path: str | os.PathLike, dtype: str = "float32", use_cache: bool = True) -> Model:
  """Loads a GGUF file, converting once and reading the cached conversion afterwards."""
  from safetensors import safe_open
  from safetensors.numpy import save_file

  path = pathlib.Path(path)
  if not path.is_file():
    raise WeightsError(f"GGUF file {path} does not exist")
  entry = assets.cache_dir() / "converted" / _cache_key(path)
  if use_cache and entry.is_dir():
    config = ModelConfig(**json.loads((entry / "config.json").read_text())).replace(dtype=dtype)
    with safe_open(str(entry / "params.safetensors"), framework="numpy") as f:
      params = _unflatten(config, {k: f.get_tensor(k) for k in f.keys()})
    return Model(config, params, Tokenizer.from_dir(entry), str(path))
  config, params, tokenizer = convert_gguf(path)
  if use_cache:
    with assets.atomic_path(entry) as tmp:
      tmp.mkdir()
      save_file(_flatten(params), str(tmp / "params.safetensors"))
      (tmp / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=1))
      tokenizer.save(tmp)
  config = config.replace(dtype=dtype)
  params = jax.tree.map(lambda x: x.astype(jnp.dtype(dtype)), params)
  return Model(config, params, tokenizer, str(path))
