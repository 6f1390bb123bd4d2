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


class ScriptedSampler:
  """A stand-in for `sampling.Sampler` whose rows "write" scripted turns.

  Each decode call makes every live row emit its next scripted text, tokenised and cut
  where the real sampler would stop: at the token completing a stop string, at EOS (the
  tokenizer's eos token text in the script), at the turn budget or the row capacity.
  `written[r]` records every position the fake model wrote, for mask checks.
  """

  def __init__(
    self, tokenizer, scripts, max_len: int = 2048, stop_strings=("</search>", "</answer>")
  ):
    import numpy as np

    from sr2.sampling import SamplingConfig
    from sr2.sampling import stops as stops_lib

    self.tokenizer = tokenizer
    self.config = SamplingConfig(max_len=max_len, stop_strings=tuple(stop_strings))
    self._scripts = [list(s) for s in scripts]
    self._pieces = stops_lib.token_bytes(tokenizer, len(tokenizer))
    self._np = np
    self.written: list[set[int]] = [set() for _ in scripts]
    self.decode_calls = 0

  def prefill(self, params, prompts, rng=None, batch=None, first_row=0):
    from sr2.sampling import SamplingState

    np, b, L = self._np, len(prompts), self.config.max_len
    tokens = np.zeros((b, L), np.int32)
    for r, p in enumerate(prompts):
      tokens[r, : len(p)] = p
    z = np.zeros((b,), np.int32)
    return SamplingState(
      tokens=tokens,
      logprobs=np.zeros((b, L), np.float32),
      lengths=np.array([len(p) for p in prompts], np.int32),
      turn_start=z.copy(),
      done=np.zeros((b,), bool),
      finish=z.copy(),
      stop_state=np.zeros((b, 0), np.int32),
      cache=[],
      rng=np.arange(b),  # each row's number stands in for its key: which script it writes
    )

  def decode(self, params, state, max_new_tokens):
    from sr2.sampling import stops as stops_lib
    from sr2.sampling.state import CONTEXT_FULL, EOS, MAX_NEW_TOKENS, STOP_STRING

    self.decode_calls += 1
    L = self.config.max_len
    for r in range(state.batch):
      if state.done[r]:
        continue
      row = self._row(state, r)
      text = (
        self._scripts[row].pop(0)
        if self._scripts[row]
        else self.tokenizer.decode([self.tokenizer.eos_id])
      )
      ids = self.tokenizer.encode(text)
      code = MAX_NEW_TOKENS
      at = stops_lib.match_text(self._pieces, ids, self.config.stop_strings)
      eos = [i for i, t in enumerate(ids) if t in self.tokenizer.eos_ids]
      if at is not None and (not eos or at < eos[0]):
        ids, code = ids[: at + 1], STOP_STRING
      elif eos:
        ids, code = ids[: eos[0] + 1], EOS
      if len(ids) > max_new_tokens:
        ids, code = ids[:max_new_tokens], MAX_NEW_TOKENS
      n = int(state.lengths[r])
      if n + len(ids) >= L:
        ids, code = ids[: L - n], CONTEXT_FULL
      state.tokens[r, n : n + len(ids)] = ids
      state.logprobs[r, n : n + len(ids)] = -0.5
      self.written[row].update(range(n, n + len(ids)))
      state.lengths[r] = n + len(ids)
      state.done[r], state.finish[r] = True, code
    return state

  def append(self, params, state, rows, token_chunks):
    for r, chunk in zip(rows, token_chunks, strict=True):
      n = int(state.lengths[r])
      if n + len(chunk) > self.config.max_len:
        raise ValueError(f"row {r} overflows")
      state.tokens[r, n : n + len(chunk)] = chunk
      state.lengths[r] = n + len(chunk)
      state.done[r], state.finish[r] = False, 0
    return state

  def truncate(self, state, rows, lengths):
    for r, n in zip(rows, lengths, strict=True):
      state.tokens[r, n:] = 0
      state.logprobs[r, n:] = 0.0
      state.lengths[r] = n
      state.done[r], state.finish[r] = False, 0
    return state

  # A row's "key" is its index in the full batch (the stand-in samples nothing); `select`
  # carries it like a real key, so each row still writes its own script.
  @staticmethod
  def _row(state, r: int) -> int:
    return int(state.rng[r])

  def select(self, state, rows, batch):
    import dataclasses

    from sr2.sampling.state import ROW_FIELDS

    np = self._np
    if len(rows) > batch:
      raise ValueError(f"{len(rows)} rows do not fit a batch of {batch}")
    idx = np.zeros(batch, np.int64)
    idx[: len(rows)] = rows
    fields = {f: getattr(state, f)[idx].copy() for f in ROW_FIELDS}
    fields["done"][len(rows) :] = True
    return dataclasses.replace(state, **fields)

  def merge(self, state, sub, rows):
    from sr2.sampling.state import ROW_FIELDS

    for i, r in enumerate(rows):
      for f in ROW_FIELDS:
        getattr(state, f)[r] = getattr(sub, f)[i]
    return state


class ListRetriever:
  """A retriever over a fixed list of passages that returns passages whose title is in the query."""

  def __init__(self, passages):
    from sr2.retrieval.bm25 import Hit

    self._hits = [Hit(p["id"], p["title"], p["text"], 1.0) for p in passages]
    self.calls: list[list[str]] = []

  def search(self, queries, k: int = 3):
    self.calls.append(list(queries))
    return [[h for h in self._hits if h.title.lower() in q.lower()][:k] for q in queries]
