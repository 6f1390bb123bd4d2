"""load_config_file: a config file's get_config, and its errors named; check_choices."""

import dataclasses
import pathlib

import pytest

from sr2.configlib import ConfigError, check_choices, load_config_file

CONFIGS = pathlib.Path(__file__).parents[1] / "configs"


def test_loads_a_variant_unlocked():
  c = load_config_file(CONFIGS / "search_r2.py", "tiny_world,mr")
  assert c.refiner.enabled and not c.refiner.joint and c.reward.process == "none"
  c.seed = 7  # unlocked, as drivers that run several configs need
  assert load_config_file(CONFIGS / "tiny_world.py").sft.steps == 1000  # get_config()


def test_missing_file_and_missing_get_config_are_named(tmp_path):
  with pytest.raises(ConfigError, match=r"config file .*nope\.py does not exist"):
    load_config_file(tmp_path / "nope.py")
  (tmp_path / "bare.py").write_text("X = 1\n")
  with pytest.raises(ConfigError, match=r"bare\.py has no get_config\(\)"):
    load_config_file(tmp_path / "bare.py")


def test_check_choices_names_the_first_field_off_its_options():
  @dataclasses.dataclass(frozen=True)
  class C:
    kind: str = "a"
    mode: str = "x"

  check_choices(C(), "c", {"kind": ("a", "b"), "mode": ("x",)})
  with pytest.raises(ConfigError, match=r"c\.mode='y'; expected one of \('x',\)"):
    check_choices(C(mode="y"), "c", {"kind": ("a", "b"), "mode": ("x",)})
  with pytest.raises(ValueError, match=r"c\.kind='z'"):
    check_choices(C(kind="z", mode="y"), "c", {"kind": ("a",), "mode": ("x",)}, error=ValueError)
