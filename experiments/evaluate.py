"""Evaluate datasets × methods: `python experiments/evaluate.py --config CONFIG --workdir DIR`.

Writes DIR/eval/results.json, results.md and trajectories/<dataset>__<method>.jsonl, and
prints the markdown table. `--limit N` evaluates the first N questions of each dataset.
Several processes split each dataset's batches with the multi-process flags of
sr2/parallel/cli.py; process 0 writes the files.
"""

from absl import app, flags
from ml_collections import config_flags

from sr2.eval import markdown_table, run_evaluation
from sr2.parallel import cli, hosts
from sr2.train import records

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.", required=True)
_LIMIT = flags.DEFINE_integer("limit", None, "Questions per dataset (overrides eval.limit).")


def main(argv):
  del argv
  records.log_to_stdout()
  cli.initialize_from_flags()
  result = run_evaluation(_CONFIG.value, _WORKDIR.value, limit=_LIMIT.value)
  if hosts.is_writer():
    print(markdown_table(result.rows), end="")


if __name__ == "__main__":
  app.run(main)
