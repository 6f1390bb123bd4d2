"""Ask a model a question: `python experiments/ask.py --config configs/ask.py --question "..."`."""

import json

from absl import app, flags
from ml_collections import config_flags

from sr2.chat import ask

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_QUESTION = flags.DEFINE_string("question", None, "The question.", required=True)


def main(argv):
  del argv
  print(json.dumps(ask(_CONFIG.value, _QUESTION.value), ensure_ascii=False))


if __name__ == "__main__":
  app.run(main)
