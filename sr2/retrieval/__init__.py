"""In-process BM25 retrieval: corpora, the index, and observation formatting."""

from sr2.retrieval.bm25 import (
  MAX_QUERY_CHARS,
  BM25Config,
  BM25Error,
  BM25Index,
  Hit,
  SearchStats,
  tokenize,
)
from sr2.retrieval.corpus import (
  CorpusError,
  format_documents,
  format_information,
  pool_multihop_paragraphs,
  read_jsonl_corpus,
  validate_passages,
)

__all__ = [
  "MAX_QUERY_CHARS",
  "BM25Config",
  "BM25Error",
  "BM25Index",
  "CorpusError",
  "Hit",
  "SearchStats",
  "format_documents",
  "format_information",
  "pool_multihop_paragraphs",
  "read_jsonl_corpus",
  "tokenize",
  "validate_passages",
]
