"""The paper's three drivers: the decomposition identity and the observed gain."""

import numpy as np
import pytest

from sr2.rl import drivers


def test_decomposition_identity_on_hand_numbers():
  # Four drafts: the gate accepts 0 and 1, revises 2 and 3.
  accepted = np.array([1, 1, 0, 0])
  r = np.array([1.0, 0.0, 0.0, 0.0])  # draft rewards
  j = np.array([0.0, 1.0, 1.0, 0.0])  # rewards after cut-and-regenerate (probe / final)
  g = np.array([0.0, 0.0, 1.0, 0.0])  # random-cut gains
  d = drivers.decomposition(accepted, r, j, g)
  # V = 1 - 2/4 = 0.5. R - J = (1, -1, -1, 0), mean -0.25; alpha - mean = (.5, .5, -.5, -.5).
  # Cov = mean(.5*1.25, .5*-.75, -.5*-.75, -.5*.25) = (0.625 - 0.375 + 0.375 - 0.125) / 4 = 0.125.
  assert d["v_inter"] == 0.5 and d["a_prec"] == pytest.approx(0.125)
  # dJ_trim = mean(J - R) = 0.25; G = 0.25; S_trim = 0.
  assert d["delta_j_trim"] == pytest.approx(0.25) and d["g_bar"] == pytest.approx(0.25)
  assert d["s_trim"] == pytest.approx(0.0)
  # The mixture's reward: accepted keep R, revised take J -> (1, 0, 1, 0), mean .5 vs .25.
  obs = drivers.observed(accepted, r, np.where(accepted == 1, r, j))
  assert obs["delta_j"] == pytest.approx(0.25) == pytest.approx(d["delta_j_pred"])
  assert obs["v_inter"] == 0.5 and obs["gain_revised"] == pytest.approx(0.5)


def test_decomposition_identity_holds_on_random_data():
  rng = np.random.default_rng(0)
  for _ in range(20):
    n = int(rng.integers(2, 50))
    a = rng.integers(0, 2, n)
    r, j = rng.integers(0, 2, n) * 1.5, rng.integers(0, 2, n) * 1.0
    d = drivers.decomposition(a, r, j, rng.normal(size=n))
    final = np.where(a == 1, r, j)
    assert d["delta_j_pred"] == pytest.approx(final.mean() - r.mean())


def test_decomposition_rejects_ragged_input():
  with pytest.raises(ValueError, match="equal-length"):
    drivers.decomposition(np.ones(3), np.ones(3), np.ones(2), np.ones(3))
