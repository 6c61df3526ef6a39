"""The "same as before" path of P-frames: the previous frame's token at a position gets a learned boost."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from progvc_jax.models import integer
from progvc_jax.models.quantizer import MultiScaleQuantizer
from progvc_jax.models.transformer import COPY_LIMIT_BITS, I_FRAME, P_FRAME
from tests.models.test_transformer import C, V, logits_of, make_model, random_tokens


@pytest.fixture(scope="module")
def quantizer():
  return MultiScaleQuantizer(vocab_size=V, dim=C, tile=4, rngs=nnx.Rngs(0))


def with_boost(model, bias):
  """A copy of `model` whose boost is `bias` nats everywhere (the gate's weights zeroed)."""
  graphdef, state = nnx.split(model)
  other = nnx.merge(graphdef, jax.tree.map(lambda x: x, state))
  other.copy_gate.kernel[...] = jnp.zeros_like(other.copy_gate.kernel[...])
  other.copy_gate.bias[...] = jnp.full_like(other.copy_gate.bias[...], bias)
  return other


def test_the_previous_token_gains_exactly_the_boost_in_p_frames_only(quantizer):
  model = make_model(quantizer, "additive", copy_prev=True)
  cur, prev = random_tokens(quantizer, 0), random_tokens(quantizer, 1)
  prev_flat = np.concatenate([np.asarray(t).reshape(t.shape[0], -1) for t in prev], 1)
  same = prev_flat[..., None] == np.arange(V)
  off = logits_of(with_boost(model, 0.0), quantizer, cur, prev, P_FRAME)
  on = logits_of(with_boost(model, 3.0), quantizer, cur, prev, P_FRAME)
  np.testing.assert_allclose(on - off, np.where(same, 3.0, 0.0), atol=1e-5)
  # Clipped at COPY_LIMIT_BITS, as the integer path clips it.
  huge = logits_of(with_boost(model, 1e4), quantizer, cur, prev, P_FRAME)
  np.testing.assert_allclose((huge - off)[same], COPY_LIMIT_BITS * np.log(2.0), rtol=1e-5)
  # I-frames get none.
  i_off = logits_of(with_boost(model, 0.0), quantizer, cur, prev, I_FRAME)
  np.testing.assert_array_equal(logits_of(with_boost(model, 3.0), quantizer, cur, prev, I_FRAME), i_off)


def test_integer_boost_is_clipped_and_lands_on_the_previous_token():
  z = jnp.asarray([[[10, 20, 30, 5], [10, 20, 30, 1 << 20]]], jnp.int32)  # V = 3, then the boost
  prev = jnp.asarray([[2, 0]], jnp.int32)
  got = integer.same_as_before(z, prev, jnp)
  np.testing.assert_array_equal(got, [[[10, 20, 35], [10 + integer.COPY_LIMIT, 20, 30]]])
  np.testing.assert_array_equal(integer.same_as_before(z, None, jnp), z[..., :3])
  assert integer.COPY_LIMIT == COPY_LIMIT_BITS << integer.Z_FRAC


def test_a_repeated_frame_costs_less_with_a_positive_boost(quantizer):
  """Coding a frame identical to the previous one: the more boost, the fewer bits."""
  model = make_model(quantizer, "additive", copy_prev=True)
  prev = random_tokens(quantizer, 2)
  flat = np.concatenate([np.asarray(t).reshape(t.shape[0], -1) for t in prev], 1)

  def bits(bias):
    logp = jax.nn.log_softmax(logits_of(with_boost(model, bias), quantizer, prev, prev, P_FRAME), -1)
    return -np.take_along_axis(np.asarray(logp), flat[..., None], -1).sum() / np.log(2)
  costs = [bits(b) for b in (0.0, 2.0, 6.0)]
  assert costs[0] > costs[1] > costs[2], costs
