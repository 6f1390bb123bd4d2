r"""Builds a BM25 index directory that `sr2.retrieval.BM25Index.load` opens.

A JSONL corpus ({id, title, text} or FlashRAG {id, contents}):
  python experiments/build_index.py --corpus ../shared/data/corpus/wiki_intros.jsonl \
    --out workdirs/index/wiki
The pooled paragraphs of multi-hop QA files:
  python experiments/build_index.py --multihop --out workdirs/index/hotpotqa \
    --corpus ../shared/data/multihop/hotpotqa/dev.jsonl,../shared/data/multihop/hotpotqa/train.jsonl
Prints one JSON line: passages, seconds, bytes on disk.
"""

import json
import pathlib
import time

from absl import app, flags

from sr2 import retrieval

_CORPUS = flags.DEFINE_list("corpus", None, "JSONL corpus; with --multihop, multi-hop QA files.")
_OUT = flags.DEFINE_string("out", None, "Directory to write the index to.")
_MULTIHOP = flags.DEFINE_bool("multihop", False, "Pool the `paragraphs` of multi-hop QA rows.")
_METHOD = flags.DEFINE_enum("method", "lucene", list(retrieval.bm25.METHODS), "BM25 variant.")
_K1 = flags.DEFINE_float("k1", 1.5, "Term-frequency saturation.")
_B = flags.DEFINE_float("b", 0.75, "Length normalisation.")
_STOPWORDS = flags.DEFINE_enum("stopwords", "en", ["en", "none"], "Stopword list.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    summary = _build(_CORPUS.value, pathlib.Path(_OUT.value))
  except (retrieval.CorpusError, retrieval.BM25Error) as e:
    raise SystemExit(f"build_index: {e}") from None
  print(json.dumps(summary))


def _build(corpus: list[str], out: pathlib.Path) -> dict:
  start = time.perf_counter()
  if _MULTIHOP.value:
    passages = retrieval.pool_multihop_paragraphs(corpus)
  elif len(corpus) == 1:
    passages = retrieval.read_jsonl_corpus(corpus[0])
  else:
    raise app.UsageError("--corpus takes one JSONL corpus (several files need --multihop)")
  index = retrieval.BM25Index.build(
    passages,
    method=_METHOD.value,
    k1=_K1.value,
    b=_B.value,
    stopwords=None if _STOPWORDS.value == "none" else _STOPWORDS.value,
    show_progress=True,
  )
  index.save(out)
  return {
    "passages": len(index),
    "seconds": round(time.perf_counter() - start, 3),
    "bytes": sum(p.stat().st_size for p in out.iterdir() if p.is_file()),
    "method": _METHOD.value,
    "out": str(out),
  }


if __name__ == "__main__":
  flags.mark_flags_as_required(["corpus", "out"])
  app.run(main)
