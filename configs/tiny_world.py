"""The embedded default: a tiny model learns to search the synthetic world (SFT, then GRPO).

  python experiments/train.py --config configs/tiny_world.py --workdir /tmp/tiny_world
  python experiments/train.py --config configs/tiny_world.py:smoke --workdir /tmp/smoke

`:smoke` is a minutes-long run of every phase at toy sizes (what the tests run).
"""

import ml_collections


def get_config(arg: str = "default") -> ml_collections.ConfigDict:
  if arg not in ("default", "smoke"):
    raise ValueError(f"unknown variant {arg!r}; expected default or smoke")
  smoke = arg == "smoke"
  c = ml_collections.ConfigDict()
  c.seed = 0  # seeds init, data order and sampling
  c.model = ml_collections.ConfigDict(
    dict(
      arch="llama",  # decoder family
      d_model=128,  # residual width
      n_layers=4,  # decoder blocks
      n_heads=4,  # query heads
      n_kv_heads=2,  # key/value heads
      head_dim=32,  # width of one head
      d_ff=384,  # SwiGLU hidden width
      rope_theta=10000.0,  # RoPE base
      max_seq_len=2048,  # longest position used
      dtype="float32",  # params dtype
    )
  )
  c.data = ml_collections.ConfigDict(
    dict(
      world=ml_collections.ConfigDict(
        dict(
          seed=0,  # world generator seed
          questions_per_hop=(40, 40, 40) if smoke else (600, 600, 600),  # 1-, 2-, 3-hop questions
        )
      ),
      vocab_size=1024 if smoke else 2048,  # BPE vocabulary trained on the world's text
      tokenizer_gold_texts=50 if smoke else 300,  # rendered gold trajectories in tokenizer text
      judge_demos=0,  # train questions whose judgement demonstrations (gold + one flawed plan)
      # join the warm start: the Meta-Refiner's task learned in SFT (0 = none, the paper's)
      stop_short=0.0 if smoke else 0.6,  # share of multi-hop SFT demonstrations that answer
      # one hop early: the decision error GRPO corrects (results/README.md: the main job)
    )
  )
  c.rollout = ml_collections.ConfigDict(
    dict(
      max_turns=4,  # assistant turns (the paper's B = 4)
      max_turn_tokens=48,  # new tokens per turn; world turns are ~20 tokens
      top_k=3,  # passages per search
      max_obs_tokens=200,  # cap on one observation's documents, tokens
      invalid_feedback=True,  # feedback after an invalid turn
      batch_rows=0,  # rows per rollout call in training; 0 = a process's whole step
    )
  )
  sft_steps = 4 if smoke else 1000
  c.sft = ml_collections.ConfigDict(
    dict(
      steps=sft_steps,  # warm-start steps (results/README.md: how the default was found)
      batch_size=4 if smoke else 16,  # trajectories per step
    )
  )
  c.sft_opt = ml_collections.ConfigDict(
    dict(
      lr=3e-3,  # AdamW peak learning rate of the warm start
      warmup_steps=2 if smoke else 20,  # linear warmup steps
      decay_steps=sft_steps,  # cosine decay over the whole warm start
      final_lr_ratio=0.1,  # the cosine ends at lr * this
      weight_decay=0.0,  # decoupled weight decay
    )
  )
  c.rl = ml_collections.ConfigDict(
    dict(
      steps=2 if smoke else 60,  # GRPO steps
      prompts_per_step=2 if smoke else 8,  # B questions per step
      temperature=1.0,  # rollout temperature
      max_len=1024,  # sampler row capacity, tokens
      checkpoint_every=1 if smoke else 20,  # steps between checkpoints
      log_every=1,  # steps between metric lines
      probe_every=0,  # steps between the drivers' probes (Meta-Refiner runs only)
      progress=not smoke,  # progress bar on the console
      keep_warm_start=True,  # keep the SFT policy in DIR/warm_start (for --init_from)
      export_hf=True,  # DIR/warm_start/hf and DIR/final/hf: HF checkpoint directories
      trajectories_every=1 if smoke else 10,  # steps between DIR/trajectories/step_N.jsonl
      trajectories_rows=8,  # rollouts per trajectories file (the step's first rows)
    )
  )
  c.grpo = ml_collections.ConfigDict(
    dict(
      group_size=4 if smoke else 5,  # G rollouts per question (paper: 5)
      clip_eps=0.2,  # PPO clip range
      kl_coef=0.001,  # KL to the SFT reference (paper: 0.001)
      loss_agg="seq-mean-token-mean",  # Eq. 2 aggregation
      ppo_epochs=1,  # passes over each step's rollouts
      num_minibatches=1,  # optimizer updates per pass
      nonfinite="skip",  # NaN/Inf update: skip (and count) | stop
      logprob_chunk=0 if smoke else 128,  # LM-head positions per chunk in the loss; 0 = off
      micro_batch_rows=4 if smoke else 10,  # rows per forward/backward, gradients summed;
      # the same update, less memory (and 1.6x faster here: BENCHMARKS.md); 0 = all rows
      decision_balance="none",  # joint: Actor vs decision gradients: none (sum) | clip | ratio
      decision_balance_scale=1.0,  # clip: each norm cap; ratio: decisions <= this x Actor
    )
  )
  c.opt = ml_collections.ConfigDict(
    dict(
      lr=5e-5,  # GRPO AdamW learning rate (tiny model; the paper's 1e-6 is for 7B)
      warmup_steps=0 if smoke else 10,  # linear warmup steps
      weight_decay=0.0,  # decoupled weight decay
    )
  )
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))  # device mesh axes
  c.eval = ml_collections.ConfigDict(
    dict(
      split="test",  # world split evaluated before and after RL
      limit=8 if smoke else 0,  # first N questions; 0 = all
      batch_size=8 if smoke else 60,  # rows per rollout call
      every=1 if smoke else 20,  # dev evaluation every N GRPO steps; 0 = never
      dev_limit=8 if smoke else 0,  # first N dev questions; 0 = all
      use_refiner=False,  # Meta-Refiner at evaluation (the paper: off)
    )
  )
  c.refiner = ml_collections.ConfigDict(
    dict(
      enabled=False,  # the Search-R1 baseline; configs/search_r2.py turns it on
      judge="policy",  # who judges: policy (the paper) | oracle (the world's gold plans)
      max_revisions=1,  # N_max
      margin=0.0,  # revise iff log p(revise) - log p("0") >= margin
      aggregate="logsumexp",  # p(revise): logsumexp | max over the steps
      joint=True,  # decisions trained with the trajectory's advantage (if enabled)
      max_prompt_tokens=2048,  # longer refiner prompts are accepted unjudged
      decision_weight=1.0,  # joint: decision rows' advantage x this (beyond the paper)
      judge_rows=8,  # prompts per judge pass, sorted by length; 0 = one pass
      prompt="table12",  # the paper's prompt | continuation (reads the rollout's KV cache)
    )
  )
  c.reward = ml_collections.ConfigDict(
    dict(
      process="none",  # outcome EM only (Search-R1) | lexical | llm (R = EM * (1 + process))
      judge_max_new_tokens=64,  # llm judge: reply budget
    )
  )
  return c
