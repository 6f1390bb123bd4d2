"""HF checkpoint export: the same params back in sr2, the same logits in HF transformers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import hf_logits, make_hf_model

from sr2 import models
from sr2.models import export
from sr2.testing import tiny_byte_tokenizer


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_round_trip_through_an_hf_checkpoint(arch, tmp_path):
  """HF model -> sr2 -> exported directory: HF's logits and sr2's params are unchanged."""
  import transformers

  hf = make_hf_model(arch)
  hf.save_pretrained(tmp_path / "hf")
  m = models.load(tmp_path / "hf")
  export.save_hf_dir(tmp_path / "out", m.config, m.params)
  again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
  tokens = np.random.default_rng(0).integers(0, m.config.vocab_size, size=(2, 13))
  np.testing.assert_allclose(hf_logits(again, tokens), hf_logits(hf, tokens), atol=1e-6)
  back = models.load(tmp_path / "out")
  assert back.config == m.config
  for a, b in zip(jax.tree.leaves(back.params), jax.tree.leaves(m.params), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("scan_layers", [False, True])
def test_an_sr2_model_exports_with_its_tokenizer(scan_layers, tmp_path):
  """A randomly initialised sr2 model (untied head, scanned layers or not) and a tokenizer:
  HF transformers gives sr2's logits within 1e-4, and both tokenizers encode alike."""
  import transformers

  tok = tiny_byte_tokenizer()
  config = models.ModelConfig(
    arch="qwen3", vocab_size=len(tok), tie_embeddings=False, qk_norm=True, scan_layers=scan_layers
  )
  params = models.init_params(config, jax.random.key(1))
  export.save_hf_dir(tmp_path / "hf", config, params, tok)
  hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
  tokens = np.random.default_rng(1).integers(0, config.vocab_size, size=(2, 11))
  want = np.asarray(models.forward(config, params, jnp.asarray(tokens)))
  np.testing.assert_allclose(hf_logits(hf, tokens), want, atol=1e-4, rtol=1e-4)
  loaded = models.load(tmp_path / "hf")
  assert loaded.tokenizer.encode("a <search> b") == tok.encode("a <search> b")
  hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
  assert hf_tok.encode("a <search> b", add_special_tokens=False) == tok.encode("a <search> b")
