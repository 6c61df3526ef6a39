"""Multi-scale residual quantizer: schedules, resizes, round trips, usage, gradients."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from progvc_jax.models import quantizer as qz


def test_schedules():
  assert qz.scale_schedule(16) == (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
  assert qz.scale_schedule(8) == (1, 2, 3, 4, 5, 7, 8)
  assert qz.scale_schedule(4) == (1, 2, 3, 4)
  s32 = qz.scale_schedule(32)
  assert s32[0] == 1 and s32[-1] == 32 and list(s32) == sorted(set(s32))
  with pytest.raises(ValueError, match="end at the tile size"):
    qz.MultiScaleQuantizer(vocab_size=8, dim=4, tile=8, schedule=(1, 4, 2, 8), rngs=nnx.Rngs(0))


def test_resize_matrices():
  # Area: PyTorch's adaptive pooling windows, e.g. 5 -> 3 covers [0,2), [1,4), [3,5).
  np.testing.assert_allclose(qz.area_matrix(3, 5), [[.5, .5, 0, 0, 0], [0, 1/3, 1/3, 1/3, 0], [0, 0, 0, .5, .5]],
                             rtol=1e-6)
  for out, inp in [(16, 3), (13, 10), (8, 1)]:
    b = qz.bicubic_matrix(out, inp)
    np.testing.assert_allclose(b.sum(1), 1.0, rtol=1e-6)  # constants stay constant
  # Upsampling 2 -> 4 with a = -0.75: the first output sits at source -0.25, so its
  # taps -2..1 clamp to 0,0,0,1 and input 1 gets the far weight at distance 1.25.
  np.testing.assert_allclose(qz.bicubic_matrix(4, 2)[0], [1.10546875, -0.10546875], rtol=1e-6)


def test_phi_assignment_matches_var():
  # Four shared Phis over ten scales, as VAR assigns them (scale 2 sits on a tie
  # between ticks 0 and 1 that VAR's float arithmetic resolves to 1).
  assert [qz.phi_index(k, 10, 4) for k in range(10)] == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]


def _hierarchical(seed, dim=8, per=16, schedule=(1, 2, 4, 8)):
  """A codebook whose scale-k codes are 6x smaller than scale k-1's, and tokens that use it."""
  rng = np.random.default_rng(seed)
  signs = np.array(list(itertools.product([-1, 1], repeat=dim)), np.float32)
  codebook = np.concatenate([signs[rng.choice(len(signs), per, replace=False)] * 100 * 6.0 ** -k
                             for k in range(len(schedule))])
  tokens = [jnp.asarray(rng.integers(0, per, (4, p, p)) + k * per, jnp.int32) for k, p in enumerate(schedule)]
  return codebook, tokens


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_requantizing_decoded_fhat_gives_same_tokens(seed):
  # Phi off (ratio 0), so a decoded fhat is exactly a sum of upsampled codes.
  q = qz.MultiScaleQuantizer(vocab_size=64, dim=8, tile=8, schedule=(1, 2, 4, 8), phi_ratio=0.0,
                             rngs=nnx.Rngs(0))
  codebook, tokens = _hierarchical(seed)
  q.codebook.set_value(jnp.asarray(codebook))
  again = q.encode(q.decode(tokens))
  for k, (a, b) in enumerate(zip(tokens, again)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=f"scale {k}")


@pytest.fixture(scope="module")
def fitted():
  """A quantizer fitted for 150 steps to a fixed batch of latent tiles."""
  f = jax.random.normal(jax.random.key(1), (16, 8, 8, 8))
  q = qz.MultiScaleQuantizer(vocab_size=64, dim=8, tile=8, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(q)
  opt = optax.adam(3e-2)

  @jax.jit
  def step(params, opt_state):
    loss, grads = jax.value_and_grad(lambda p: nnx.merge(graphdef, p)(f)[1]["vq_loss"])(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  opt_state, losses = opt.init(params), []
  for _ in range(150):
    params, opt_state, loss = step(params, opt_state)
    losses.append(float(loss))
  return nnx.merge(graphdef, params), f, losses


def test_fit_lowers_loss_and_prefix_error_does_not_grow(fitted):
  q, f, losses = fitted
  assert losses[-1] < 0.9 * losses[0]
  tokens = q.encode(f)
  assert [t.shape for t in tokens] == [(16, p, p) for p in q.schedule]
  errors = [float(jnp.mean(jnp.square(fh - f))) for fh in q.fhat_prefixes(tokens)]
  assert all(b <= a + 1e-6 for a, b in zip(errors, errors[1:])), errors
  assert errors[-1] < 0.5 * errors[0], errors


def test_prefix_decoding_and_keep(fitted):
  q, f, _ = fitted
  tokens = q.encode(f)
  keep = jnp.array([1, 3, 7, 5] * 4)
  f_st, aux = q(f, keep)
  for i, k in enumerate(np.asarray(keep)):
    expect = q.decode([t[i:i + 1] for t in tokens[:k]])[0]
    np.testing.assert_allclose(np.asarray(f_st[i]), np.asarray(expect), atol=1e-5)
  for a, b in zip(tokens, aux["tokens"]):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # encode(num_scales=k) is the prefix of the full encode.
  for a, b in zip(q.encode(f, 3), tokens[:3]):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert int(aux["hits"].sum()) == sum(16 * p * p for p in q.schedule)


@pytest.mark.slow
def test_straight_through_and_codebook_gradients():
  q = qz.MultiScaleQuantizer(vocab_size=32, dim=4, tile=4, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(q)
  f = jax.random.normal(jax.random.key(0), (2, 4, 4, 4))
  w = jax.random.normal(jax.random.key(1), f.shape)
  # The reconstruction passes gradients to f unchanged.
  g = jax.grad(lambda f: jnp.sum(nnx.merge(graphdef, params)(f)[0] * w))(f)
  np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-6)
  # The VQ loss trains the codebook and the Phi convs.
  gp = jax.grad(lambda p: nnx.merge(graphdef, p)(f)[1]["vq_loss"])(params)
  assert float(jnp.abs(gp["codebook"][...]).sum()) > 0
  assert all(float(jnp.abs(gp["phi"][i]["kernel"][...]).sum()) > 0 for i in range(4))


def test_codebook_usage_constructed():
  hits = jnp.zeros((2, 8)).at[0, :4].set(5.0).at[1, 2].set(9.0)  # uniform over 4 codes; collapsed
  usage = qz.codebook_usage(hits)
  np.testing.assert_allclose(np.asarray(usage["perplexity"]), [4.0, 1.0], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(usage["unused"]), [0.5, 7 / 8], rtol=1e-6)


def test_revive_dead_codes():
  codebook = jnp.arange(12.0).reshape(6, 2)
  usage = jnp.array([5.0, 0.0, 3.0, 0.1, 9.0, 0.0])
  candidates = jnp.full((3, 2), -7.0)
  new, n = qz.revive_dead_codes(codebook, usage, candidates, jax.random.key(0), threshold=0.5)
  assert int(n) == 3
  dead = np.array([False, True, False, True, False, True])
  np.testing.assert_array_equal(np.asarray(new)[~dead], np.asarray(codebook)[~dead])
  np.testing.assert_array_equal(np.asarray(new)[dead], -7.0)


def test_parameters_carry_logical_axes():
  q = qz.MultiScaleQuantizer(vocab_size=32, dim=4, tile=4, rngs=nnx.Rngs(0))
  specs = nnx.to_flat_state(nnx.get_partition_spec(nnx.state(q, nnx.Param)))
  named = {path: tuple(v.get_value()) for path, v in specs}
  assert named[("codebook",)] == ("vocab", "embed")
  assert named[("phi", 0, "kernel")] == (None, None, "conv_in", "conv_out")
