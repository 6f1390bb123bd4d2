"""A roofline projection of one GRPO step's seconds on a TPU slice. A projection: nothing ran.

A program's seconds on a chip are max(FLOPs / peak FLOP/s, bytes / HBM bandwidth), with the
chip's published peaks (sr2/parallel/topology.py). Where the figures come from:
  * the rollout's programs (`extend`, `decode`, `judge`, `score_after`): XLA's cost
    analysis of the program as compiled for one host's chips (`compile_programs` records,
    `roofline_s`). XLA counts a loop body once, so decode's figure is one token step of
    the chunk's rows, which is what the projection multiplies;
  * the update and the reference log-probs, whose micro-batch and layer loops XLA also
    counts once: matmul and causal-attention FLOPs counted here (`model_flops_per_token`),
    spread evenly over every chip of the slice, compute-bound.

What a step runs, per arm (`project`):
  * rollouts: each host takes B·G / hosts rows in chunks of `rollout_rows` (the hosts run
    at once). A chunk costs one `extend` per turn (the prefill, then the observations; at
    the compiled chunk width, an upper bound) and `max_turns x max_turn_tokens` decode
    steps: every row using every turn and every token, an upper bound;
  * Search-R2 adds one judgement of every row, and the revised rows' regeneration: in the
    chunk's own batch, `regenerated_turns` of the turns again (decode at the chunk's cost
    per step: near enough when decode reads weights more than cache);
  * the reference log-probs over every row of the batch, and the update (`ppo_epochs`
    passes): at `rl.max_len` tokens a row, the batch's bucket once its longest row reaches
    the cap. Under joint optimisation the batch also holds the refiner's decision rows,
    each a prompt as long as the trajectory it judges.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from sr2.aot.plan import Plan
from sr2.models.config import ModelConfig
from sr2.parallel.topology import Topology

# The paper's measured seconds per step (Search-R1, Search-R2) on its GPUs (Table 5).
PAPER_TABLE5 = {
  "qwen2.5-7b": (177.8, 193.2),
  "qwen3-8b": (141.5, 147.3),
  "qwen2.5-32b": (458.4, 469.5),
}
PAPER_MEAN_OVERHEAD = 0.0506


def matmul_params(model: ModelConfig) -> int:
  """Weights a token's forward pass multiplies by: projections, MLP and the LM head."""
  d, h, k, dh, f = model.d_model, model.n_heads, model.n_kv_heads, model.head_dim, model.d_ff
  return model.n_layers * (2 * d * h * dh + 2 * d * k * dh + 3 * d * f) + d * model.vocab_size


def model_flops_per_token(model: ModelConfig, length: int, train: bool) -> float:
  """FLOPs per token of a row of `length` tokens: forward only, or forward, backward and
  (under `remat="full"`) the forward again. Causal attention averages length / 2 keys."""
  attention = 2 * 2 * model.n_layers * model.n_heads * model.head_dim * (length / 2)
  forward = 2 * matmul_params(model) + attention
  if not train:
    return forward
  return forward * (4 if model.remat == "full" else 3)


def _seconds(records: Mapping[str, dict], name: str) -> float:
  r = records.get(name)
  if r is None or r.get("roofline_s") is None:
    raise ValueError(f"the projection needs a compiled {name!r} record with FLOPs and bytes")
  return float(r["roofline_s"])


def project(
  plan: Plan,
  topo: Topology,
  records: Mapping[str, dict],
  hosts: int,
  regenerated_turns: float = 0.5,
  backbone: str | None = None,
) -> dict:
  """Projected seconds per step for Search-R1 and Search-R2 (see the module docstring).

  Args:
    plan: the config's plan (`make_plan`).
    topo: the slice.
    records: compiled records by program name: `extend`, `decode`, and `judge` or
      `score_after` (as the config's refiner prompt needs).
    hosts: hosts of the slice (each rolls out its share).
    regenerated_turns: share of the turns a revised row decodes again.
    backbone: the model preset's name; the paper's own Table 5 seconds come along when it
      measured that backbone.
  """
  gen, chips = topo.generation, topo.chips
  rl, ro, g = plan.rl, plan.rollout, plan.grpo
  rows = rl.prompts_per_step * g.group_size
  chunks = math.ceil(rows / hosts / plan.rollout_rows)
  extend_s, decode_s = _seconds(records, "extend"), _seconds(records, "decode")
  turn_s = ro.max_turn_tokens * decode_s + extend_s
  rollout_s = chunks * ro.max_turns * turn_s
  slice_flops = gen.peak_flops * chips

  def reference_and_update(batch_rows: int) -> tuple[float, float]:
    tokens = batch_rows * rl.max_len
    ref = tokens * model_flops_per_token(plan.model, rl.max_len, train=False) / slice_flops
    upd = g.ppo_epochs * tokens * model_flops_per_token(plan.model, rl.max_len, train=True)
    return ref, upd / slice_flops

  ref1, upd1 = reference_and_update(rows)
  r1 = dict(rollout_s=rollout_s, reference_s=ref1, update_s=upd1)
  if plan.refiner.prompt == "table12":
    passes = math.ceil(rows / hosts / records["judge"]["shape"]["rows"])
    judge_s = passes * _seconds(records, "judge")
  else:
    judge_s = chunks * _seconds(records, "score_after")
  regenerate_s = chunks * regenerated_turns * ro.max_turns * turn_s
  r2 = dict(rollout_s=rollout_s, judge_s=judge_s, regenerate_s=regenerate_s)
  r2["reference_s"], r2["update_s"] = reference_and_update(plan.update_rows)
  total1, total2 = sum(r1.values()), sum(r2.values())
  return {
    "projection": True,
    "topology": topo.name,
    "hosts": hosts,
    "chunks_per_host": chunks,
    "assumed": dict(
      turns=ro.max_turns,
      tokens_per_turn=ro.max_turn_tokens,
      regenerated_turns=regenerated_turns,
      revised_rows="some in every chunk (the paper revises about 30% of rollouts)",
      batch_tokens_per_row=rl.max_len,
    ),
    "search_r1": {**_rounded(r1), "total_s": round(total1, 4)},
    "search_r2": {**_rounded(r2), "total_s": round(total2, 4)},
    "overhead": round(total2 / total1 - 1, 4),
    "paper_mean_overhead": PAPER_MEAN_OVERHEAD,
    "paper_table5_s": PAPER_TABLE5.get((backbone or "").removesuffix("-instruct")),
  }


def _rounded(d: dict) -> dict:
  return {k: round(v, 4) for k, v in d.items()}
