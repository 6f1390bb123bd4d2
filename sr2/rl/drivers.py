"""The paper's three drivers of the Meta-Refiner's gain, estimated from one step's rollouts.

The paper's §5 (Prop. 4.1, 4.2, App. D):  ΔJ = A_prec + V_inter · (S_trim + Ḡ).

Per draft i of the step (the Actor's first trajectory):
  α_i     1 if the gate accepted it, 0 if it was revised (the rule is a threshold, so α is
          the acceptance event itself);
  R_i     its reward;
  Ĵ_i     one-sample estimate of J_trim(ŷ_i), the reward after cut-and-regenerate: for a
          revised draft, the reward of the trajectory that replaced it; for an accepted
          draft, the reward of a counterfactual regeneration at a cut drawn from the
          Trimmer's own distribution for it (a probe, never trained on);
  Ĝ_i     reward of regenerating draft i at a cut drawn from the Trimmer's distribution
          for another draft of the step (a random pairing), minus R_i: a cut independent of
          ŷ_i, whose mean estimates the baseline gain Ḡ = Σ_k E[π_h(k)]·E[G_k].

Plug-in estimators (means over the step's drafts; Cov with 1/n):
  V_inter = 1 − mean(α)
  A_prec  = Cov(α, R − Ĵ)
  ΔJ_trim = mean(Ĵ − R)                   (= S_trim + Ḡ)
  Ḡ       = mean(Ĝ)
  S_trim  = ΔJ_trim − Ḡ
With these, A_prec + V_inter · ΔJ_trim equals the observed ΔJ = mean(R_final) − mean(R)
exactly (App. B's algebra on the empirical distribution), which the tests check.

Without probes only V_inter, the observed ΔJ and the mean gain of revised drafts exist.
"""

from __future__ import annotations

import numpy as np


def observed(accepted: np.ndarray, r_draft: np.ndarray, r_final: np.ndarray) -> dict[str, float]:
  """What every step knows: revision rate, J_base, J_meta, ΔJ, mean gain where revised."""
  a = np.asarray(accepted, np.float64)
  r0, r1 = np.asarray(r_draft, np.float64), np.asarray(r_final, np.float64)
  revised = a == 0
  return {
    "v_inter": float(1.0 - a.mean()),
    "j_base": float(r0.mean()),
    "j_meta": float(r1.mean()),
    "delta_j": float(r1.mean() - r0.mean()),
    "gain_revised": float((r1 - r0)[revised].mean()) if revised.any() else 0.0,
  }


def decomposition(
  accepted: np.ndarray,
  r_draft: np.ndarray,
  j_trim: np.ndarray,
  g_random: np.ndarray,
) -> dict[str, float]:
  """A_prec, V_inter, S_trim, Ḡ and their predicted ΔJ from the probe estimates above."""
  a = np.asarray(accepted, np.float64)
  r, j, g = (np.asarray(x, np.float64) for x in (r_draft, j_trim, g_random))
  if not a.shape == r.shape == j.shape == g.shape or a.ndim != 1 or not len(a):
    raise ValueError("accepted, r_draft, j_trim and g_random must be equal-length 1-D arrays")
  v_inter = 1.0 - a.mean()
  d = r - j
  a_prec = np.mean((a - a.mean()) * (d - d.mean()))
  delta_trim = np.mean(j - r)
  g_bar = g.mean()
  return {
    "a_prec": float(a_prec),
    "v_inter": float(v_inter),
    "s_trim": float(delta_trim - g_bar),
    "g_bar": float(g_bar),
    "delta_j_trim": float(delta_trim),
    "delta_j_pred": float(a_prec + v_inter * delta_trim),
  }
