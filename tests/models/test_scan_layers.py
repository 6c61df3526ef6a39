"""config.scan_layers: the Transformer's blocks as one lax.scan, with the same outputs and gradients."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from progvc_jax.models.transformer import ContextModel

X = jax.random.normal(jax.random.key(1), (4, 4, 8))
KIND = jnp.array([0, 1, 0, 1])
PREV = dict(fhat=jax.random.normal(jax.random.key(2), (4, 5, 8)), tokens=jnp.arange(20).reshape(4, 5) % 16)


def _model(depth, context="additive", **kw):
  return ContextModel(vocab_size=16, latent_dim=8, schedule=(1, 2), width=16, depth=depth, heads=2,
                      context=context, rngs=nnx.Rngs(0), **kw)


def _loss_and_grads(model):
  graphdef, params = nnx.split(model, nnx.Param)
  fn = jax.value_and_grad(lambda p: jnp.mean(nnx.merge(graphdef, p)(X, KIND, PREV) ** 2))
  return fn, params


def _primitives(model) -> collections.Counter:
  fn, params = _loss_and_grads(model)
  count = collections.Counter()

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      count[eqn.primitive.name] += 1
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        walk(sub)

  walk(jax.make_jaxpr(fn)(params).jaxpr)
  return count


@pytest.mark.parametrize("context,remat", [("additive", "none"), ("cross", "none"), ("additive", "block")])
def test_scanned_blocks_give_the_same_loss_and_gradients(context, remat):
  out = {}
  for scan in (False, True):
    fn, params = _loss_and_grads(_model(3, context, remat=remat, scan_layers=scan))
    loss, grads = jax.jit(fn)(params)
    out[scan] = loss, grads
  np.testing.assert_allclose(out[True][0], out[False][0], rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), out[False][1], out[True][1])


def test_scanned_program_does_not_grow_with_depth():
  plain = {d: _primitives(_model(d)) for d in (2, 6)}
  scanned = {d: _primitives(_model(d, scan_layers=True)) for d in (2, 6)}
  assert plain[6]["dot_general"] > plain[2]["dot_general"]  # unrolled: one copy of a block per layer
  assert scanned[6]["dot_general"] == scanned[2]["dot_general"]  # scanned: one block body whatever the depth
  assert scanned[2]["scan"] >= 1


def test_parameters_do_not_depend_on_scan_layers():
  a, b = (nnx.state(_model(3, scan_layers=s), nnx.Param) for s in (False, True))
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(np.testing.assert_array_equal, a, b)
