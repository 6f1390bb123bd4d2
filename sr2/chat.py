"""One chat turn with a model: the library side of `experiments/ask.py`."""

from __future__ import annotations

import time
from typing import Any

import jax

from sr2 import models
from sr2.configlib import check_keys, from_config
from sr2.sampling import Sampler, rows_since, sampling_config

_FIELDS = ("model", "sampling", "max_new_tokens", "system_prompt", "seed")


def ask(config: Any, question: str) -> dict:
  """Answers `question` with the model and sampling of `config` (see configs/ask.py)."""
  check_keys(config.keys(), _FIELDS, "config", required=_FIELDS)  # fail before loading
  spec = from_config(models.ModelSpec, config.model, "config.model")
  sampling = sampling_config(config.sampling)
  if not isinstance(question, str) or not question.strip():
    raise ValueError("question must be a non-empty string")
  start = time.perf_counter()
  model = models.build(spec)
  load_s = time.perf_counter() - start
  if model.tokenizer is None:
    raise ValueError(f"model {spec.source!r} has no tokenizer; ask needs one")
  messages = [{"role": "user", "content": question}]
  if config.system_prompt:
    messages.insert(0, {"role": "system", "content": config.system_prompt})
  tok = model.tokenizer
  text = tok.apply_chat_template(messages) if tok.has_chat_template else question
  prompt = tok.encode(text)
  if len(prompt) + config.max_new_tokens > sampling.max_len:
    raise ValueError(
      f"prompt of {len(prompt)} tokens + max_new_tokens={config.max_new_tokens} exceeds "
      f"sampling.max_len={sampling.max_len}"
    )
  sampler = Sampler(model.config, tok, sampling)
  start = time.perf_counter()
  state = sampler.prefill(model.params, [prompt], rng=jax.random.key(config.seed))
  state = sampler.decode(model.params, state, config.max_new_tokens)
  out = rows_since(state, [len(prompt)])[0]
  gen_s = time.perf_counter() - start
  answer_ids = [t for t in out["tokens"] if t not in tok.eos_ids]
  return {
    "model": spec.source,
    "question": question,
    "answer": tok.decode(answer_ids, skip_special_tokens=True).strip(),
    "new_tokens": len(out["tokens"]),
    "finish": out["finish"],
    "load_s": round(load_s, 2),
    "generate_s": round(gen_s, 2),
  }
