"""configs/search_r2.py: each arm differs from the one it extends only in what it names."""

import pathlib

import pytest

from sr2.configlib import load_config_file
from sr2.train.records import config_json, flatten

CONFIG = pathlib.Path(__file__).parents[1] / "configs" / "search_r2.py"


def _diff(a: str, b: str, backbone: str = "tiny_world") -> dict:
  fa = flatten(config_json(load_config_file(CONFIG, f"{backbone},{a}")))
  fb = flatten(config_json(load_config_file(CONFIG, f"{backbone},{b}")))
  return {k: (fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)}


@pytest.mark.parametrize("backbone", ["tiny_world", "smollm2"])
def test_each_arm_adds_one_switch(backbone):
  probes = {"rl.probe_every": (0, 1)} if backbone == "tiny_world" else {}
  assert _diff("search_r1", "mr", backbone) == {"refiner.enabled": (False, True), **probes}
  assert _diff("mr", "mr_pr", backbone) == {"reward.process": ("none", "lexical")}
  assert _diff("mr_pr", "search_r2", backbone) == {
    "refiner.joint": (False, True),
    "grpo.decision_balance": ("none", "ratio"),
  }
  assert _diff("search_r1", "search_r1_g10", backbone) == {"grpo.group_size": (5, 10)}


def test_beyond_the_paper_arms_and_table_4():
  assert _diff("mr", "nmax1") == {}  # N_max = 1 is the +MR arm
  assert _diff("mr", "nmax3") == {"refiner.max_revisions": (1, 3)}
  assert _diff("mr", "mr_oracle") == {"refiner.judge": ("policy", "oracle")}
  assert _diff("search_r2", "search_r2_dw") == {
    "grpo.decision_balance": ("ratio", "none"),
    "refiner.decision_weight": (1.0, 0.02),
  }
  assert _diff("search_r2", "search_r2_cont") == {"refiner.prompt": ("table12", "continuation")}


def test_the_paper_backbones_keep_the_papers_single_loss():
  assert _diff("mr_pr", "search_r2", "qwen2.5-7b") == {"refiner.joint": (False, True)}
