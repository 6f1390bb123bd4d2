"""Sampling methods as small frozen dataclasses, and the one `sample` function over them.

Each method defines the distribution a token is drawn from; `sample` returns the token and
its log-probability under that distribution. Greedy has no proper distribution (a point
mass would give log-probability 0 everywhere), so for greedy the reported log-probability is
the model's own, log softmax(logits), which is what evaluation and tests want.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


def _check_temperature(temperature: float) -> None:
  if not temperature > 0:
    raise ValueError(f"temperature must be > 0, got {temperature}")


@dataclasses.dataclass(frozen=True)
class Greedy:
  """argmax of the logits."""


@dataclasses.dataclass(frozen=True)
class Temperature:
  """Softmax(logits / temperature)."""

  temperature: float = 1.0

  def __post_init__(self):
    _check_temperature(self.temperature)


@dataclasses.dataclass(frozen=True)
class TopK:
  """The k most likely tokens, renormalised, at a temperature."""

  k: int = 50
  temperature: float = 1.0

  def __post_init__(self):
    if not isinstance(self.k, int) or self.k < 1:
      raise ValueError(f"top-k needs k >= 1, got {self.k!r}")
    _check_temperature(self.temperature)


@dataclasses.dataclass(frozen=True)
class TopP:
  """The smallest set of most likely tokens whose mass reaches p (nucleus), at a temperature."""

  p: float = 0.9
  temperature: float = 1.0

  def __post_init__(self):
    if not 0 < self.p <= 1:
      raise ValueError(f"top-p needs 0 < p <= 1, got {self.p}")
    _check_temperature(self.temperature)


Method = Greedy | Temperature | TopK | TopP
_NEG_INF = -1e30


def parse_method(
  name: str, temperature: float = 1.0, top_k: int = 50, top_p: float = 0.9
) -> Method:
  """A method from config fields: name in {greedy, temperature, top_k, top_p}."""
  if name == "greedy":
    return Greedy()
  if name == "temperature":
    return Temperature(temperature)
  if name == "top_k":
    return TopK(top_k, temperature)
  if name == "top_p":
    return TopP(top_p, temperature)
  raise ValueError(
    f"unknown sampling method {name!r}; expected greedy, temperature, top_k or top_p"
  )


def filtered_logits(method: Method, logits_BxV: jax.Array) -> jax.Array:
  """The float32 logits of the distribution `method` samples from (-inf outside its support)."""
  logits = logits_BxV.astype(jnp.float32)
  if isinstance(method, Greedy):
    return logits
  logits = logits / method.temperature
  if isinstance(method, TopK):
    k = min(method.k, logits.shape[-1])
    kth = jax.lax.top_k(logits, k)[0][:, -1:]
    return jnp.where(logits >= kth, logits, _NEG_INF)
  if isinstance(method, TopP):
    sorted_desc = -jnp.sort(-logits, axis=-1)
    probs = jax.nn.softmax(sorted_desc, axis=-1)
    # Keep a token if the mass strictly before it is < p: the first token always survives.
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    keep = mass_before < method.p
    threshold = jnp.min(jnp.where(keep, sorted_desc, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits >= threshold, logits, _NEG_INF)
  return logits


def sample(
  method: Method, logits_BxV: jax.Array, rng: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Draws one token per row; `rng` is one key, or one key per row ([B]).

  With a key per row, a row's draw depends only on its own key and logits, not on the
  batch it sits in: how rows are split into chunks, devices or processes changes nothing.

  Returns:
    (tokens int32 [B], log-prob under the sampling distribution [B], raw model log-prob at
    temperature 1 without filtering [B]).
  """
  raw = jax.nn.log_softmax(logits_BxV.astype(jnp.float32), axis=-1)
  if isinstance(method, Greedy):
    tokens = jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    lp = _pick(raw, tokens)
    return tokens, lp, lp
  dist = jax.nn.log_softmax(filtered_logits(method, logits_BxV), axis=-1)
  if rng.ndim:
    tokens = jax.vmap(jax.random.categorical)(rng, dist).astype(jnp.int32)
  else:
    tokens = jax.random.categorical(rng, dist, axis=-1).astype(jnp.int32)
  return tokens, _pick(dist, tokens), _pick(raw, tokens)


def _pick(logprobs_BxV: jax.Array, tokens_B: jax.Array) -> jax.Array:
  """Each row's log-prob of its token, [B]."""
  return jnp.take_along_axis(logprobs_BxV, tokens_B[:, None], axis=-1)[:, 0]
