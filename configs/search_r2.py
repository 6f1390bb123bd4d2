"""Search-R2 and its ablations (the paper's Tables 3, 4, 8 and Appendix G) on a backbone.

  python experiments/train.py --config configs/search_r2.py:tiny_world,search_r2 --workdir DIR
  python experiments/train.py --config configs/search_r2.py:smollm2,mr --workdir DIR

The argument is `<backbone>,<arm>[,variant]`. `smoke` (tiny_world only) runs every phase at
toy sizes, as `configs/tiny_world.py:smoke` does; `gpu` (smollm2 only) sizes the warm start
and 50 GRPO steps for one GPU (experiments/gpu_smollm2.sh).

Backbones:
  tiny_world   the embedded default (configs/tiny_world.py): SFT warm start, then GRPO.
  smollm2      SmolLM2-135M-Instruct on the train rows of HotpotQA, 2WikiMultihopQA and
               MuSiQue (BM25 over the pooled paragraphs of the multi-hop train and dev
               files): an SFT warm start on their gold search trajectories, then GRPO;
               evaluated on HotpotQA dev. Runs on a CPU, slowly; the warm start alone:
                 --config.rl.steps=0 (writes DIR/warm_start/hf).
  qwen2.5-coder-0.5b
               the same with Qwen2.5-Coder-0.5B-Instruct (about 4x the compute).
  qwen2.5-7b, qwen3-8b, qwen2.5-32b-instruct
               the paper's backbones and setting (the paper's §4): NQ+HotpotQA training mix,
               G=5, 512 prompts per step, 300 steps, lr 1e-6 with warmup ratio 0.285, KL
               0.001, 4 turns, top-3. Accelerators only. `model.source` must point at the
               HF checkpoint directory (no hub here) and `data.corpus` at the retrieval
               corpus (wiki-18 in the paper; the Wikipedia intros stand in).

Arms (one switch each, so rows differ only in what they name):
  search_r1      outcome reward only, no Meta-Refiner (the baseline)
  mr             + Meta-Refiner (N_max 1), decisions not trained ("+Meta-Refiner")
  mr_pr          + process reward (lexical judge) ("+Meta-Refiner + Process Reward")
  search_r2      + joint optimisation of the refiner's decisions (full Search-R2), their
                 gradient at most the Actor's (grpo.decision_balance="ratio"; see below;
                 the paper's backbones keep the paper's single loss)
  nmax1..nmax4   Table 4: Meta-Refiner with N_max = 1..4, no process reward, no joint
  search_r1_g10  Appendix G: Search-R1 with doubled rollouts (G = 10)
  search_r2_dw   beyond the paper: search_r2 with the decision rows' advantage x 0.02
                 (refiner.decision_weight; results/README.md, "The ablation", says why)
  mr_cont, search_r2_cont
                 beyond the paper: mr and search_r2 with the refiner's question put after
                 the Actor's own trajectory (refiner.prompt="continuation"), which reads
                 the rollout's KV cache instead of encoding a Table-12 prompt
  mr_oracle      beyond the paper: mr with the oracle Meta-Refiner (refiner.judge="oracle";
                 tiny_world only), which revises exactly the flawed trajectories and cuts
                 at their first flaw: the mechanism's ceiling
"""

import importlib.util
import pathlib

import ml_collections

from sr2.data.examples import default_data_root

BACKBONES = ("tiny_world", "smollm2", "qwen2.5-coder-0.5b")
_PAPER_BACKBONES = ("qwen2.5-7b", "qwen3-8b", "qwen2.5-32b-instruct")  # the paper's setting
BACKBONES += _PAPER_BACKBONES
# The small backbones: named models (PyPI-packaged GGUF), a warm start on the multi-hop train
# rows' gold search trajectories, CPU-sized settings.
_SMALL_SOURCES = {
  "smollm2": "smollm2-135m-instruct",
  "qwen2.5-coder-0.5b": "qwen2.5-coder-0.5b-instruct",
}
ARMS = ("search_r1", "mr", "mr_pr", "search_r2", "nmax1", "nmax2", "nmax3", "nmax4")
ARMS += ("search_r1_g10", "search_r2_dw", "mr_cont", "search_r2_cont", "mr_oracle")
_PROCESS_ARMS = ("mr_pr", "search_r2", "search_r2_dw", "search_r2_cont")  # lexical judge
DECISION_WEIGHT_DW = 0.02  # ~ the Actor's / the decisions' gradient norm, seed-0 search_r2
_PAPER_SOURCES = {
  "qwen2.5-7b": "/path/to/Qwen2.5-7B",  # base model (the paper's §2.1)
  "qwen3-8b": "/path/to/Qwen3-8B",
  "qwen2.5-32b-instruct": "/path/to/Qwen2.5-32B-Instruct",
}
# The TPU slice each paper backbone is configured for (`experiments/compile.py` compiles
# its programs there) and its FSDP width: every chip holds a shard of the weights.
_PAPER_SLICES = {"qwen2.5-7b": "v5p-16", "qwen3-8b": "v5p-16", "qwen2.5-32b-instruct": "v5p-64"}
_ROLLOUT_ROWS = {"qwen2.5-7b": 64, "qwen3-8b": 32, "qwen2.5-32b-instruct": 16}
_MICRO_ROWS = {"qwen2.5-32b-instruct": 32}  # v5p-64: 32 chips
# smollm2: the three multi-hop sets' train rows, whose supporting paragraphs give the warm
# start's gold search trajectories; SFT steps of that warm start.
MULTIHOP_TRAIN = tuple(f"multihop/{s}:train" for s in ("hotpotqa", "2wikimultihopqa", "musique"))
SMOLLM2_SFT_STEPS = 60


def _tiny_world(variant: str) -> ml_collections.ConfigDict:
  path = pathlib.Path(__file__).with_name("tiny_world.py")
  spec = importlib.util.spec_from_file_location("tiny_world", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


def _qa(backbone: str) -> ml_collections.ConfigDict:
  c = _tiny_world("default")
  paper = backbone not in _SMALL_SOURCES
  c.model = ml_collections.ConfigDict(
    dict(
      source=_PAPER_SOURCES.get(backbone) or _SMALL_SOURCES[backbone],  # HF dir or named model
      dtype="bfloat16" if paper else "float32",  # params dtype
      seed=0,  # init seed (preset: sources only)
      # Layers as one lax.scan: compile time does not grow with depth, and the blocks'
      # recomputation holds. Unrolled, XLA's CPU schedule keeps every block's activations
      # whatever `remat` says: SmolLM2's SFT gradient at 2 x 2,560 tokens needs 25 GB of
      # temporaries unrolled, 2.4 GB scanned (`compile().memory_analysis()`).
      scan_layers=True,
      remat="full",  # recompute each block in the backward pass
    )
  )
  c.data = ml_collections.ConfigDict(
    dict(
      source="qa",  # FlashRAG-format QA files
      data_root=default_data_root(),  # $SR2_DATA, else <repo>/data; relative: to the repo root
      # "" reads data_root's JSONL; a folder of experiments/prepare_data.py's
      # tfds datasets reads those instead, each process only the questions it uses.
      tfds_dir="",
      train=("qa/nq:train", "qa/hotpotqa:train") if paper else MULTIHOP_TRAIN,
      dev=("qa/hotpotqa:dev",) if paper else ("multihop/hotpotqa:dev",),
      test=(),  # () = the dev files
      corpus="corpus/wiki_intros.jsonl" if paper else "",  # "" = pool multihop paragraphs
      train_limit=0,  # first N rows per training file; 0 = all
      eval_limit=0 if paper else 100,  # first N rows per dev/test file; 0 = all
    )
  )
  if paper:
    c.sft.steps = 0  # RL starts from the checkpoint (the paper's §2.1)
  else:
    # A 135M model does not follow the protocol zero-shot: a warm start on the multi-hop
    # train rows' gold search trajectories first (sr2/data/gold_search.py), sized to run
    # in about 30-45 minutes on a 2-core CPU (results/warm_start_smollm2.md).
    c.sft.steps = SMOLLM2_SFT_STEPS
    c.sft.batch_size = 2  # trajectories per step (~1,000 tokens each; memory on a laptop)
    c.sft_opt.lr = 1e-4  # AdamW peak rate for the pretrained model: few steps, a regular format
    c.sft_opt.warmup_steps = 5
    c.sft_opt.decay_steps = SMOLLM2_SFT_STEPS  # cosine to lr * final_lr_ratio
  c.rollout.max_turns = 4
  c.rollout.top_k = 3
  c.rollout.max_turn_tokens = 500 if paper else 128
  c.rollout.max_obs_tokens = 500
  # Rows per rollout call on each host, split over its 4 chips: the most whose prefill of a
  # 4,096-token prompt and 15,000-slot KV cache fit a v5p chip (experiments/compile.py).
  c.rollout.batch_rows = _ROLLOUT_ROWS.get(backbone, 0)
  c.rl.steps = 300 if paper else 50
  c.rl.prompts_per_step = 512 if paper else 4
  c.rl.max_len = 15000 if paper else 2560  # paper: context cap 15,000 tokens
  c.rl.checkpoint_every = 25 if paper else 10
  c.rl.export_hf = not paper  # a 7-32B HF copy of the policy, twice a run, only on request
  c.grpo.group_size = 5
  c.grpo.kl_coef = 0.001
  c.grpo.num_minibatches = 1  # paper: mini-batch 512 prompts = the whole step
  # Rows per forward/backward pass: memory, not math (silent). At least one row per chip of
  # the slice, or the pass's rows do not split over the chips and every chip holds them all.
  c.grpo.micro_batch_rows = _MICRO_ROWS.get(backbone, 16) if paper else 10
  c.opt.lr = 1e-6
  c.opt.warmup_steps = 85 if paper else 10  # warmup ratio 0.285 of 300 steps
  c.opt.weight_decay = 0.01
  c.mesh = ml_collections.ConfigDict(
    dict(
      data=1 if paper else -1,  # batch replicas
      fsdp=-1 if paper else 1,  # weight shards (paper: every chip of the slice)
      tensor=1,  # tensor-parallel width
      topology=_PAPER_SLICES.get(backbone, ""),  # the slice experiments/compile.py targets
    )
  )
  c.eval.split = "test"
  c.eval.limit = 0
  c.eval.batch_size = 64 if paper else 16
  c.eval.every = 50 if paper else 0
  c.eval.dev_limit = 512 if paper else 0
  return c


_VARIANTS = {"smoke": "tiny_world", "gpu": "smollm2"}  # variant -> the backbone it is for


def _on_one_gpu(c: ml_collections.ConfigDict) -> None:
  """smollm2 on one GPU (experiments/gpu_smollm2.sh): a longer warm start, 50 GRPO steps.

  Sized to fit about 10 minutes on one H100 with the evaluation: a target, not yet
  measured on a GPU.
  """
  c.sft.steps = 100
  c.sft.batch_size = 16  # 1,600 trajectories: ~3 passes over the 529 demonstrations
  c.sft_opt.decay_steps = 100
  c.rl.steps = 50
  c.rl.prompts_per_step = 8  # x G = 5: 40 rollouts a step
  c.rl.checkpoint_every = 25


def get_config(arg: str = "tiny_world,search_r2") -> ml_collections.ConfigDict:
  backbone, _, arm = arg.partition(",")
  arm, _, variant = arm.partition(",")
  if variant not in ("", *_VARIANTS) or (variant and backbone != _VARIANTS[variant]):
    raise ValueError(
      f"unknown variant {variant!r} of {backbone!r}; the variants: "
      + ", ".join(f"{b},<arm>,{v}" for v, b in _VARIANTS.items())
    )
  if backbone not in BACKBONES:
    raise ValueError(f"unknown backbone {backbone!r}; expected one of {BACKBONES}")
  if arm not in ARMS:
    raise ValueError(f"unknown arm {arm!r}; expected one of {ARMS}")
  if arm == "mr_oracle" and backbone != "tiny_world":
    raise ValueError("arm 'mr_oracle' needs the world's gold plans: backbone tiny_world only")
  c = _tiny_world(variant or "default") if backbone == "tiny_world" else _qa(backbone)
  if variant == "gpu":
    _on_one_gpu(c)
  r, w = c.refiner, c.reward
  r.enabled = arm not in ("search_r1", "search_r1_g10")
  r.joint = arm in ("search_r2", "search_r2_dw", "search_r2_cont")
  r.judge = "oracle" if arm == "mr_oracle" else "policy"
  r.prompt = "continuation" if arm.endswith("_cont") else "table12"
  r.decision_weight = DECISION_WEIGHT_DW if arm == "search_r2_dw" else 1.0
  r.max_revisions = int(arm[4:]) if arm.startswith("nmax") else 1
  w.process = "lexical" if arm in _PROCESS_ARMS else "none"
  if r.joint and arm != "search_r2_dw" and backbone not in _PAPER_BACKBONES:
    # Joint optimisation: the decisions' gradient at most 1x the Actor's global norm
    # (sr2/rl/balance.py). The paper's backbones keep its setting, one loss over both kinds
    # of rows ("none"; their compiled update in BENCHMARKS.md is that one); pass
    # --config.grpo.decision_balance=ratio to balance there too (one forward and two
    # backward passes per micro-batch, and a second float32 gradient sum).
    # Measured on tiny_world, seed 0, from the competent warm start
    # (results/README.md, "The mechanism study"): under "none", the paper's single loss, the
    # gate drifts back to accepting nearly everything (accuracy 0.50 before RL, 0.55 / 0.50
    # / 0.50 at steps 20 / 40 / 60; 5% of drafts revised over steps 1-20, 0% over the
    # last 20), so full Search-R2 becomes Search-R1 at 2.3x its seconds per step; under
    # "ratio" the gate learns (0.50 -> 0.73, revising about half the drafts from step 35)
    # and the Actor's gradient is never scaled down. "clip" at norm 1 would equal "none" on
    # 59 of the ratio run's 60 steps. search_r2_dw keeps the single loss: its balance is
    # the decisions' advantage weight.
    c.grpo.decision_balance = "ratio"
  if arm == "search_r1_g10":
    c.grpo.group_size = 10
  if backbone == "tiny_world":
    # The competent warm start every arm shares: SFT also learns the refiner's task from
    # 600 train questions' judgement demonstrations (gold + one flawed plan each).
    c.data.judge_demos = 600
  if r.enabled and backbone == "tiny_world":
    c.rl.probe_every = 1  # the three drivers every step (rl/drivers.py)
  return c
