"""Writing a model as an HF checkpoint directory: config.json, model.safetensors, tokenizer.

The inverse of `weights.load_hf_dir`: the sr2 params become HF-named tensors in HF layout
([out, in] for linear weights) through the same name table (`weights.hf_layout`), so a
directory written here loads back into the same params in sr2 and into the same model in
HF transformers (`LlamaForCausalLM`, `Qwen2ForCausalLM`, `Qwen3ForCausalLM`). Training
writes its warm start and final policy this way (`DIR/warm_start/hf`, `DIR/final/hf`).
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np

from sr2 import files
from sr2.models.config import ModelConfig
from sr2.models.weights import hf_layout, same_layout

_CLASSES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}


def hf_config(config: ModelConfig, tokenizer=None) -> dict[str, Any]:
  """The HF `config.json` of `config` (and the tokenizer's special ids, when given)."""
  out = {
    "architectures": [_CLASSES[config.arch]],
    "model_type": config.arch,
    "vocab_size": config.vocab_size,
    "hidden_size": config.d_model,
    "intermediate_size": config.d_ff,
    "num_hidden_layers": config.n_layers,
    "num_attention_heads": config.n_heads,
    "num_key_value_heads": config.n_kv_heads,
    "head_dim": config.head_dim,
    "hidden_act": "silu",
    "rms_norm_eps": config.norm_eps,
    "rope_theta": config.rope_theta,
    "max_position_embeddings": config.max_seq_len,
    "tie_word_embeddings": config.tie_embeddings,
    "attention_bias": False if config.arch != "qwen2" else True,
    "torch_dtype": config.dtype,
  }
  if tokenizer is not None:
    out.update(
      bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id
    )
  return out


def hf_tensors(config: ModelConfig, params: Any) -> dict[str, np.ndarray]:
  """The params as HF-named numpy arrays in HF layout (layers unstacked if scanned)."""
  layers = params["layers"]
  if isinstance(layers, dict):  # scan_layers: one dict of arrays stacked on the layer axis
    layers = [jax.tree.map(lambda x, i=i: x[i], layers) for i in range(config.n_layers)]
  tree = {**params, "layers": layers}
  out = {}
  for name, (path, to_sr2, shape) in hf_layout(config).items():
    x = tree
    for key in path:
      x = x[key]
    x = np.asarray(jax.device_get(x))
    if to_sr2 is same_layout:  # embeddings, norms
      out[name] = x
    elif len(shape) == 1:  # biases: a reshape
      out[name] = x.reshape(shape)
    else:  # linear weights: HF [out, in], sr2 the transpose, its dims split by head
      out[name] = np.ascontiguousarray(x.reshape(shape[1], shape[0]).T)
  return out


def save_hf_dir(path: files.PathLike, config: ModelConfig, params: Any, tokenizer=None) -> None:
  """Writes `path`/config.json, model.safetensors and (with a tokenizer) its files.

  `path` may be local or gs://. Params must be addressable here (one process's copy).
  """
  from safetensors.numpy import save_file

  with files.local_dir(path) as folder:
    tensors = hf_tensors(config, params)
    save_file(tensors, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
      json.dump(hf_config(config, tokenizer), f, indent=1)
    if tokenizer is not None:
      tokenizer.save(folder)
