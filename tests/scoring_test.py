"""Batched choice scoring: sorted passes give the one-pass scores; bad input is named."""

import jax
import numpy as np
import pytest

from sr2 import models
from sr2.agent import scoring


def test_score_choices_in_sorted_passes_equal_one_pass():
  config = models.preset("tiny", vocab_size=64, n_layers=2)
  params = models.init_params(config, jax.random.key(1), std=0.3)
  rng = np.random.default_rng(0)
  # Lengths straddle the 128 and 256 buckets, so the passes pad to different lengths.
  prompts = [rng.integers(1, 64, n).tolist() for n in (200, 5, 130, 60, 250, 17, 90)]
  choices = [rng.integers(0, 64, 2 + i % 3).tolist() for i in range(len(prompts))]
  one = scoring.score_choices(config, params, prompts, choices)
  for rows in (1, 3, 8):
    got = scoring.score_choices(config, params, prompts, choices, rows_per_pass=rows)
    for a, b, c in zip(got, one, choices, strict=True):
      assert a.shape == (len(c),)
      np.testing.assert_allclose(a, b, atol=2e-5)
  with pytest.raises(ValueError, match="rows_per_pass"):
    scoring.score_choices(config, params, prompts, choices, rows_per_pass=-1)
  with pytest.raises(ValueError, match=r"prompts \[1\] are empty"):
    scoring.score_choices(config, params, [[3], []], [[1], [2]], rows_per_pass=2)
