"""A sample of each step's rollouts as JSON lines: what a trajectory viewer reads.

Every `rl.trajectories_every` steps the loop writes `DIR/trajectories/step_N.jsonl`: the
first `rl.trajectories_rows` rows of the step (in row order, whichever process ran them),
one JSON object each:
  step, row, question_id, question, golds;
  response (the text after the prompt), response_ids, steps (token offsets of each
  assistant step with its tool output), queries, doc_ids, observations, answer, finish,
  num_turns, invalid_turns;
  reward, outcome, process (the rewards of the final trajectory), draft_reward;
  draft (the Actor's first trajectory's text, when the Meta-Refiner revised it) and
  decisions (each judgement: revise, the cut step, the log-probs of "0".."n").
"""

from __future__ import annotations

import json
from typing import Any

from sr2 import files
from sr2.agent.rollout import Trajectory
from sr2.train.collect import Collected


def _trajectory(t: Trajectory) -> dict[str, Any]:
  return {
    "response": t.response,
    "response_ids": list(t.response_ids),
    "steps": [list(s) for s in t.steps],
    "queries": list(t.queries),
    "doc_ids": [list(d) for d in t.doc_ids],
    "observations": list(t.observations),
    "answer": t.answer,
    "finish": t.finish,
    "num_turns": t.num_turns,
    "invalid_turns": t.invalid_turns,
  }


def step_rows(got: Collected, step: int, first_row: int, limit: int) -> list[dict[str, Any]]:
  """JSON-able rows for `got`'s rows numbered `first_row...` that fall below `limit`."""
  out = []
  for i in range(max(0, min(len(got.trajectories), limit - first_row))):
    q, t, draft = got.questions[i], got.trajectories[i], got.drafts[i]
    out.append(
      {
        "step": step,
        "row": first_row + i,
        "question_id": q.id,
        "question": q.question,
        "golds": list(q.golds),
        **_trajectory(t),
        "reward": float(got.reward[i]),
        "outcome": float(got.outcome[i]),
        "process": float(got.process[i]),
        "draft_reward": float(got.draft_reward[i]),
        "draft": draft.response if any(d.revise for d in got.decisions[i]) else None,
        "decisions": [
          {"revise": d.revise, "step": d.step, "choice_logprobs": list(d.choice_logprobs)}
          for d in got.decisions[i]
        ],
      }
    )
  return out


def write_step(workdir: files.PathLike, step: int, rows: list[dict[str, Any]]):
  """Writes `rows` (every process's, in row order) to `workdir/trajectories/step_<step>.jsonl`.

  `workdir` may be local or gs://; returns the file's path.
  """
  path = files.path(workdir) / "trajectories" / f"step_{step}.jsonl"
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(json.dumps(r) + "\n" for r in sorted(rows, key=lambda r: r["row"])))
  return path
