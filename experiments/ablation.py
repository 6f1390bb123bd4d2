"""The ablation of configs/search_r2.py's arms over seeds, and its table.

  python experiments/ablation.py --root /tmp/ablation --init_from '/tmp/main_s{seed}' \
    --reuse 'search_r1=/tmp/main_s{seed}' --out results/ablation_tiny_world

Runs every (seed, arm) that has not finished under ROOT/ARM/seedN (an interrupted one
resumes), then writes OUT.json and OUT.md (sr2/rl/ablation.py says what each column is).
`--table_only` only tabulates: the finished runs among the arms x seeds given, naming the
others as left out.
"""

import os
import pathlib
import platform
import sys

from absl import app, flags

from sr2.configlib import load_config_file
from sr2.train import ablation

_ROOT = flags.DEFINE_string("root", None, "Directory of the runs (ROOT/ARM/seedN).", required=True)
_OUT = flags.DEFINE_string("out", None, "Results stem: writes OUT.json and OUT.md.", required=True)
_BACKBONE = flags.DEFINE_string("backbone", "tiny_world", "Backbone of configs/search_r2.py.")
_ARMS = flags.DEFINE_list("arms", ["search_r1", "mr", "mr_pr", "search_r2"], "Arms, in order.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds.")
_INIT_FROM = flags.DEFINE_string(
  "init_from", "", "Workdir pattern with {seed} whose kept warm start each seed's runs share."
)
_REUSE = flags.DEFINE_multi_string(
  "reuse", [], "ARM=PATTERN: finished runs made elsewhere, e.g. search_r1=/tmp/main_s{seed}."
)
_TABLE_ONLY = flags.DEFINE_bool("table_only", False, "Only tabulate the finished runs.")
_CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "search_r2.py"


def main(argv):
  del argv
  arms, seeds = _ARMS.value, [int(s) for s in _SEEDS.value]
  reuse = dict(r.split("=", 1) for r in _REUSE.value)
  missing = []
  if _TABLE_ONLY.value:
    runs, missing = ablation.finished_runs(_ROOT.value, arms, seeds, reuse)
  else:
    runs = ablation.run_arms(
      lambda arm: load_config_file(_CONFIG, f"{_BACKBONE.value},{arm}"),
      arms,
      seeds,
      _ROOT.value,
      init_from=_INIT_FROM.value,
      reuse=reuse,
    )
  table = ablation.build_table(runs)
  meta = {
    "title": f"Ablation on {_BACKBONE.value}: arms {', '.join(arms)}; seeds {seeds}",
    "config": f"configs/search_r2.py:{_BACKBONE.value},<arm>",
    "command": " ".join(["python experiments/ablation.py", *sys.argv[1:]]),
    "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
  }
  if missing:
    meta["not finished (left out)"] = ", ".join(missing)
  ablation.write_results(table, _OUT.value, meta)
  print(ablation.markdown(table))


if __name__ == "__main__":
  app.run(main)
