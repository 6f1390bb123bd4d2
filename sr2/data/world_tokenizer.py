"""A small byte-level BPE tokenizer trained on a text collection (the synthetic world's).

The tiny models of the embedded default are trained from scratch, so their vocabulary is
too: a few thousand BPE merges learnt on the world's passages, questions, prompt and gold
trajectories. The agent's tags are whole tokens, so `</search>` and `</answer>` are each
one token and stop strings fire on them exactly. Byte-level pre-tokenisation means any
text still encodes (unseen characters fall back to byte tokens).
"""

from __future__ import annotations

from collections.abc import Iterable

from sr2.data import prompts
from sr2.models.tokenizer import Tokenizer

EOS, PAD = "<eos>", "<pad>"
TAG_TOKENS = prompts.TAGS


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2048) -> Tokenizer:
  """Trains byte-level BPE on `texts` (deterministic for the same texts in the same order).

  Args:
    texts: training text.
    vocab_size: total vocabulary, byte alphabet, merges, tags and specials included.

  Returns:
    A `Tokenizer` with `<eos>` as end of sequence and `<pad>` as padding.
  """
  from tokenizers import AddedToken, decoders, models, pre_tokenizers, trainers
  from tokenizers import Tokenizer as RustTokenizer
  from transformers import PreTrainedTokenizerFast

  if vocab_size < 300:
    raise ValueError(f"vocab_size={vocab_size}: needs >= 300 (256 bytes + tags + merges)")
  rust = RustTokenizer(models.BPE())
  rust.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  rust.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
    vocab_size=vocab_size - len(TAG_TOKENS),
    special_tokens=[EOS, PAD],
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    show_progress=False,
  )
  rust.train_from_iterator(list(texts), trainer)
  # Tags are ordinary (not special) added tokens: they decode as text, encode atomically.
  rust.add_tokens([AddedToken(t, normalized=False, special=False) for t in TAG_TOKENS])
  hf = PreTrainedTokenizerFast(tokenizer_object=rust, eos_token=EOS, pad_token=PAD)
  return Tokenizer(hf)
