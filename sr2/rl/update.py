"""The GRPO update: a padded batch (rl/batch.py) -> one jitted, sharded optimizer step.

Sharding: params and optimizer state are laid out by their logical axes (parallel/rules.py)
and the batch along `batch`; the step is one `jax.jit` with explicit in/out shardings and
the params and optimizer state donated, so a step never holds two copies of them.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sr2.models import transformer
from sr2.models.config import ModelConfig
from sr2.parallel import AxisRules, tree_shardings
from sr2.rl import balance, grpo, logprobs, micro

BATCH_KEYS = ("tokens", "mask", "old_logp", "ref_logp", "adv")  # + "decision" when joint


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def reference_logprobs(
  config: ModelConfig,
  ref_params,
  tokens_BxT,
  chunk_size: int | None = None,
  micro_rows: int | None = None,
) -> jax.Array:
  """log p_ref of every target token, [B, T-1] (computed once per step, no gradient).

  `micro_rows`: rows per forward pass, in a `lax.map` (the update's strided split: each
  pass takes rows from every device's share), so only one pass's activations are live.
  The values are the single pass's (each row is scored on its own).
  """
  rows, t = tokens_BxT.shape
  size = micro_rows or rows
  if rows % size:
    raise ValueError(f"{rows} rows do not split into reference passes of {size} rows")
  k = rows // size
  score = lambda x: logprobs.token_logprobs(config, ref_params, x, chunk_size=chunk_size)
  if k == 1:
    return score(tokens_BxT)
  out_KxMxT = jax.lax.map(score, tokens_BxT.reshape(size, k, t).swapaxes(0, 1))
  return out_KxMxT.swapaxes(0, 1).reshape(rows, t - 1)


def _loss(model, cfg, params, mb, masks=()):
  """`grpo.grpo_loss` of rows `mb` under `params`: (loss, metrics).

  With `masks`, also the loss's metrics over each of those masks (parts of `mb["mask"]`)
  from the same forward pass: ((loss, metrics), [metrics per mask]).
  """
  logp, entropy = logprobs.token_logprobs(
    model,
    params,
    mb["tokens"],
    chunk_size=cfg.logprob_chunk or None,
    with_entropy=True,
    entropy_mask_BxT=mb["mask"],
  )
  if not cfg.entropy_coef:
    entropy = jax.lax.stop_gradient(entropy)  # logged only
  ref = mb["ref_logp"] if cfg.kl_coef else None
  loss = lambda mask: grpo.grpo_loss(
    logp, mb["old_logp"], ref, mb["adv"], mask, cfg, entropy=entropy
  )
  if not masks:
    return loss(mb["mask"])
  return loss(mb["mask"]), [loss(m)[1] for m in masks]


def _split(mb, rows: int):
  """`mb`'s rows as K micro-batches of `rows` (row k + jK in micro-batch k): [K, rows, ...]."""
  k = mb["tokens"].shape[0] // rows
  return {name: v.reshape(rows, k, *v.shape[1:]).swapaxes(0, 1) for name, v in mb.items()}


def _accumulate(acc, grads):
  """acc + grads, leaf by leaf, the sum kept in float32."""
  return jax.tree.map(lambda a, g: a + g.astype(jnp.float32), acc, grads)


def _scan_micro(one, params, xs, sums: int):
  """`lax.scan` of `one` over the micro-batches `xs`, carrying `sums` float32 gradient sums
  (zeros first); returns (the sums, one's stacked outputs)."""
  zeros = jax.tree.map(lambda p: jnp.zeros_like(p, jnp.float32), params)
  return jax.lax.scan(one, (zeros,) * sums, xs)


def _merged(mb, slices, obj_K, metrics_K, cfg):
  """The whole mini-batch's metrics from its K micro-batches' (`micro.merge_metrics`)."""
  return micro.merge_metrics(metrics_K, obj_K, slices["mask"], mb["adv"], mb["mask"], cfg.loss_agg)


def _as_params(grads, params):
  """Gradient sums cast back to the params' dtypes."""
  return jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)


def grouped_loss_and_grads(model, cfg, params, mb):
  """((loss, metrics), grads) with the Actor's and the decisions' gradients balanced.

  `mb["decision"]` [B] marks the refiner's decision rows. Each micro-batch runs one forward
  pass and two backward passes (`jax.vjp`): the gradient of the Actor rows' part of the
  loss and that of the decision rows' part, which add up to the loss's own gradient; the
  parts are weighted as pieces of the mini-batch (`micro.weights` over the 2K pieces).
  `balance.combine` joins the two sums by `cfg.decision_balance`.
  """
  size = cfg.micro_batch_rows or mb["tokens"].shape[0]
  slices = _split(mb, size)
  k = slices["tokens"].shape[0]
  is_dec = slices["decision"][..., None] > 0
  parts = jnp.stack([jnp.where(is_dec, 0, slices["mask"]), jnp.where(is_dec, slices["mask"], 0)])
  w_2xK, u_2xK = (
    x.reshape(2, k) for x in micro.weights(parts.reshape(2 * k, size, -1), cfg.loss_agg)
  )

  def one(carry, xs):
    m, parts_m, w, u = xs

    def objectives(p):
      (_, metrics), (actor, decision) = _loss(model, cfg, p, m, masks=(parts_m[0], parts_m[1]))
      obj = (micro.objective(actor, w[0], u[0], cfg), micro.objective(decision, w[1], u[1], cfg))
      return obj, metrics

    obj, pull, metrics = jax.vjp(objectives, params, has_aux=True)
    g_a, g_d = (
      pull((jnp.float32(1.0), jnp.float32(0.0)))[0],
      pull((jnp.float32(0.0), jnp.float32(1.0)))[0],
    )
    carry = (_accumulate(carry[0], g_a), _accumulate(carry[1], g_d))
    return carry, (obj[0] + obj[1], metrics)

  xs = (slices, parts.swapaxes(0, 1), w_2xK.T, u_2xK.T)
  (g_a, g_d), (obj_K, metrics_K) = _scan_micro(one, params, xs, sums=2)
  grads, extra = balance.combine(g_a, g_d, cfg.decision_balance, cfg.decision_balance_scale)
  metrics = _merged(mb, slices, obj_K, metrics_K, cfg)
  return (metrics["loss"], {**metrics, **extra}), _as_params(grads, params)


def loss_and_grads(model, cfg, params, mb):
  """((loss, metrics), grads) of one mini-batch, `cfg.micro_batch_rows` rows per pass.

  With micro-batches, rows k, k + K, k + 2K, ... form micro-batch k of K (so every
  device's shard of rows feeds every micro-batch); each is one forward and backward pass
  in a `lax.scan` and their gradients are summed, weighted so that loss, gradients and
  metrics are those of the whole mini-batch (`micro.weights`, up to float
  reassociation); the sum is kept in float32 and cast to the params' dtype at the end.
  Only the activations of one micro-batch are live at a time, which bounds activation
  memory (and on CPU keeps the working set in cache).
  """
  rows = mb["tokens"].shape[0]
  size = cfg.micro_batch_rows or rows
  if rows % size:
    raise ValueError(f"{rows} rows do not split into micro-batches of {size} rows")
  if cfg.decision_balance != "none" and "decision" in mb:
    return grouped_loss_and_grads(model, cfg, params, mb)
  mb = {name: v for name, v in mb.items() if name != "decision"}
  k = rows // size
  if k == 1:
    return jax.value_and_grad(lambda p: _loss(model, cfg, p, mb), has_aux=True)(params)
  slices = _split(mb, size)
  w_K, u_K = micro.weights(slices["mask"], cfg.loss_agg)

  def one(carry, xs):
    m, w, u = xs

    def objective(p):
      _, metrics = _loss(model, cfg, p, m)
      return micro.objective(metrics, w, u, cfg), metrics

    (obj, metrics), g = jax.value_and_grad(objective, has_aux=True)(params)
    return (_accumulate(carry[0], g),), (obj, metrics)

  (grads,), (obj_K, metrics_K) = _scan_micro(one, params, (slices, w_K, u_K), sums=1)
  metrics = _merged(mb, slices, obj_K, metrics_K, cfg)
  return (metrics["loss"], metrics), _as_params(grads, params)


def _minibatch_step(model, cfg, optimizer, carry, mb):
  """One optimizer update on a mini-batch; skipped (state kept) if loss or grads are not finite."""
  params, opt_state = carry
  (loss, metrics), grads = loss_and_grads(model, cfg, params, mb)
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  # Non-finite gradients would poison the Adam moments even when the update is discarded.
  grads = jax.tree.map(lambda g: jnp.where(finite, g, jnp.zeros_like(g)), grads)
  updates, new_opt_state = optimizer.update(grads, opt_state, params)
  new_params = optax.apply_updates(params, updates)
  keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
  carry = (keep(new_params, params), keep(new_opt_state, opt_state))
  return carry, {**metrics, "loss": loss, "grad_norm": grad_norm, "nonfinite": 1.0 - finite}


def update_step(
  model: ModelConfig,
  cfg: grpo.GRPOConfig,
  optimizer: optax.GradientTransformation,
  params,
  opt_state,
  batch: dict,
  key: jax.Array | None = None,
):
  """`cfg.ppo_epochs` passes over `batch`, each split into `cfg.num_minibatches` updates.

  With one epoch and one mini-batch this is a single on-policy step (ratio = 1 at the
  start, as in the paper's setting). Otherwise each epoch visits the rows in a fresh
  order drawn from `key` (fixed order when `key` is None) and every mini-batch is one
  AdamW update; all of it is one `lax.scan`, so one compiled program. An update whose
  loss or gradient norm is NaN/Inf leaves params and optimizer state as they were and
  counts 1 in `nonfinite` (the caller skips or stops, `cfg.nonfinite`). Metrics are means
  over the updates, `nonfinite` a count. Each update's gradient may be summed over
  micro-batches (`cfg.micro_batch_rows`, `loss_and_grads`): the same update, less memory.
  """
  rows = batch["tokens"].shape[0]
  m, epochs = cfg.num_minibatches, cfg.ppo_epochs
  if rows % m:
    raise ValueError(f"{rows} rows do not split into grpo.num_minibatches={m} equal parts")
  if cfg.micro_batch_rows and (rows // m) % cfg.micro_batch_rows:
    raise ValueError(
      f"mini-batches of {rows // m} rows do not split into grpo.micro_batch_rows="
      f"{cfg.micro_batch_rows}"
    )
  if key is None:
    orders = jnp.broadcast_to(jnp.arange(rows), (epochs, rows))
  else:
    orders = jax.vmap(lambda k: jax.random.permutation(k, rows))(jax.random.split(key, epochs))
  idx = orders.reshape(epochs * m, rows // m)
  minibatches = {k: v[idx] for k, v in batch.items()}  # [E*M, rows/M, ...]
  step = functools.partial(_minibatch_step, model, cfg, optimizer)
  (params, opt_state), metrics = jax.lax.scan(step, (params, opt_state), minibatches)
  out = {k: v.mean() for k, v in metrics.items()}
  out["nonfinite"] = metrics["nonfinite"].sum()
  return params, opt_state, out


@dataclasses.dataclass(frozen=True)
class Shardings:
  """Where params, optimizer state and batch arrays live on a mesh."""

  params: object
  opt_state: object
  batch: dict


def make_shardings(
  model: ModelConfig,
  optimizer: optax.GradientTransformation,
  mesh: Mesh,
  rules: AxisRules | None = None,
  batch_rows: int | None = None,
) -> Shardings:
  """Shardings from logical axes; optimizer moments follow their params, scalars replicate."""
  rules = rules or AxisRules()
  shapes = jax.eval_shape(lambda: transformer.init_params(model, jax.random.key(0)))
  params = tree_shardings(transformer.param_axes(model), shapes, mesh, rules)
  opt_shapes = jax.eval_shape(optimizer.init, shapes)
  replicated = NamedSharding(mesh, PartitionSpec())
  opt_state = optax.tree_map_params(
    optimizer,
    lambda _, s: s,
    opt_shapes,
    params,
    transform_non_params=lambda _: replicated,
  )
  rows = rules.spec(("batch",), (batch_rows or mesh.size,), mesh)[0]
  two_d = NamedSharding(mesh, PartitionSpec(rows, None))
  batch = {k: two_d for k in ("tokens", "mask", "old_logp", "ref_logp")}
  batch["adv"] = batch["decision"] = NamedSharding(mesh, PartitionSpec(rows))
  return Shardings(params, opt_state, batch)


def make_reference(
  model: ModelConfig,
  shardings: Shardings,
  chunk_size: int | None = None,
  micro_rows: int | None = None,
):
  """The jitted `reference_logprobs(ref_params, tokens)`, sharded like the update's batch.

  The reference params are laid out as the params; the tokens and the log-probs as the
  batch's rows, so each device scores its own rows, `micro_rows` at a time.
  """
  return jax.jit(
    functools.partial(reference_logprobs, model, chunk_size=chunk_size, micro_rows=micro_rows),
    in_shardings=(shardings.params, shardings.batch["tokens"]),
    out_shardings=shardings.batch["ref_logp"],
  )


def make_update(
  model: ModelConfig,
  cfg: grpo.GRPOConfig,
  optimizer: optax.GradientTransformation,
  shardings: Shardings,
):
  """The jitted step `(params, opt_state, batch, key=None) -> (params, opt_state, metrics)`.

  `key` (a replicated PRNG key) shuffles rows between mini-batches; without it the order
  is fixed. Params and optimizer state are donated.
  """
  fn = functools.partial(update_step, model, cfg, optimizer)
  replicated = NamedSharding(shardings.batch["adv"].mesh, PartitionSpec())
  compiled = {}

  def step(params, opt_state, batch, key=None):
    # One jit per batch layout (with or without ref_logp) and key use.
    sig = (tuple(sorted(batch)), key is None)
    if sig not in compiled:
      ins = (shardings.params, shardings.opt_state, {k: shardings.batch[k] for k in batch})
      ins = ins if key is None else (*ins, replicated)
      compiled[sig] = jax.jit(
        fn,
        in_shardings=ins,
        out_shardings=(shardings.params, shardings.opt_state, None),
        donate_argnums=(0, 1),
      )
    args = (params, opt_state, batch) if key is None else (params, opt_state, batch, key)
    return compiled[sig](*args)

  return step


def init_sharded(
  model: ModelConfig, optimizer: optax.GradientTransformation, shardings: Shardings, rng: jax.Array
):
  """Params and optimizer state born sharded (no full copy on one device first)."""
  params = jax.jit(lambda k: transformer.init_params(model, k), out_shardings=shardings.params)(rng)
  opt_state = jax.jit(optimizer.init, out_shardings=shardings.opt_state)(params)
  return params, opt_state


def put_batch(batch: dict, shardings: Shardings) -> dict:
  """Moves a batch (host or device arrays) to its shardings."""
  return {k: jax.device_put(v, shardings.batch[k]) for k, v in batch.items()}
