"""Tokenizers for sr2 models: an HF fast tokenizer behind a small, stable interface.

Built from an HF checkpoint directory (tokenizer.json + tokenizer_config.json + chat
template) or from a GGUF file's `tokenizer.ggml.*` metadata. transformers is used for its
Rust tokenizers and chat templates only; nothing here imports torch.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

# Tokens that end an assistant turn in the chat formats of the supported families.
_TURN_END_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>")


class TokenizerError(ValueError):
  """A tokenizer is missing, malformed or does not fit its model."""


class Tokenizer:
  """Text <-> token ids, chat templates and the ids that end generation.

  Attributes:
    bos_id / eos_id / pad_id: special ids (None when the tokenizer has none; pad falls back
      to eos).
    eos_ids: every id that ends an assistant turn (eos plus chat end-of-turn tokens).
  """

  def __init__(self, hf_tokenizer: Any):
    self._tok = hf_tokenizer
    self.bos_id = hf_tokenizer.bos_token_id
    self.eos_id = hf_tokenizer.eos_token_id
    self.pad_id = (
      hf_tokenizer.pad_token_id if hf_tokenizer.pad_token_id is not None else self.eos_id
    )
    vocab = hf_tokenizer.get_vocab()
    ends = {vocab[t] for t in _TURN_END_TOKENS if t in vocab}
    if self.eos_id is not None:
      ends.add(self.eos_id)
    self.eos_ids = frozenset(ends)

  # ------------------------------------------------------------------ construction

  @classmethod
  def from_dir(cls, path: str | os.PathLike) -> Tokenizer:
    """Loads `tokenizer.json` (+ config and chat template) from a checkpoint directory."""
    from transformers import PreTrainedTokenizerFast

    path = pathlib.Path(path)
    if not (path / "tokenizer.json").is_file():
      raise TokenizerError(f"{path} has no tokenizer.json (expected an HF checkpoint directory)")
    try:
      tok = PreTrainedTokenizerFast.from_pretrained(str(path), local_files_only=True)
    except Exception as e:  # malformed json, unknown model type, ...
      raise TokenizerError(f"could not load the tokenizer in {path}: {e}") from e
    return cls(tok)

  @classmethod
  def from_gguf_metadata(cls, architecture: str, metadata: Mapping[str, Any]) -> Tokenizer:
    """Builds the tokenizer a GGUF file describes in its `tokenizer.*` metadata."""
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf.gguf_tokenizer_mapping import (
      GGUF_TOKENIZER_MAPPING,
      convert_gguf_tokenizer,
    )

    renames = GGUF_TOKENIZER_MAPPING["tokenizer"]
    tdict = {
      name: metadata[f"tokenizer.{key}"]
      for key, name in renames.items()
      if f"tokenizer.{key}" in metadata
    }
    if "tokens" not in tdict:
      raise TokenizerError("the GGUF file has no tokenizer.ggml.tokens: no tokenizer to build")
    backend, _ = convert_gguf_tokenizer(architecture, tdict)
    tokens = tdict["tokens"]

    def special(key):
      i = metadata.get(f"tokenizer.ggml.{key}")
      return tokens[i] if i is not None and 0 <= i < len(tokens) else None

    tok = PreTrainedTokenizerFast(
      tokenizer_object=backend,
      bos_token=special("bos_token_id"),
      eos_token=special("eos_token_id"),
      unk_token=special("unknown_token_id"),
      pad_token=special("padding_token_id"),
    )
    if "tokenizer.chat_template" in metadata:
      tok.chat_template = metadata["tokenizer.chat_template"]
    return cls(tok)

  @property
  def hf(self):
    """The underlying transformers fast tokenizer (for vocabulary-level work)."""
    return self._tok

  def save(self, path: str | os.PathLike) -> None:
    """Writes tokenizer.json, tokenizer_config.json and the chat template to `path`."""
    self._tok.save_pretrained(str(path))

  # ------------------------------------------------------------------ use

  def __len__(self) -> int:
    return len(self._tok)

  @property
  def vocab_size(self) -> int:
    """Number of ids the tokenizer can produce (added tokens included)."""
    return len(self._tok)

  def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
    if not isinstance(text, str):
      raise TypeError(f"encode expects a str, got {type(text).__name__}")
    return self._tok.encode(text, add_special_tokens=add_special_tokens)

  def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
    return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

  def id_to_token(self, i: int) -> str | None:
    return self._tok.convert_ids_to_tokens(int(i))

  @property
  def has_chat_template(self) -> bool:
    return bool(getattr(self._tok, "chat_template", None))

  def apply_chat_template(
    self,
    messages: Sequence[Mapping[str, str]],
    tokenize: bool = False,
    add_generation_prompt: bool = True,
    **kwargs: Any,
  ):
    """Renders chat `messages` with the model's template (HF-compatible signature)."""
    if not self.has_chat_template:
      raise TokenizerError("this tokenizer has no chat template; render the prompt as plain text")
    return self._tok.apply_chat_template(
      list(messages), tokenize=tokenize, add_generation_prompt=add_generation_prompt, **kwargs
    )

  def check_fits(self, vocab_size: int) -> None:
    """Raises if the tokenizer can emit ids the model's embedding does not have."""
    if self.vocab_size > vocab_size:
      raise TokenizerError(
        f"tokenizer has {self.vocab_size} tokens but the model's vocab_size is {vocab_size}: "
        "ids past the embedding would be out of range (mismatched tokenizer and weights?)"
      )

  def __repr__(self) -> str:
    return f"Tokenizer(vocab={self.vocab_size}, bos={self.bos_id}, eos={self.eos_id})"
