"""Loading weights: HF checkpoint directories, GGUF files and named models.

Everything funnels through one path: a mapping of HF tensor names (`model.layers.3.self_attn.
q_proj.weight`, ...) -> arrays in HF layout ([out, in]) becomes the sr2 params pytree
(`params_from_hf`). GGUF files are renamed to HF names first (`sr2.models.gguf`), which also
caches their dequantised conversion.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from sr2 import assets
from sr2.models import transformer
from sr2.models.config import ARCHITECTURES, DTYPES, ModelConfig, ModelSpec, preset
from sr2.models.tokenizer import Tokenizer

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


def check_architecture(arch: Any, what: str) -> None:
  """Raises WeightsError "unsupported <what>; ..." unless `arch` is one of ARCHITECTURES."""
  if arch not in ARCHITECTURES:
    raise WeightsError(f"unsupported {what}; sr2 supports llama, qwen2 and qwen3")


def family_config(arch: str, **fields: Any) -> ModelConfig:
  """The ModelConfig of a checkpoint of family `arch`, with the flags the family implies:
  q/k/v biases for qwen2, q/k RMSNorm for qwen3."""
  return ModelConfig(arch=arch, qkv_bias=arch == "qwen2", qk_norm=arch == "qwen3", **fields)


# --------------------------------------------------------------------------- HF names


def config_from_hf(cfg: Mapping[str, Any], dtype: str = "float32") -> ModelConfig:
  """ModelConfig from an HF `config.json` dict (llama, qwen2, qwen3)."""
  arch = cfg.get("model_type")
  check_architecture(
    arch, f"architecture model_type={arch!r} (architectures={cfg.get('architectures')})"
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
  return family_config(
    arch,
    vocab_size=cfg["vocab_size"],
    d_model=cfg["hidden_size"],
    n_layers=cfg["num_hidden_layers"],
    n_heads=n_heads,
    n_kv_heads=cfg.get("num_key_value_heads") or n_heads,
    head_dim=cfg.get("head_dim") or cfg["hidden_size"] // n_heads,
    d_ff=cfg["intermediate_size"],
    rope_theta=float(theta),
    norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
    tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),  # HF's default when absent
    max_seq_len=int(cfg.get("max_position_embeddings", 2048)),
    dtype=dtype,
  )


def same_layout(w):
  """The conversion of tensors whose layout HF and sr2 share (embeddings, norms)."""
  return w


def hf_layout(config: ModelConfig) -> dict[str, tuple[tuple[Any, ...], Callable, tuple]]:
  """HF tensor name -> (path into the sr2 params, HF array -> sr2 array, the HF shape).

  The one table of how sr2's params map to HF checkpoints: loading reads it one way,
  `export.hf_tensors` the other.
  """
  d, h, k, dh, f = config.d_model, config.n_heads, config.n_kv_heads, config.head_dim, config.d_ff
  same = same_layout
  out: dict[str, tuple[tuple[Any, ...], Callable, tuple]] = {
    "model.embed_tokens.weight": (("embed",), same, (config.vocab_size, d)),
    "model.norm.weight": (("final_norm",), same, (d,)),
  }
  if not config.tie_embeddings:
    out["lm_head.weight"] = (("head",), lambda w: w.T, (config.vocab_size, d))
  for i in range(config.n_layers):
    p = f"model.layers.{i}."
    at = lambda name, i=i: ("layers", i, name)
    out[p + "input_layernorm.weight"] = (at("attn_norm"), same, (d,))
    out[p + "post_attention_layernorm.weight"] = (at("mlp_norm"), same, (d,))
    out[p + "self_attn.q_proj.weight"] = (at("q"), lambda w: w.T.reshape(d, h, dh), (h * dh, d))
    out[p + "self_attn.k_proj.weight"] = (at("k"), lambda w: w.T.reshape(d, k, dh), (k * dh, d))
    out[p + "self_attn.v_proj.weight"] = (at("v"), lambda w: w.T.reshape(d, k, dh), (k * dh, d))
    out[p + "self_attn.o_proj.weight"] = (at("o"), lambda w: w.T.reshape(h, dh, d), (d, h * dh))
    out[p + "mlp.gate_proj.weight"] = (at("gate"), lambda w: w.T, (f, d))
    out[p + "mlp.up_proj.weight"] = (at("up"), lambda w: w.T, (f, d))
    out[p + "mlp.down_proj.weight"] = (at("down"), lambda w: w.T, (d, f))
    if config.qkv_bias:
      out[p + "self_attn.q_proj.bias"] = (at("q_bias"), lambda w: w.reshape(h, dh), (h * dh,))
      out[p + "self_attn.k_proj.bias"] = (at("k_bias"), lambda w: w.reshape(k, dh), (k * dh,))
      out[p + "self_attn.v_proj.bias"] = (at("v_bias"), lambda w: w.reshape(k, dh), (k * dh,))
    if config.qk_norm:
      out[p + "self_attn.q_norm.weight"] = (at("q_norm"), same, (dh,))
      out[p + "self_attn.k_norm.weight"] = (at("k_norm"), same, (dh,))
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
  layout = hf_layout(config)
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
  for name, (path, fn, _) in layout.items():
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


# --------------------------------------------------------------------------- entry point


def load(spec: str | os.PathLike, dtype: str = "float32", seed: int = 0) -> Model:
  """Loads a model by name, HF checkpoint directory or `.gguf` path.

  Args:
    spec: a named model (`sr2.assets.NAMED_MODELS`), a directory with config.json and
      safetensors, a path to a `.gguf` file, or `preset:<name>` (random params, no
      tokenizer).
    dtype: "float32" or "bfloat16" params.
    seed: init seed for `preset:` specs.

  Returns:
    `Model` with `.config`, `.params`, `.tokenizer`.
  """
  from sr2.models.gguf import load_gguf  # gguf.py builds on this module

  if dtype not in DTYPES:
    raise WeightsError(f"dtype={dtype!r}; expected 'float32' or 'bfloat16'")
  s = str(spec)
  if s.startswith("preset:"):
    config = preset(s[len("preset:") :], dtype=dtype)
    return Model(config, transformer.init_params(config, jax.random.key(seed)), None, s)
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


def build(spec: ModelSpec) -> Model:
  """The model a `ModelSpec` (an experiment's `config.model`) names, in its layer layout
  (`scan_layers`) and rematerialisation (`remat`)."""
  model = load(spec.source, dtype=spec.dtype, seed=spec.seed)
  config = model.config.replace(scan_layers=spec.scan_layers, remat=spec.remat)
  params = transformer.stack_layers(model.params) if spec.scan_layers else model.params
  return dataclasses.replace(model, config=config, params=params)
