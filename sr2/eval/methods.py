"""The evaluated methods on one batch of questions: three training-free baselines and the agent.

  direct  the question, answer inside `<answer>` at once (no retrieval, no reasoning).
  cot     reason inside `<think>`, then answer (no retrieval).
  rag     BM25 top-k for the question, the documents in the prompt, then answer.
  agent   the multi-turn search agent (`sr2.agent.rollout`), `<search>` as often as it likes.

Each batch runs on one sampler built for its method, prefilled at a fixed batch size so
the last, shorter batch reuses the compiled programs (its missing rows stay empty).

Prediction. The agent's is `extract_answer` of its response, strictly: the protocol asks
for `<answer>` and the training reward reads it the same way. The baselines are read
leniently, because small models often ignore the tags when nothing trains them to use
them: without a complete `<answer>...</answer>` the prediction falls back to the first
non-empty line of the generated text after dropping `<think>...</think>` blocks and any
tags (text after an unclosed `<answer>` is taken as the answer). The record says so
(`fallback: true`), and the fallback can only raise the baselines' scores, which keeps
the agent-vs-baseline comparison conservative.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from sr2.agent import rollout as rollout_lib
from sr2.agent.rollout import RolloutConfig
from sr2.data import prompts
from sr2.data.examples import QAExample
from sr2.retrieval.corpus import format_documents
from sr2.rewards.qa import extract_answer
from sr2.sampling import rows_since

METHODS = ("direct", "cot", "rag", "agent")
RETRIEVAL_METHODS = ("rag", "agent")  # methods that need a corpus index
PROMPT_TOO_LONG = "prompt_too_long"  # finish of a question whose prompt fills the row

_THINK_BLOCK = re.compile(
  f"{re.escape(prompts.THINK_OPEN)}.*?(?:{re.escape(prompts.THINK_CLOSE)}|$)", re.S
)
_TAG = re.compile("|".join(re.escape(t) for t in prompts.TAGS))


def stop_strings(method: str) -> tuple[str, ...]:
  """Where a turn ends: the baselines stop at `</answer>`, the agent also at `</search>`."""
  if method not in METHODS:
    raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
  return prompts.STOP_STRINGS if method == "agent" else (prompts.ANSWER_CLOSE,)


def read_prediction(text: str) -> tuple[str, bool]:
  """`(prediction, fallback)` of a baseline's generated text (see the module docstring)."""
  answer = extract_answer(text)
  if answer is not None:
    return answer, False
  text = _THINK_BLOCK.sub("\n", text)
  if prompts.ANSWER_OPEN in text:
    text = text.rsplit(prompts.ANSWER_OPEN, 1)[1]
  lines = (line.strip() for line in _TAG.sub(" ", text).splitlines())
  return next((line for line in lines if line), ""), True


def _too_long(record: dict[str, Any]) -> dict[str, Any]:
  return {
    **record,
    "prediction": None,
    "fallback": False,
    "answered": False,
    "valid_searches": 0,
    "finish": PROMPT_TOO_LONG,
  }


def run_baseline(
  sampler,
  params,
  method: str,
  examples: Sequence[QAExample],
  *,
  retriever=None,
  rollout: RolloutConfig,
  batch_size: int,
  max_new_tokens: int,
  rng=None,
) -> list[dict[str, Any]]:
  """One batch of a baseline; per question: prediction, fallback, counts, finish, response.

  `rag` retrieves `rollout.top_k` passages per question (one batched call) and caps the
  documents at `rollout.max_obs_tokens` tokens, as the agent's observations are.
  """
  tok = sampler.tokenizer
  chat = prompts.chat_of(tok)
  base = [
    {"searches": 0, "turns": 1, "new_tokens": 0, "response": "", "queries": [], "doc_ids": []}
    for _ in examples
  ]
  if method == "rag":
    if retriever is None:
      raise ValueError("method 'rag' needs a retriever")
    hits = retriever.search([ex.question for ex in examples], k=rollout.top_k)
    texts = []
    for ex, rec, row_hits in zip(examples, base, hits, strict=True):
      docs = format_documents(row_hits, tokenizer=tok, max_tokens=rollout.max_obs_tokens)
      rec.update(searches=1, queries=[ex.question], doc_ids=[[h.id for h in row_hits]])
      texts.append(prompts.rag_prompt(ex.question, docs, chat))
  elif method == "direct":
    texts = [prompts.direct_prompt(ex.question, chat) for ex in examples]
  elif method == "cot":
    texts = [prompts.cot_prompt(ex.question, chat) for ex in examples]
  else:
    raise ValueError(f"run_baseline runs direct, cot or rag, got {method!r}")
  ids = [tok.encode(t) for t in texts]
  fits = [i for i, p in enumerate(ids) if len(p) < sampler.config.max_len]
  out = [_too_long(rec) for rec in base]
  if not fits:
    return out
  state = sampler.prefill(params, [ids[i] for i in fits], rng, batch=batch_size)
  state = sampler.decode(params, state, max_new_tokens)
  rows = rows_since(state, [len(ids[i]) for i in fits])
  for i, row in zip(fits, rows, strict=True):
    written = [t for t in row["tokens"] if t not in tok.eos_ids]
    text = tok.decode(written, skip_special_tokens=True)
    prediction, fallback = read_prediction(text)
    out[i] = {
      **base[i],
      "prediction": prediction,
      "fallback": fallback,
      "answered": not fallback,  # closed an <answer>
      "valid_searches": 0,  # the model does not search; rag's retrieval is not its own
      "new_tokens": len(row["tokens"]),
      "finish": row["finish"],
      "response": text,
    }
  return out


def run_agent(
  sampler,
  params,
  examples: Sequence[QAExample],
  *,
  retriever,
  rollout: RolloutConfig,
  batch_size: int,
  rng=None,
) -> list[dict[str, Any]]:
  """One batch of the search agent (the rollout loop, prefilled at `batch_size` rows)."""
  tok = sampler.tokenizer
  chat = prompts.chat_of(tok)
  ids = [tok.encode(prompts.actor_prompt(ex.question, chat)) for ex in examples]
  agent = rollout_lib.Agent(sampler, retriever, rollout)
  state, records = rollout_lib.run(agent, params, ids, rng=rng, batch=batch_size)
  out = []
  for traj in rollout_lib.finish(state, records, tok):
    out.append(
      {
        "prediction": traj.answer,
        "fallback": False,
        "searches": traj.num_searches,
        "answered": traj.answer is not None,  # a valid turn closed an <answer>
        # Searches the protocol parsed whose query retrieved at least one passage.
        "valid_searches": sum(1 for ids in traj.doc_ids if ids),
        "turns": traj.num_turns,
        "new_tokens": int(sum(traj.loss_mask)),
        "finish": traj.finish,
        "response": traj.response,
        "queries": list(traj.queries),
        "doc_ids": [list(d) for d in traj.doc_ids],
      }
    )
  return out
