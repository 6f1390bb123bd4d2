"""Train: `python experiments/train.py --config configs/tiny_world.py --workdir DIR`."""

import json

from absl import app, flags
from ml_collections import config_flags

from sr2.train.loop import train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Output directory (resumes if it has a checkpoint).", required=True
)
_INIT_FROM = flags.DEFINE_string(
  "init_from", None, "Start from the warm start another run kept (rl.keep_warm_start)."
)


def main(argv):
  del argv
  print(json.dumps(train_and_evaluate(_CONFIG.value, _WORKDIR.value, _INIT_FROM.value), indent=1))


if __name__ == "__main__":
  app.run(main)
