"""The warm start of a QA run: SFT of a loaded checkpoint on gold search trajectories."""

import json
import pathlib

import jax
import numpy as np
import pytest

from sr2 import models
from sr2.configlib import load_config_file
from sr2.models import export
from sr2.testing import tiny_byte_tokenizer
from sr2.train.loop import train_and_evaluate

CONFIGS = pathlib.Path(__file__).parents[1] / "configs"
PARAGRAPHS = [
  {"title": "Vorla (poet)", "text": "Vorla was born in Brezum.", "is_supporting": True},
  {"title": "Brezum", "text": "Brezum is a city in Kelt.", "is_supporting": True},
  {"title": "Kelt", "text": "Kelt is a country.", "is_supporting": False},
]
ROWS = [
  {"id": "q1", "question": "In which country was Vorla born?", "golden_answers": ["Kelt"]},
  {
    "id": "q2",
    "question": "Which country is the birthplace of Vorla in?",
    "golden_answers": ["Kelt"],
  },
]


def _checkpoint(path):
  """A tiny random model and a byte tokenizer with a chat template, as an HF directory
  (key 7: not the init of the run's own fresh state, seed 0)."""
  tok = tiny_byte_tokenizer()
  tok._tok.chat_template = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}<|assistant|>"
  )
  config = models.preset("tiny", vocab_size=len(tok), n_layers=1, max_seq_len=4096)
  export.save_hf_dir(path, config, models.init_params(config, jax.random.key(7)), tok)
  return path


def _data(root):
  for split in ("train", "dev"):
    d = root / "multihop" / "toy"
    d.mkdir(parents=True, exist_ok=True)
    rows = [{**r, "paragraphs": PARAGRAPHS} for r in ROWS]
    (d / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  return root


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("warm")
  c = load_config_file(CONFIGS / "search_r2.py", "smollm2,search_r1")
  c.model.source = str(_checkpoint(tmp / "ckpt"))
  c.data.update(
    dict(data_root=str(_data(tmp / "data")), train=("multihop/toy:train",), dev=("multihop/toy",))
  )
  c.data.eval_limit = 2
  c.rollout.max_turn_tokens = 16
  c.sft.steps, c.sft.batch_size, c.sft_opt.decay_steps = 3, 2, 3
  c.sft_opt.warmup_steps = 1
  c.rl.steps = 0
  return tmp, train_and_evaluate(c, str(tmp / "run"))


def test_sft_on_gold_trajectories_then_the_warm_start_as_an_hf_checkpoint(warm):
  tmp, summary = warm
  run = tmp / "run"
  assert summary["sft_data"] == {
    "demonstrations": 2,
    "rows": 2,
    "dropped": {"no_supporting": 0, "no_answer": 0, "not_retrieved": 0, "too_long": 0},
  }
  sft = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in sft if r["phase"] == "sft"] == [0]  # logged every 10 steps
  # No GRPO step: the evaluation after RL is the warm start's, not run twice.
  assert summary["eval_after_rl"] == summary["eval_before_rl"]
  before = models.load(tmp / "ckpt")
  after = models.load(run / "warm_start" / "hf")
  assert after.config == before.config
  moved = [
    float(np.abs(np.asarray(a) - np.asarray(b)).max())
    for a, b in zip(jax.tree.leaves(after.params), jax.tree.leaves(before.params), strict=True)
  ]
  # SFT trained the loaded checkpoint (3 Adam steps at lr <= 5e-5 move a weight by at most
  # ~1.5e-4), not a fresh init, whose weights differ from it by O(0.1).
  assert 0 < max(moved) < 1e-3
  assert after.tokenizer.has_chat_template
  assert (run / "final" / "hf" / "model.safetensors").is_file()
