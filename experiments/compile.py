"""Compile a training step's programs for a TPU slice on this host; per-chip memory and FLOPs.

  python experiments/compile.py --config configs/tiny_world.py:smoke --topology v5p-8
  python experiments/compile.py --config configs/search_r2.py:qwen2.5-7b,search_r2 \
      --topology v5p-16 --programs update

Needs libtpu (`pip install "jax[tpu]==<jax version>"`), not a TPU. Prints one JSON line per
program (sr2/aot/programs.py says what each field means) and exits with status 1, naming them, when
any program does not fit the chip's HBM. Without --topology the config's
`mesh.topology` is used.
"""

import json
import sys

from absl import app, flags
from ml_collections import config_flags

from sr2 import aot
from sr2.configlib import ConfigError
from sr2.parallel.topology import parse_topology

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
_TOPOLOGY = flags.DEFINE_string(
  "topology", None, "TPU slice: v4-32, v5e-16, v5p-64, v6e-8, or explicit v5p:2x2x4, v5e:4x4."
)
_PROGRAMS = flags.DEFINE_list(
  "programs", None, f"Programs to compile, of {','.join(aot.PROGRAMS)}; default: those a step runs."
)
_ROLLOUT_ROWS = flags.DEFINE_integer(
  "rollout_rows", None, "Rows of the rollout programs; default: the step's B*G rollouts."
)
_PREFILL_TOKENS = flags.DEFINE_integer(
  "prefill_tokens", None, f"Prompt chunk of extend; default {aot.DEFAULT_PREFILL_TOKENS}."
)


_PROJECTION = flags.DEFINE_bool(
  "projection",
  False,
  "Also print a roofline projection of a step's seconds, Search-R1 and Search-R2 "
  "(sr2/aot/roofline.py; needs extend, decode and the refiner's judgement compiled).",
)


def main(argv):
  del argv
  config = _CONFIG.value
  topology = _TOPOLOGY.value or aot.config_topology(config)
  if not topology:
    raise app.UsageError("pass --topology (the config has no mesh.topology), e.g. v5p-16")
  records = []
  for record in aot.compile_programs(
    config, topology, _PROGRAMS.value, _ROLLOUT_ROWS.value, _PREFILL_TOKENS.value
  ):
    print(json.dumps(record), flush=True)
    records.append(record)
  if _PROJECTION.value:
    plan = aot.make_plan(config, _ROLLOUT_ROWS.value, _PREFILL_TOKENS.value)
    topo = parse_topology(topology)
    by_name = {r["program"]: r for r in records}
    try:
      backbone = aot.preset_name(config.model.source)
    except (ConfigError, AttributeError):  # the world's model is not a preset
      backbone = None
    projected = aot.project(plan, topo, by_name, hosts=records[0]["hosts"], backbone=backbone)
    print(json.dumps(projected), flush=True)
  bad = [r for r in records if not r["fits"]]
  if bad:
    why = ", ".join(
      f"{r['program']} ({'XLA: out of HBM' if r.get('error') else aot.gib(r['peak_bytes'])}"
      f" > {aot.gib(r['hbm_bytes'])})"
      for r in bad
    )
    sys.exit(f"does not fit one chip of {records[0]['topology']}: {why}")


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  app.run(main)
