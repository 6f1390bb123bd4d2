"""SmolLM2-135M-Instruct on multihop/musique: configs/smollm2_hotpotqa.py with arg 'musique'.

  python experiments/evaluate.py --config configs/smollm2_musique.py --workdir /tmp/eval_musique

Every field and its meaning are in configs/smollm2_hotpotqa.py.
"""

import pathlib
import runpy

_BASE = runpy.run_path(str(pathlib.Path(__file__).with_name("smollm2_hotpotqa.py")))


def get_config(arg: str = "musique"):
  return _BASE["get_config"](arg)
