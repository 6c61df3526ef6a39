"""Tests of the PatchGAN discriminator: shapes, logical axes, gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from progvc_jax import losses
from progvc_jax.models.discriminator import PatchDiscriminator


def _tiny(**kw):
  return PatchDiscriminator(ch=8, norm_groups=4, rngs=nnx.Rngs(0), **kw)


@nnx.jit
def _apply(model, x):
  return model(x)


@pytest.mark.parametrize("size, n_layers, out", [(64, 3, 6), (256, 3, 30), (64, 2, 14)])
def test_output_shape(size, n_layers, out):
  model = _tiny(n_layers=n_layers)
  x = jax.random.uniform(jax.random.key(1), (2, size, size, 3), minval=-1, maxval=1)
  y = _apply(model, x)
  assert y.shape == (2, out, out, 1)
  assert y.dtype == jnp.float32 and bool(jnp.isfinite(y).all())


def test_bfloat16_compute_gives_float32_logits():
  model = _tiny(dtype=jnp.bfloat16)
  y = _apply(model, jnp.zeros((1, 64, 64, 3)))
  assert y.dtype == jnp.float32
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_default_size_matches_nlayer_discriminator():
  model = nnx.eval_shape(lambda: PatchDiscriminator(rngs=nnx.Rngs(0)))
  n = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
  # pix2pix's NLayerDiscriminator(3, 64, 3) with BatchNorm has 2,765,633
  # parameters; the convs before GroupNorm here also carry biases (128+256+512).
  assert n == 2_765_633 + 896


def test_every_parameter_has_logical_axes():
  _, state = nnx.split(_tiny())
  specs = nnx.get_partition_spec(state)
  params = dict(nnx.to_flat_state(state))
  assert len(params) == 2 * 5 + 2 * 3  # 5 convs, 3 GroupNorms
  for path, spec in nnx.to_flat_state(specs):
    axes = tuple(spec.get_value())
    assert len(axes) == params[path].get_value().ndim, path
    assert any(a is not None for a in axes), path
  assert tuple(params[("convs", 0, "kernel")].get_metadata()["out_sharding"]) == (
      None, None, "conv_in", "conv_out")
  assert tuple(params[("norms", 2, "scale")].get_metadata()["out_sharding"]) == ("norm",)


def test_gradients_reach_every_parameter():
  model = _tiny()
  real = jax.random.uniform(jax.random.key(1), (2, 64, 64, 3), minval=-1, maxval=1)
  fake = jax.random.uniform(jax.random.key(2), (2, 64, 64, 3), minval=-1, maxval=1)
  loss = lambda m, real, fake: losses.hinge_d_loss(m(real), m(fake))
  grads = nnx.jit(nnx.grad(loss))(model, real, fake)
  flat = nnx.to_flat_state(grads)
  assert len(flat) == 16
  for path, g in flat:
    g = g.get_value()
    assert bool(jnp.isfinite(g).all()) and float(jnp.abs(g).max()) > 0, path
