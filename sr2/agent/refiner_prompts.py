"""The Meta-Refiner's prompts as token ids: what `agent/refiner.py` scores.

Two forms (`RefinerConfig.prompt`): "table12", the paper's prompt (Appendix L, Table 12;
`sr2.data.prompts.refiner_prompt`) over the trajectory's numbered steps, and
"continuation" (beyond the paper), the Actor's own prompt and trajectory followed by a
short question (`refiner_followup`). Either way the choice token ("0".."n", one token
each) follows the prompt directly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sr2.agent.rollout import Trajectory
from sr2.data.prompts import actor_prompt, chat_of, refiner_followup, refiner_prompt

PROMPTS = ("table12", "continuation")
MAX_CHOICES = 10  # "0".."9": one token each in every tokenizer sr2 uses


def choice_ids(tokenizer, n: int) -> list[int]:
  """Token ids of "0".."n"; each must be a single token."""
  if not 1 <= n < MAX_CHOICES:
    raise ValueError(f"the refiner scores 1 to {MAX_CHOICES - 1} steps, got {n}")
  ids = [tokenizer.encode(str(j)) for j in range(n + 1)]
  bad = [str(j) for j, t in enumerate(ids) if len(t) != 1]
  if bad:
    raise ValueError(f"the refiner needs single-token digits; {bad} are not one token")
  return [t[0] for t in ids]


def trajectory_steps(trajectory: Trajectory, tokenizer) -> list[tuple[str, str | None]]:
  """(assistant text, tool text or None) per assistant step, from the token masks."""
  ids = np.asarray(trajectory.response_ids)
  mask = np.asarray(trajectory.loss_mask, bool)
  out = []
  for start, end in trajectory.steps:
    model = ids[start:end][mask[start:end]].tolist()
    tool = ids[start:end][~mask[start:end]].tolist()
    out.append((tokenizer.decode(model), tokenizer.decode(tool).strip() if tool else None))
  return out


def followup_ids(tokenizer, n: int) -> list[int]:
  """The continuation form's question for a trajectory of `n` steps, tokenised."""
  return tokenizer.encode(refiner_followup(n))


def prompt_ids(
  tokenizer, question: str, steps: Sequence[tuple[str, str | None]], form: str = "table12"
) -> list[int]:
  """The refiner prompt for `question` and the steps; the choice token follows directly.

  "table12": `refiner_prompt` over the steps. "continuation": the Actor's prompt, each
  step's text and its tool text encoded in turn as the rollout and SFT encode them, then
  `followup_ids`. The tool text must be as the rollout appended it (`wrap_information`'s
  blank lines included; `trajectory_steps` strips them), else the tokens differ from the
  rollout's. Online, `refine` reads the rollout's own tokens instead (`judge_in_cache`).
  """
  if form not in PROMPTS:
    raise ValueError(f"prompt form {form!r}; expected one of {PROMPTS}")
  if form == "continuation":
    ids = tokenizer.encode(actor_prompt(question, chat_of(tokenizer)))
    for assistant, tool in steps:
      ids += tokenizer.encode(assistant) + (tokenizer.encode(tool) if tool else [])
    return ids + followup_ids(tokenizer, len(steps))
  steps = [(a if a.strip() else "(empty)", t) for a, t in steps]
  return tokenizer.encode(refiner_prompt(question, steps, tokenizer=chat_of(tokenizer)))
