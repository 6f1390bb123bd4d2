"""Train: `python experiments/train.py --config configs/tiny_world.py --workdir DIR`.

Several processes (one per host, or per group of fake CPU devices) run it alike with
`--coordinator_address --num_processes --process_id` (sr2/parallel/cli.py); on a Cloud TPU
VM slice JAX finds the workers without them. The workdir records the run (config.json,
run.json, train.log; sr2/train/records.py); resuming with another config is refused unless
`--allow_config_change` is given.
"""

import json

from absl import app, flags
from ml_collections import config_flags

from sr2.parallel import cli, hosts
from sr2.train import records
from sr2.train.loop import train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Output directory (resumes if it has a checkpoint).", required=True
)
_INIT_FROM = flags.DEFINE_string(
  "init_from", None, "Start from the warm start another run kept (rl.keep_warm_start)."
)
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
  "allow_config_change",
  False,
  "Resume even though the config differs from the workdir's config.json.",
)


def main(argv):
  del argv
  records.log_to_stdout()
  cli.initialize_from_flags()
  summary = train_and_evaluate(
    _CONFIG.value, _WORKDIR.value, _INIT_FROM.value, _ALLOW_CONFIG_CHANGE.value
  )
  if hosts.is_writer():
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
  app.run(main)
