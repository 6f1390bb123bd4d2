"""Shared test helpers: tiny HF reference models (torch, tests only) and paths."""

import os
import pathlib

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"
# Configs default their data root to $SR2_DATA; the tests read the data beside the repo.
if SHARED_DATA.is_dir():
  os.environ.setdefault("SR2_DATA", str(SHARED_DATA))

# Tiny shapes per family; qwen3 uses head_dim != hidden/heads on purpose.
TINY_HF = {
  "llama": dict(
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=128,
    rope_theta=5000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
    max_position_embeddings=256,
  ),
  "qwen2": dict(
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=128,
    rope_theta=1e6,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
    max_position_embeddings=256,
  ),
  "qwen3": dict(
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    vocab_size=128,
    rope_theta=1e6,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
    max_position_embeddings=256,
  ),
}


def make_hf_model(arch: str, seed: int = 0, **overrides):
  """A randomly initialised HF causal LM of family `arch`, every weight perturbed.

  HF initialises norms to 1 and biases to 0; perturbing them makes a wrong mapping of
  norms or biases visible in the logits.
  """
  import torch
  import transformers

  cls_cfg, cls_model = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
  }[arch]
  torch.manual_seed(seed)
  cfg = cls_cfg(**{**TINY_HF[arch], **overrides})
  model = cls_model(cfg).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("norm.weight"):
        p.copy_(1.0 + 0.1 * torch.randn_like(p))
      elif name.endswith("bias"):
        p.copy_(0.1 * torch.randn_like(p))
  return model


def hf_logits(model, tokens: np.ndarray) -> np.ndarray:
  import torch

  with torch.no_grad():
    return model(torch.as_tensor(tokens, dtype=torch.long)).logits.float().numpy()


@pytest.fixture
def sr2_cache(tmp_path, monkeypatch):
  """An isolated $SR2_CACHE."""
  monkeypatch.setenv("SR2_CACHE", str(tmp_path / "sr2_cache"))
  return tmp_path / "sr2_cache"
