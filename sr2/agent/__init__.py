"""Agent: the tag protocol, the multi-turn rollout, and the Meta-Refiner.

The tags and stop strings themselves live in `sr2.data.prompts`.
"""

from sr2.agent.protocol import (
  INVALID_ACTION_FEEDBACK,
  MAX_QUERY_CHARS,
  Step,
  Turn,
  TurnKind,
  cut_before_step,
  format_observation,
  invalid_action_feedback,
  parse_turn,
  split_steps,
)

__all__ = [
  "INVALID_ACTION_FEEDBACK",
  "MAX_QUERY_CHARS",
  "Step",
  "Turn",
  "TurnKind",
  "cut_before_step",
  "format_observation",
  "invalid_action_feedback",
  "parse_turn",
  "split_steps",
]
