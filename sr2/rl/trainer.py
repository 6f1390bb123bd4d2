"""The training loop on the synthetic world: SFT warm start, then GRPO (the Search-R1 baseline).

  python experiments/train.py --config configs/tiny_world.py --workdir DIR

Phases, each checkpointed so `--workdir` with a checkpoint resumes where it stopped:
  1. world, tokenizer (BPE trained on the world's text), BM25 index, tiny model;
  2. SFT on gold trajectories rendered exactly as rollouts are tokenised;
  3. greedy evaluation on the test split (EM before RL);
  4. GRPO: B questions x G rollouts, outcome reward (EM), group advantages, one sharded
     update per step against the frozen SFT model as reference;
  5. greedy evaluation again (EM after RL); `DIR/summary.json` and `DIR/metrics.jsonl`.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sr2 import checkpoint, models
from sr2.agent.rollout import RolloutConfig, rollout
from sr2.configlib import check_keys, from_config
from sr2.data import WorldConfig, actor_prompt, build_world
from sr2.data.trajectories import render_steps
from sr2.data.world_tokenizer import train_tokenizer
from sr2.parallel import MeshConfig, make_mesh
from sr2.retrieval import BM25Index, format_documents
from sr2.rewards import exact_match
from sr2.rl import grpo, sft, update
from sr2.rl.optim import OptConfig, make_optimizer
from sr2.sampling import Sampler, SamplingConfig, Temperature

_GROUPS = (
  "model",
  "data",
  "rollout",
  "sft",
  "rl",
  "grpo",
  "opt",
  "sft_opt",
  "mesh",
  "eval",
  "seed",
)


@dataclasses.dataclass(frozen=True)
class RLConfig:
  """The GRPO loop (config.rl)."""

  steps: int = 100  # GRPO steps
  prompts_per_step: int = 8  # B questions per step (each sampled group_size times)
  temperature: float = 1.0  # rollout sampling temperature
  max_len: int = 1024  # row capacity of the sampler, tokens
  checkpoint_every: int = 25  # steps between checkpoints
  log_every: int = 1  # steps between metric lines


@dataclasses.dataclass(frozen=True)
class SFTConfig:
  """The warm start (config.sft)."""

  steps: int = 300  # optimizer steps on gold trajectories
  batch_size: int = 16  # trajectories per step


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """Greedy evaluation (config.eval)."""

  split: str = "test"  # world split evaluated before and after RL
  limit: int = 0  # first N questions; 0 = all
  batch_size: int = 64  # rows per rollout call


@dataclasses.dataclass(frozen=True)
class _Env:
  world: Any
  tokenizer: Any
  index: BM25Index
  model: models.ModelConfig
  rollout: RolloutConfig


def _environment(config) -> _Env:
  world = build_world(from_config(WorldConfig, config.data.world, "config.data.world"))
  index = BM25Index.build(world.passage_dicts())
  rc = from_config(RolloutConfig, config.rollout, "config.rollout")
  raw_docs = lambda q: format_documents(index.search([q], k=rc.top_k)[0])
  gold_text = [
    "".join(a + (o or "") for a, o in render_steps(q.gold, raw_docs))
    for q in world.split("train")[: config.data.tokenizer_gold_texts]
  ]
  texts = world.texts() + [actor_prompt(q.question) for q in world.split("train")] + gold_text
  tok = train_tokenizer(texts, config.data.vocab_size)
  model = models.ModelConfig(**{**config.model.to_dict(), "vocab_size": len(tok)})
  return _Env(world, tok, index, model, rc)


def _search_fn(env: _Env):
  return lambda q: format_documents(
    env.index.search([q], k=env.rollout.top_k)[0],
    tokenizer=env.tokenizer,
    max_tokens=env.rollout.max_obs_tokens,
  )


def evaluate(env: _Env, params, cfg: EvalConfig, max_len: int) -> dict:
  """Greedy rollouts on a world split: EM overall and per hop count, searches, turns."""
  questions = list(env.world.split(cfg.split))
  questions = questions[: cfg.limit] if cfg.limit else questions
  sampler = Sampler(env.model, env.tokenizer, SamplingConfig(max_len=max_len))
  prompts = [env.tokenizer.encode(actor_prompt(q.question)) for q in questions]
  trajs = []
  for i in range(0, len(prompts), cfg.batch_size):
    trajs += rollout(sampler, params, prompts[i : i + cfg.batch_size], env.index, env.rollout)
  em = np.asarray(
    [exact_match(t.answer, [q.answer]) for t, q in zip(trajs, questions, strict=True)]
  )
  hops = np.asarray([q.hops for q in questions])
  out = {
    "em": float(em.mean()),
    "n": len(questions),
    "searches": float(np.mean([t.num_searches for t in trajs])),
    "turns": float(np.mean([t.num_turns for t in trajs])),
  }
  out.update({f"em_{h}hop": float(em[hops == h].mean()) for h in sorted(set(hops.tolist()))})
  return out


def _log(path: pathlib.Path, row: dict) -> None:
  with open(path, "a", encoding="utf-8") as f:
    f.write(json.dumps({k: (float(v) if hasattr(v, "item") else v) for k, v in row.items()}) + "\n")


def _template(env: _Env, opt, shardings, seed: int) -> dict:
  rng = jax.random.key(seed)
  params, opt_state = update.init_sharded(env.model, opt, shardings, rng)
  # ref_params: the frozen SFT policy, the KL reference; kept in every checkpoint.
  return {
    "params": params,
    "ref_params": params,
    "opt_state": opt_state,
    "step": 0,
    "rng": rng,
    "data_state": {"phase": "init"},
  }


def load_state(config, workdir: str, step: int | None = None) -> dict:
  """The training state saved in `workdir` (latest step by default), for inspection."""
  env = _environment(config)
  opt = make_optimizer(from_config(OptConfig, config.opt, "config.opt"))
  mesh = make_mesh(from_config(MeshConfig, config.mesh, "config.mesh"))
  rows = config.rl.prompts_per_step * config.grpo.group_size
  shardings = update.make_shardings(env.model, opt, mesh, batch_rows=rows)
  with checkpoint.Checkpointer(workdir) as ckpt:
    return ckpt.restore(step, like=_template(env, opt, shardings, config.seed))


def train_and_evaluate(config, workdir: str) -> dict:
  """Runs the whole job (see the module docstring); returns the summary."""
  check_keys(config.keys(), _GROUPS, "config", required=_GROUPS)
  rl_cfg = from_config(RLConfig, config.rl, "config.rl")
  sft_cfg = from_config(SFTConfig, config.sft, "config.sft")
  eval_cfg = from_config(EvalConfig, config.eval, "config.eval")
  grpo_cfg = from_config(grpo.GRPOConfig, config.grpo, "config.grpo")
  opt = make_optimizer(from_config(OptConfig, config.opt, "config.opt"))
  sft_opt = make_optimizer(from_config(OptConfig, config.sft_opt, "config.sft_opt"))
  mesh = make_mesh(from_config(MeshConfig, config.mesh, "config.mesh"))
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  metrics_path = workdir / "metrics.jsonl"
  start = time.perf_counter()

  env = _environment(config)
  env.tokenizer.save(workdir / "tokenizer")
  shardings = update.make_shardings(
    env.model, opt, mesh, batch_rows=rl_cfg.prompts_per_step * grpo_cfg.group_size
  )
  ckpt = checkpoint.Checkpointer(workdir, max_to_keep=2)
  template = _template(env, opt, shardings, config.seed)
  state = ckpt.restore(like=template) if ckpt.latest_step() is not None else template
  summary_path = workdir / "summary.json"
  summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}

  # ------------------------------------------------------------------ SFT warm start
  if state["data_state"]["phase"] == "init":
    search = _search_fn(env)
    examples = [
      sft.trajectory_example(
        env.tokenizer.encode(actor_prompt(q.question)), render_steps(q.gold, search), env.tokenizer
      )
      for q in env.world.split("train")
    ]
    log = lambda s, m: _log(metrics_path, {"phase": "sft", "step": s, **m}) if s % 10 == 0 else None
    params, _ = sft.run_sft(
      env.model,
      state["params"],
      sft_opt,
      examples,
      steps=sft_cfg.steps,
      batch_size=sft_cfg.batch_size,
      pad_id=env.tokenizer.pad_id,
      seed=config.seed,
      log=log,
    )
    summary["em_before_rl"] = evaluate(env, params, eval_cfg, rl_cfg.max_len)["em"]
    summary["sft_seconds"] = round(time.perf_counter() - start, 1)
    summary_path.write_text(json.dumps(summary, indent=1))
    params = jax.device_put(params, shardings.params)
    opt_state = jax.jit(opt.init, out_shardings=shardings.opt_state)(params)
    state = {
      **state,
      "params": params,
      # A copy: the update step donates `params`, which must not free the reference.
      "ref_params": jax.tree.map(jnp.copy, params),
      "opt_state": opt_state,
      "step": 0,
      "data_state": {"phase": "rl"},
    }
    ckpt.save(0, state, force=True)
    ckpt.wait()
  ref_params = state["ref_params"]

  # ------------------------------------------------------------------ GRPO
  step_fn = update.make_update(env.model, grpo_cfg, opt, shardings)
  sampler = Sampler(
    env.model,
    env.tokenizer,
    SamplingConfig(max_len=rl_cfg.max_len, method=Temperature(rl_cfg.temperature), logprobs="raw"),
  )
  train_q = list(env.world.split("train"))
  order = np.random.default_rng(config.seed).permutation(len(train_q))
  params, opt_state, rng = state["params"], state["opt_state"], state["rng"]
  g, b = grpo_cfg.group_size, rl_cfg.prompts_per_step
  for step in range(state["step"] + 1, rl_cfg.steps + 1):
    t0 = time.perf_counter()
    idx = [order[((step - 1) * b + i) % len(order)] for i in range(b)]
    qs = [train_q[i] for i in idx for _ in range(g)]
    prompts = [env.tokenizer.encode(actor_prompt(q.question)) for q in qs]
    rng, key = jax.random.split(rng)
    trajs = rollout(sampler, params, prompts, env.index, env.rollout, rng=key)
    t_roll = time.perf_counter() - t0
    rewards = np.asarray(
      [exact_match(t.answer, [q.answer]) for t, q in zip(trajs, qs, strict=True)], np.float32
    )
    adv, adv_metrics = grpo.group_advantages(
      jnp.asarray(rewards), g, scale_by_std=grpo_cfg.scale_by_std, eps=grpo_cfg.adv_eps
    )
    longest = max(len(p) + len(t.response_ids) for p, t in zip(prompts, trajs, strict=True))
    length = next(x for x in (256, 384, 512, 768, 1024, 1536, 2048, 10**9) if x >= longest)
    batch = update.policy_batch(
      prompts,
      [t.response_ids for t in trajs],
      [t.loss_mask for t in trajs],
      [t.logprobs for t in trajs],
      np.asarray(adv),
      env.tokenizer.pad_id,
      length,
    )
    batch["ref_logp"] = update.reference_logprobs(
      env.model, ref_params, jnp.asarray(batch["tokens"])
    )
    params, opt_state, m = step_fn(params, opt_state, update.put_batch(batch, shardings))
    row = {
      "phase": "rl",
      "step": step,
      "reward": float(rewards.mean()),
      "em": float(rewards.mean()),
      "searches": float(np.mean([t.num_searches for t in trajs])),
      "turns": float(np.mean([t.num_turns for t in trajs])),
      "response_tokens": float(np.mean([sum(t.loss_mask) for t in trajs])),
      "rollout_s": round(t_roll, 2),
      "step_s": round(time.perf_counter() - t0, 2),
      **{k: float(v) for k, v in {**m, **adv_metrics}.items()},
    }
    if step % rl_cfg.log_every == 0:
      _log(metrics_path, row)
    if step % rl_cfg.checkpoint_every == 0 or step == rl_cfg.steps:
      ckpt.save(
        step,
        {
          "params": params,
          "ref_params": ref_params,
          "opt_state": opt_state,
          "step": step,
          "rng": rng,
          "data_state": {"phase": "rl"},
        },
        force=True,
      )
  ckpt.wait()
  after = evaluate(env, params, eval_cfg, rl_cfg.max_len)
  summary.update(
    em_after_rl=after["em"],
    eval_after_rl=after,
    total_seconds=round(time.perf_counter() - start, 1),
  )
  summary_path.write_text(json.dumps(summary, indent=1))
  ckpt.close()
  return summary
