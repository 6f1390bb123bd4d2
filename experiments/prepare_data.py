r"""Turns FlashRAG-format QA JSONL files into tensorflow-datasets datasets (no TensorFlow).

  python experiments/prepare_data.py --source DIR --data_dir OUT [--datasets nq,hotpotqa]

DIR holds `qa/<name>/<split>.jsonl` and `multihop/<name>/<split>.jsonl` (the layout of
shared/data). Names: nq, triviaqa, popqa, hotpotqa, 2wikimultihopqa, musique, bamboogle,
nq_hotpotqa_train (NQ train + HotpotQA train) and multihop/<name> (rows with paragraphs).
By default every dataset whose source directory exists is prepared. Prints one JSON line
per dataset: its splits with row counts, and the seconds it took.
"""

import json
import os
import time

from absl import app, flags

from sr2.data import qa

_SOURCE = flags.DEFINE_string("source", None, "Directory of FlashRAG-format JSONL files.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Where the tfds datasets are written.")
_DATASETS = flags.DEFINE_list("datasets", None, "Names to prepare (default: all found).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Rebuild datasets already prepared.")
flags.mark_flags_as_required(["source", "data_dir"])


def _available(source: str) -> list[str]:
  def has(sub, name):
    return os.path.isdir(os.path.join(source, sub, name)) or os.path.isdir(
      os.path.join(source, name)
    )

  names = [n for n in qa.QA_DATASETS if has("qa", n)]
  if all(os.path.isfile(os.path.join(source, "qa", n, "train.jsonl")) for n in qa.MIX_SOURCES):
    names.append(qa.MIX_NAME)
  names += [qa.MULTIHOP_PREFIX + n for n in qa.MULTIHOP_DATASETS if has("multihop", n)]
  return names


def main(argv):
  del argv
  names = _DATASETS.value or _available(_SOURCE.value)
  if not names:
    raise app.UsageError(f"no FlashRAG-format datasets found under {_SOURCE.value}")
  for name in names:
    start = time.perf_counter()
    builder = qa.prepare(name, _SOURCE.value, _DATA_DIR.value, overwrite=_OVERWRITE.value)
    rows = {s: info.num_examples for s, info in sorted(builder.info.splits.items())}
    seconds = round(time.perf_counter() - start, 3)
    print(json.dumps({"dataset": name, "rows": rows, "seconds": seconds}), flush=True)


if __name__ == "__main__":
  app.run(main)
