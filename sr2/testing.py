"""Test helpers that ship with sr2: small reference loops and fakes used by tests and notebooks.

Nothing here is on a training path; the production sampler is `sr2.sampling`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from sr2.models import transformer
from sr2.models.config import ModelConfig


@functools.partial(jax.jit, static_argnames=("config", "max_new_tokens"))
def greedy_decode(
  config: ModelConfig, params, prompt_BxP: jax.Array, max_new_tokens: int
) -> jax.Array:
  """Greedy continuation of equal-length prompts with the KV cache (a reference loop).

  Returns:
    int32 [B, max_new_tokens] generated ids (no stopping).
  """
  b, p = prompt_BxP.shape
  cache = transformer.init_cache(config, b, p + max_new_tokens)
  pos = jnp.broadcast_to(jnp.arange(p), (b, p))
  logits, cache = transformer.forward_with_cache(config, params, prompt_BxP, pos, cache)
  first = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)

  def step(carry, t):
    tok, cache = carry
    logits, cache = transformer.forward_with_cache(
      config, params, tok[:, None], jnp.full((b, 1), t), cache
    )
    nxt = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)
    return (nxt, cache), tok

  _, toks = jax.lax.scan(step, (first, cache), p + jnp.arange(max_new_tokens))
  return toks.T


def tiny_byte_tokenizer(
  words=("</search>", "</answer>", "<search>", "<answer>", "search", "answer", "the"),
):
  """A byte-level BPE tokenizer: 256 byte tokens, merges that spell `words`, and `<eos>`.

  Multi-byte tokens make stop strings span and split tokens the way real BPE does.
  """
  from tokenizers import Tokenizer as RustTokenizer
  from tokenizers import decoders, models, pre_tokenizers
  from transformers import PreTrainedTokenizerFast
  from transformers.convert_slow_tokenizer import bytes_to_unicode

  from sr2.models.tokenizer import Tokenizer

  byte_char = bytes_to_unicode()
  vocab = {byte_char[b]: b for b in range(256)}
  merges = []
  for word in words:
    pieces = [byte_char[b] for b in word.encode("utf-8")]
    cur = pieces[0]
    for nxt in pieces[1:]:
      merged = cur + nxt
      if merged not in vocab:
        vocab[merged] = len(vocab)
        merges.append((cur, nxt))
      cur = merged
  vocab["<eos>"] = len(vocab)
  rust = RustTokenizer(models.BPE(vocab=vocab, merges=merges))
  rust.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
  rust.decoder = decoders.ByteLevel()
  hf = PreTrainedTokenizerFast(tokenizer_object=rust, eos_token="<eos>", pad_token="<eos>")
  return Tokenizer(hf)
