"""SFT warm start: examples match rollout segmentation, loss masks, and learning."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sr2 import models
from sr2.data import WorldConfig, actor_prompt, build_world
from sr2.data.trajectories import render_steps
from sr2.data.world_tokenizer import TAG_TOKENS, train_tokenizer
from sr2.rl.optim import OptConfig, make_optimizer, schedule
from sr2.train import sft

SMALL = WorldConfig(
  num_persons=20,
  num_cities=8,
  num_companies=6,
  num_countries=3,
  num_landmarks=4,
  questions_per_hop=(20, 20, 20),
)


@pytest.fixture(scope="module")
def world_tok():
  world = build_world(SMALL)
  tok = train_tokenizer(world.texts() + [actor_prompt("x")], vocab_size=600)
  return world, tok


def test_tokenizer_is_deterministic_and_tags_are_atomic(world_tok):
  world, tok = world_tok
  again = train_tokenizer(world.texts() + [actor_prompt("x")], vocab_size=600)
  text = render_steps(world.split("train")[0].gold, lambda q: "Doc 1(Title: A) b")[0][0]
  assert tok.encode(text) == again.encode(text) and len(tok) == 600
  for tag in TAG_TOKENS:
    assert len(tok.encode(tag)) == 1
  assert tok.decode(tok.encode(text)) == text
  assert tok.eos_ids == {tok.eos_id} and tok.pad_id != tok.eos_id
  with pytest.raises(ValueError, match="vocab_size"):
    train_tokenizer(["a"], vocab_size=10)


def test_example_masks_follow_segments(world_tok):
  world, tok = world_tok
  q = world.split("train")[3]
  steps = render_steps(q.gold, lambda query: f"Doc 1(Title: {query}) text")
  prompt = tok.encode(actor_prompt(q.question))
  ex = sft.trajectory_example(prompt, steps, tok)
  ids, mask = np.asarray(ex.ids), np.asarray(ex.mask)
  assert len(ids) == len(mask) and not mask[: len(prompt)].any()
  # Model-written tokens, decoded, are exactly the assistant texts in order.
  assert tok.decode(ids[mask == 1].tolist()) == "".join(a for a, _ in steps)
  assert tok.decode(ids[len(prompt) :][mask[len(prompt) :] == 0].tolist()) == "".join(
    o for _, o in steps if o
  )


def test_loss_by_hand_and_masked_positions_get_no_gradient():
  c = models.preset("tiny", vocab_size=16, n_layers=1)
  p = models.init_params(c, jax.random.key(0))
  tokens = jnp.asarray([[1, 2, 3, 4]])
  mask = jnp.asarray([[0, 0, 1, 1]])
  loss, m = sft.sft_loss(c, p, tokens, mask)
  logp = jax.nn.log_softmax(models.forward(c, p, tokens[:, :-1]), -1)
  # Targets at t = 2, 3 (mask[:, 1:] = [0, 1, 1]): -(log p(3|1,2) + log p(4|1,2,3)) / 2.
  want = -(logp[0, 1, 3] + logp[0, 2, 4]) / 2
  np.testing.assert_allclose(loss, want, rtol=1e-6)
  assert float(m["sft_tokens"]) == 2
  g = jax.grad(lambda lp: -(lp * mask[:, 1:]).sum())(jnp.zeros((1, 3)))
  assert g[0, 0] == 0


def test_sft_learns_a_fixed_sequence():
  c = models.preset("tiny", vocab_size=32, n_layers=1, d_model=32, d_ff=64)
  p = models.init_params(c, jax.random.key(0))
  ex = [sft.example_from_segments([1, 2], [([5, 6, 7, 8], True), ([9, 9], False), ([3], True)])]
  opt = make_optimizer(OptConfig(lr=1e-2, weight_decay=0.0))
  before, _ = sft.sft_loss(c, p, *map(jnp.asarray, sft.batch(ex, 0, 16)))
  p, _ = sft.run_sft(c, p, opt, ex, steps=60, batch_size=2, pad_id=0, buckets=(16,))
  after, _ = sft.sft_loss(c, p, *map(jnp.asarray, sft.batch(ex, 0, 16)))
  assert float(after) < 0.1 * float(before)


def test_choice_draws_options_at_their_weights_and_rejects_bad_weights():
  a, b = sft.Example((1,), (1,)), sft.Example((2,), (1,))
  choice = sft.Choice((a, b), (0.25, 0.75))
  draws = [choice.draw(np.random.default_rng(7)) for _ in range(2)]
  assert draws[0] == draws[1]  # same seed, same draw
  rng = np.random.default_rng(0)
  share = np.mean([choice.draw(rng) == b for _ in range(4000)])
  assert abs(share - 0.75) < 0.03
  assert all(sft.Choice((a, b), (0.0, 1.0)).draw(rng) == b for _ in range(50))
  with pytest.raises(ValueError, match="as many weights"):
    sft.Choice((a, b), (1.0,))
  with pytest.raises(ValueError, match="positive sum"):
    sft.Choice((a, b), (0.0, 0.0))


def test_run_sft_learns_the_demonstrator_rate_of_a_choice():
  # One prompt, two continuations drawn 3:1; the trained model's next-token distribution
  # after the prompt approaches the demonstrator's rates, not the majority choice alone.
  c = models.preset("tiny", vocab_size=16, n_layers=1, d_model=32, d_ff=64)
  p = models.init_params(c, jax.random.key(0))
  seg = lambda t: sft.example_from_segments([1, 2], [([t], True)])
  ex = [sft.Choice((seg(5), seg(6)), (0.75, 0.25))]
  opt = make_optimizer(OptConfig(lr=3e-3, weight_decay=0.0))
  # Batches of 32 from one example: the epoch order is refilled until the batch is full.
  p, _ = sft.run_sft(c, p, opt, ex, steps=200, batch_size=32, pad_id=0, buckets=(4,))
  probs = jax.nn.softmax(models.forward(c, p, jnp.asarray([[1, 2]]))[0, -1])
  assert abs(float(probs[5]) - 0.75) < 0.06 and abs(float(probs[6]) - 0.25) < 0.06


def test_optimizer_warmup_and_bad_config():
  s = schedule(OptConfig(lr=1e-3, warmup_steps=10))
  np.testing.assert_allclose([s(0), s(5), s(10), s(100)], [0, 5e-4, 1e-3, 1e-3], rtol=1e-6)
  assert isinstance(make_optimizer(OptConfig()), optax.GradientTransformation)
  with pytest.raises(ValueError, match="opt.lr"):
    OptConfig(lr=0)
  with pytest.raises(ValueError, match="batch length"):
    sft.batch([sft.Example((1, 2, 3), (1, 1, 1))], 0, 2)


def test_cosine_schedule_warms_up_then_decays_to_the_floor():
  s = schedule(OptConfig(lr=1e-3, warmup_steps=10, decay_steps=110, final_lr_ratio=0.1))
  assert float(s(0)) == 0.0 and abs(float(s(10)) - 1e-3) < 1e-9
  # Halfway through the cosine: floor + (peak - floor) / 2.
  assert abs(float(s(60)) - (1e-4 + 0.45e-3)) < 1e-8
  assert abs(float(s(110)) - 1e-4) < 1e-9 and abs(float(s(500)) - 1e-4) < 1e-9
  with pytest.raises(ValueError, match="decay_steps"):
    OptConfig(warmup_steps=10, decay_steps=5)
