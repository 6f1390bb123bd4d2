"""SmolLM2-135M-Instruct, training-free: direct, CoT, RAG and the search agent on a multi-hop set.

  python experiments/evaluate.py --config configs/smollm2_hotpotqa.py --workdir /tmp/eval_hotpotqa
  python experiments/evaluate.py --config configs/smollm2_hotpotqa.py --workdir /tmp/e --limit 8
  python experiments/evaluate.py --config configs/smollm2_hotpotqa.py:musique --workdir /tmp/e

The argument after ':' names the multi-hop set (hotpotqa | 2wikimultihopqa | musique);
configs/smollm2_2wikimultihopqa.py and configs/smollm2_musique.py are aliases. Questions are
the first `eval.limit` of `<data_root>/multihop/<set>/dev.jsonl`; BM25 indexes the pooled
paragraphs of that whole file. Greedy decoding everywhere. Budgets are sized so a 135M
model's rambling stays bounded on 2 CPU cores: at most 64 answer tokens (direct, rag), 256
(cot), and 4 agent turns of 128 tokens each.
"""

import ml_collections

from sr2.data.examples import default_data_root

MULTIHOP_SETS = ("hotpotqa", "2wikimultihopqa", "musique")


def get_config(arg: str = "hotpotqa") -> ml_collections.ConfigDict:
  if arg not in MULTIHOP_SETS:
    raise ValueError(f"unknown multi-hop set {arg!r}; expected one of {MULTIHOP_SETS}")
  config = ml_collections.ConfigDict()
  config.model = ml_collections.ConfigDict(
    dict(
      source="smollm2-135m-instruct",  # named model, HF checkpoint dir, .gguf path
      dtype="float32",  # params dtype: float32 | bfloat16
      seed=0,  # init seed, for preset: sources only
    )
  )
  config.sampling = ml_collections.ConfigDict(
    dict(
      method="greedy",  # greedy | temperature | top_k | top_p (the paper evaluates greedy)
      # Row capacity in tokens. The agent's worst case: prompt (~300 with the chat template)
      # + 4 turns x 128 + 3 observations x (500 + ~20 tag tokens) ~= 2,370 < 2,560.
      max_len=2560,
    )
  )
  config.rollout = ml_collections.ConfigDict(
    dict(
      max_turns=4,  # assistant turns per question (the paper's B = 4)
      # New tokens per agent turn: enough for a short <think> and a <search>/<answer>; a
      # rambling turn is cut here and gets the invalid-action feedback.
      max_turn_tokens=128,
      top_k=3,  # passages per search (also the rag baseline's documents)
      max_obs_tokens=500,  # cap on one observation's documents, in tokens (also rag's)
      invalid_feedback=True,  # after an invalid turn, append feedback and go on
      batch_rows=0,  # rows per rollout call in training; 0 = a process's whole step
    )
  )
  config.retrieval = ml_collections.ConfigDict(
    dict(
      method="lucene",  # BM25 variant: lucene | okapi
      k1=1.5,  # term-frequency saturation
      b=0.75,  # document-length normalisation in [0, 1]
      stopwords="en",  # stopword list removed from passages and queries: en | None
    )
  )
  config.eval = ml_collections.ConfigDict(
    dict(
      datasets=(f"multihop/{arg}",),  # multihop/<set> or qa/<name>, optionally :<split>
      methods=("direct", "cot", "rag", "agent"),  # run in this order
      split="dev",  # split of datasets that name none
      data_root=default_data_root(),  # holds multihop/ and qa/: $SR2_DATA, else <repo>/data
      corpus="",  # corpus of qa/ datasets (JSONL or saved index dir); multihop pools its own
      corpora=ml_collections.ConfigDict(),  # per qa/ set name: a corpus overriding `corpus`
      limit=100,  # first N questions per dataset; 0 = all (--limit overrides)
      batch_size=16,  # questions per sampler call; the last batch is padded with empty rows
      max_new_tokens=64,  # answer budget of direct and rag, in tokens
      cot_max_new_tokens=256,  # reasoning + answer budget of cot, in tokens
      seed=0,  # sampling seed (unused by greedy)
    )
  )
  return config
