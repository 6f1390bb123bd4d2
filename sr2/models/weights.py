"""Loading weights: HF checkpoint directories, GGUF files and named models.

Everything funnels through one path: a mapping of HF tensor names (`model.layers.3.self_attn.
q_proj.weight`, ...) -> arrays in HF layout ([out, in]) becomes the sr2 params pytree
(`params_from_hf`). GGUF tensors are renamed to HF names first, after dequantisation and,
for the llama architecture, after undoing llama.cpp's Q/K row permutation.

Dequantising a GGUF file is the slow step (seconds to tens of seconds), so its result is
cached under `$SR2_CACHE/converted/<key>/` (params as safetensors, config, tokenizer) and a
second load reads that instead. The cache entry is written to a temporary directory and
renamed into place, so an error never leaves a broken entry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sr2 import assets
from sr2.models import transformer
from sr2.models.config import ModelConfig
from sr2.models.tokenizer import Tokenizer

_CONVERTER_VERSION = 1
_IGNORED = re.compile(r".*rotary_emb\.inv_freq$")


class WeightsError(ValueError):
  """A checkpoint is missing, incomplete, or of an unsupported architecture."""


@dataclasses.dataclass(frozen=True)
class Model:
  """A loaded model: static config, params pytree, tokenizer and where it came from."""

  config: ModelConfig
  params: Any
  tokenizer: Tokenizer | None
  source: str


# --------------------------------------------------------------------------- HF names


def config_from_hf(cfg: Mapping[str, Any], dtype: str = "float32") -> ModelConfig:
  """ModelConfig from an HF `config.json` dict (llama, qwen2, qwen3)."""
  arch = cfg.get("model_type")
  if arch not in ("llama", "qwen2", "qwen3"):
    raise WeightsError(
      f"unsupported architecture model_type={arch!r} (architectures={cfg.get('architectures')}); "
      "sr2 supports llama, qwen2 and qwen3"
    )
  if cfg.get("hidden_act", "silu") != "silu":
    raise WeightsError(f"unsupported hidden_act={cfg['hidden_act']!r}; expected 'silu'")
  if cfg.get("mlp_bias"):
    raise WeightsError("unsupported: mlp_bias=true")
  if arch == "llama" and cfg.get("attention_bias"):
    raise WeightsError("unsupported: llama with attention_bias=true (it also biases o_proj)")
  if arch == "qwen3" and cfg.get("attention_bias"):
    raise WeightsError("unsupported: qwen3 with attention_bias=true")
  rope = cfg.get("rope_parameters") or {}
  scaling = cfg.get("rope_scaling") or {}
  # transformers 5 writes `rope_parameters`; older checkpoints carry `rope_scaling`.
  for rope_type in (rope.get("rope_type"), scaling.get("rope_type") or scaling.get("type")):
    if rope_type not in (None, "default"):
      raise WeightsError(
        f"unsupported RoPE scaling {rope_type!r}; only unscaled RoPE is implemented"
      )
  if cfg.get("use_sliding_window"):
    raise WeightsError("unsupported: use_sliding_window=true")
  theta = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
  n_heads = cfg["num_attention_heads"]
  return ModelConfig(
    arch=arch,
    vocab_size=cfg["vocab_size"],
    d_model=cfg["hidden_size"],
    n_layers=cfg["num_hidden_layers"],
    n_heads=n_heads,
    n_kv_heads=cfg.get("num_key_value_heads") or n_heads,
    head_dim=cfg.get("head_dim") or cfg["hidden_size"] // n_heads,
    d_ff=cfg["intermediate_size"],
    rope_theta=float(theta),
    norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
    qkv_bias=arch == "qwen2",
    qk_norm=arch == "qwen3",
    tie_embeddings=bool(cfg.get("tie_word_embeddings", arch != "qwen2")),
    max_seq_len=int(cfg.get("max_position_embeddings", 2048)),
    dtype=dtype,
  )


def _hf_layout(config: ModelConfig) -> dict[str, tuple[tuple[str, ...], Callable]]:
  """HF tensor name -> (path into the sr2 params, function from HF array to sr2 array)."""
  d, h, k, dh = config.d_model, config.n_heads, config.n_kv_heads, config.head_dim
  out: dict[str, tuple[tuple[Any, ...], Callable]] = {
    "model.embed_tokens.weight": (("embed",), lambda w: w),
    "model.norm.weight": (("final_norm",), lambda w: w),
  }
  if not config.tie_embeddings:
    out["lm_head.weight"] = (("head",), lambda w: w.T)
  for i in range(config.n_layers):
    p = f"model.layers.{i}."
    at = lambda name, i=i: ("layers", i, name)
    out[p + "input_layernorm.weight"] = (at("attn_norm"), lambda w: w)
    out[p + "post_attention_layernorm.weight"] = (at("mlp_norm"), lambda w: w)
    out[p + "self_attn.q_proj.weight"] = (at("q"), lambda w: w.T.reshape(d, h, dh))
    out[p + "self_attn.k_proj.weight"] = (at("k"), lambda w: w.T.reshape(d, k, dh))
    out[p + "self_attn.v_proj.weight"] = (at("v"), lambda w: w.T.reshape(d, k, dh))
    out[p + "self_attn.o_proj.weight"] = (at("o"), lambda w: w.T.reshape(h, dh, d))
    out[p + "mlp.gate_proj.weight"] = (at("gate"), lambda w: w.T)
    out[p + "mlp.up_proj.weight"] = (at("up"), lambda w: w.T)
    out[p + "mlp.down_proj.weight"] = (at("down"), lambda w: w.T)
    if config.qkv_bias:
      out[p + "self_attn.q_proj.bias"] = (at("q_bias"), lambda w: w.reshape(h, dh))
      out[p + "self_attn.k_proj.bias"] = (at("k_bias"), lambda w: w.reshape(k, dh))
      out[p + "self_attn.v_proj.bias"] = (at("v_bias"), lambda w: w.reshape(k, dh))
    if config.qk_norm:
      out[p + "self_attn.q_norm.weight"] = (at("q_norm"), lambda w: w)
      out[p + "self_attn.k_norm.weight"] = (at("k_norm"), lambda w: w)
  return out


def params_from_hf(config: ModelConfig, get: Callable[[str], Any], names: set[str]) -> Any:
  """Builds sr2 params from HF-named tensors.

  Args:
    config: the target config (its dtype is the params dtype).
    get: name -> array in HF layout ([out, in] for linear weights).
    names: every tensor name available (to report missing and unexpected ones).

  Returns:
    The params pytree, checked against `transformer.param_shapes(config)`.
  """
  layout = _hf_layout(config)
  missing = sorted(n for n in layout if n not in names)
  if missing:
    raise WeightsError(f"checkpoint lacks {len(missing)} tensors, e.g. {missing[:4]}")
  extra = sorted(n for n in names if n not in layout and not _IGNORED.match(n))
  if extra and not (config.tie_embeddings and extra == ["lm_head.weight"]):
    raise WeightsError(
      f"checkpoint has {len(extra)} tensors sr2's {config.arch} layout does not use, e.g. "
      f"{extra[:4]} (wrong architecture or an unsupported variant?)"
    )
  shapes = transformer.param_shapes(config)
  params: dict[str, Any] = {"layers": [{} for _ in range(config.n_layers)]}
  dtype = jnp.dtype(config.dtype)
  for name, (path, fn) in layout.items():
    x = jnp.asarray(fn(jnp.asarray(get(name))), dtype)
    node, want = params, shapes
    for key in path[:-1]:
      node, want = node[key], want[key]
    expected = want[path[-1]][0]
    if x.shape != expected:
      raise WeightsError(f"tensor {name} has shape {x.shape} after conversion; expected {expected}")
    node[path[-1]] = x
  return params


# --------------------------------------------------------------------------- HF directories


def _safetensors_files(path: pathlib.Path) -> list[pathlib.Path]:
  index = path / "model.safetensors.index.json"
  if index.is_file():
    weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
    files = sorted({path / f for f in weight_map.values()})
    absent = [f.name for f in files if not f.is_file()]
    if absent:
      raise WeightsError(f"{index} lists shards that are missing: {absent}")
    return files
  files = sorted(path.glob("*.safetensors"))
  if not files:
    raise WeightsError(f"{path} has config.json but no *.safetensors weights")
  return files


def load_hf_dir(path: str | os.PathLike, dtype: str = "float32") -> Model:
  """Loads an HF checkpoint directory: config.json, safetensors (sharded or not), tokenizer."""
  from safetensors import safe_open

  path = pathlib.Path(path)
  if not (path / "config.json").is_file():
    raise WeightsError(f"{path} is not a checkpoint directory: it has no config.json")
  config = config_from_hf(json.loads((path / "config.json").read_text(encoding="utf-8")), dtype)
  handles = [safe_open(str(f), framework="flax") for f in _safetensors_files(path)]
  where = {name: h for h in handles for name in h.keys()}
  params = params_from_hf(config, lambda n: where[n].get_tensor(n), set(where))
  tokenizer = Tokenizer.from_dir(path) if (path / "tokenizer.json").is_file() else None
  if tokenizer is not None:
    tokenizer.check_fits(config.vocab_size)
  return Model(config, params, tokenizer, str(path))


# --------------------------------------------------------------------------- GGUF

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
  if arch not in ("llama", "qwen2", "qwen3"):
    raise WeightsError(
      f"unsupported GGUF architecture {arch!r}; sr2 supports llama, qwen2 and qwen3"
    )
  g = lambda key, default=None: meta.get(f"{arch}.{key}", default)
  d, n_heads = int(g("embedding_length")), int(g("attention.head_count"))
  return ModelConfig(
    arch=arch,
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
    qkv_bias=arch == "qwen2",
    qk_norm=arch == "qwen3",
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


def _flatten(params) -> dict[str, np.ndarray]:
  flat = {}
  for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
    key = ".".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)
    flat[key] = np.asarray(x)
  return flat


def _unflatten(config: ModelConfig, flat: Mapping[str, Any]) -> Any:
  def leaf(path, _spec):
    key = ".".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)
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


# --------------------------------------------------------------------------- entry point


def load(spec: str | os.PathLike, dtype: str = "float32") -> Model:
  """Loads a model by name, HF checkpoint directory or `.gguf` path.

  Args:
    spec: a named model (`sr2.assets.NAMED_MODELS`), a directory with config.json and
      safetensors, or a path to a `.gguf` file.
    dtype: "float32" or "bfloat16" params.

  Returns:
    `Model` with `.config`, `.params`, `.tokenizer`.
  """
  if dtype not in ("float32", "bfloat16"):
    raise WeightsError(f"dtype={dtype!r}; expected 'float32' or 'bfloat16'")
  s = str(spec)
  if s in assets.NAMED_MODELS:
    model = load_gguf(assets.fetch_named_gguf(s), dtype)
    return dataclasses.replace(model, source=s)
  path = pathlib.Path(s).expanduser()
  if path.is_dir():
    return load_hf_dir(path, dtype)
  if path.suffix == ".gguf":
    return load_gguf(path, dtype)
  if path.exists():
    raise WeightsError(f"{path} is neither a checkpoint directory nor a .gguf file")
  raise WeightsError(
    f"no model {s!r}: not a named model ({', '.join(sorted(assets.NAMED_MODELS))}), "
    "and no such directory or .gguf file"
  )
