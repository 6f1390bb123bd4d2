"""Arms of configs/search_r2.py over seeds, recorded run by run in OUT.json and OUT.md.

  python experiments/ablation.py --root /tmp/mech --init_from '/tmp/mech/warm/seed{seed}' \
    --arms search_r1,mr,mr_pr,search_r2,mr_oracle --seeds 0,1,2 \
    --out results/search_r2_mechanism

Runs every (seed, arm) that OUT.json does not hold yet under ROOT/ARM/seedN (a finished
one is read, an interrupted one resumes), and rewrites OUT.json and OUT.md after each, so
the study goes on where it stopped, on this machine or another. `--init_from` makes each
seed's shared warm start first where it is missing, and refuses one whose test EM before
RL differs from that of the seed's recorded runs: they would not pair (a warm start remade
on another machine can differ). `--table_only` only tabulates: the
recorded runs and the finished ones among the arms x seeds given, naming the others as
left out. `--columns` picks the printed table's columns. sr2/train/ablation.py says what
each column is; sr2/train/ablation_runs.py how the runs are made.

A reproducibility check: run an arm with a seed the study did not use into its own record
and compare it with the study's runs of that arm (mean ± standard error over seeds):

  python experiments/ablation.py --root /tmp/mech --init_from '/tmp/mech/warm/seed{seed}' \
    --arms search_r1 --seeds 3 --out results/search_r2_mechanism_seed3 \
    --against results/search_r2_mechanism
"""

import os
import pathlib
import platform
import sys

from absl import app, flags

from sr2.configlib import load_config_file
from sr2.train import ablation, ablation_runs

_ROOT = flags.DEFINE_string("root", None, "Directory of the runs (ROOT/ARM/seedN).", required=True)
_OUT = flags.DEFINE_string("out", None, "Record stem: OUT.json and OUT.md.", required=True)
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
_AGAINST = flags.DEFINE_string(
  "against",
  "",
  "A reference record's stem: say how far each run of OUT lies from its arm's "
  "mean there, in standard errors (a seed the reference did not use should be within 2).",
)
_COLUMNS = flags.DEFINE_list(
  "columns", list(ablation.COLUMNS), "Columns of the printed table (OUT.md keeps them all)."
)
_CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "search_r2.py"


def main(argv):
  del argv
  arms, seeds = _ARMS.value, [int(s) for s in _SEEDS.value]
  reuse = dict(r.split("=", 1) for r in _REUSE.value)
  recorded = ablation.read_results(_OUT.value)
  meta = {
    "title": f"Arms of configs/search_r2.py on {_BACKBONE.value}",
    "config": f"configs/search_r2.py:{_BACKBONE.value},<arm>",
    "command": " ".join(["python experiments/ablation.py", *sys.argv[1:]]),
    "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
  }
  runs = list(recorded)
  order = list(dict.fromkeys([*arms, *(r["arm"] for r in recorded)]))

  def keep(entry):
    runs.append(entry)
    ablation.write_results(_OUT.value, runs, order, meta)

  done = {(r["arm"], r["seed"]) for r in recorded}
  common = dict(backbone=_BACKBONE.value, init_from=_INIT_FROM.value, reuse=reuse)
  if _TABLE_ONLY.value:
    found, missing = ablation_runs.finished_runs(_ROOT.value, arms, seeds, done=done, **common)
    runs += found
    if missing:
      meta["not finished (left out)"] = ", ".join(missing)
    ablation.write_results(_OUT.value, runs, order, meta)
  else:
    config_of = lambda arm: load_config_file(_CONFIG, f"{_BACKBONE.value},{arm}")
    warm_em = ablation.warm_start_em(recorded)
    ablation_runs.run_arms(
      config_of, arms, seeds, _ROOT.value, done=done, warm_em=warm_em, on_run=keep, **common
    )
    ablation.write_results(_OUT.value, runs, order, meta)
  print(ablation.markdown(ablation.by_arm(runs, order), columns=_COLUMNS.value))
  if _AGAINST.value:
    reference = ablation.read_results(_AGAINST.value)
    for run in runs:
      c = ablation.against(reference, run)
      print(
        f"{c['arm']} seed {c['seed']}: EM after RL {100 * c['value']:.1f}% against "
        f"{100 * c['mean']:.1f} ± {100 * c['se']:.1f}% (mean ± SE) in {_AGAINST.value}: "
        f"z = {c['z']:+.2f}, {'within' if c['within'] else 'NOT within'} 2 SE"
      )


if __name__ == "__main__":
  app.run(main)
