"""SmolLM2-135M-Instruct on multihop/2wikimultihopqa: configs/smollm2_hotpotqa.py:2wikimultihopqa.

  python experiments/evaluate.py --config configs/smollm2_2wikimultihopqa.py --workdir /tmp/e2w

Every field and its meaning are in configs/smollm2_hotpotqa.py.
"""

import pathlib
import runpy

_BASE = runpy.run_path(str(pathlib.Path(__file__).with_name("smollm2_hotpotqa.py")))


def get_config(arg: str = "2wikimultihopqa"):
  return _BASE["get_config"](arg)
