"""Rematerialisation (config.remat): the same gradients, from a program that recomputes blocks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from progvc_jax.models.tokenizer import Tokenizer
from progvc_jax.models.transformer import ContextModel

TOKENIZER = dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, z_channels=8, using_sa=False, using_mid_sa=True,
                 norm_groups=8, vocab_size=32, tile=4)


def _grads_and_primitives(module, loss):
  """The gradients of loss(module) by its parameters, and whether their program rematerialises."""
  graphdef, params = nnx.split(module, nnx.Param)
  fn = jax.grad(lambda p: loss(nnx.merge(graphdef, p)))
  names = set()

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      names.add(eqn.primitive.name)
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        walk(sub)

  walk(jax.make_jaxpr(fn)(params).jaxpr)
  return jax.tree.leaves(jax.jit(fn)(params)), bool(names & {"checkpoint", "remat", "remat2"})


@pytest.mark.parametrize("policy", ["block", "dots_with_no_batch_dims_saveable"])
def test_context_model_gradients_do_not_change(policy):
  x = jax.random.normal(jax.random.key(1), (4, 4, 8))
  kind = jnp.array([0, 1, 0, 1])
  prev = dict(fhat=jax.random.normal(jax.random.key(2), (4, 5, 8)), tokens=jnp.zeros((4, 5), jnp.int32))
  out = {}
  for remat in ("none", policy):
    model = ContextModel(vocab_size=16, latent_dim=8, schedule=(1, 2), width=16, depth=2, heads=2, remat=remat,
                         rngs=nnx.Rngs(0))
    out[remat] = _grads_and_primitives(model, lambda m: jnp.mean(m(x, kind, prev) ** 2))
  assert out[policy][1] and not out["none"][1]  # the program holds a rematerialised part only when asked
  for a, b in zip(out["none"][0], out[policy][0]):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_tokenizer_gradients_do_not_change():
  x = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3), minval=-1, maxval=1)
  out = {}
  for remat in ("none", "block"):
    tok = Tokenizer(**TOKENIZER, remat=remat, rngs=nnx.Rngs(0))
    out[remat] = _grads_and_primitives(tok, lambda t: jnp.mean(t.pixels(t.latent(x)) ** 2))
  assert out["block"][1] and not out["none"][1]
  for a, b in zip(out["none"][0], out["block"][0]):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_unknown_policies_are_named():
  with pytest.raises(ValueError, match="remat must be one of"):
    ContextModel(vocab_size=16, latent_dim=8, schedule=(1, 2), width=16, depth=1, heads=2, remat="everything",
                 rngs=nnx.Rngs(0))
