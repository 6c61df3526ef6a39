"""Layers shared by the progvc models, with logical axis names on every parameter.

Parameters are created with `out_sharding` metadata holding *logical* axis
names (conv_in, conv_out, norm, embed, mlp, heads, vocab, ...). They are never
sharded eagerly: the training framework maps logical names to mesh axes with
the rules of its config and compiles with explicit shardings.

Tensors are NHWC; conv kernels are HWIO.
"""

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

Axes = tuple[str | None, ...]


def param(rngs: nnx.Rngs, init, shape: Sequence[int], axes: Axes) -> nnx.Param:
  """A float32 parameter annotated with logical axis names."""
  if len(axes) != len(shape):
    raise ValueError(f"axes {axes} do not match shape {tuple(shape)}")
  return nnx.Param(
      init(rngs.params(), tuple(shape), jnp.float32),
      out_sharding=tuple(axes),
      eager_sharding=False,
  )


# config.remat: which activations a block keeps for the backward pass. "none" keeps all
# (no rematerialisation); "block" keeps only each block's input and recomputes the rest;
# any other name is a jax.checkpoint_policies policy, such as "dots_with_no_batch_dims_saveable"
# (keep the matmul outputs, recompute the elementwise work).
REMAT_POLICIES = ("none", "block", "dots_saveable", "dots_with_no_batch_dims_saveable", "nothing_saveable",
                  "everything_saveable")


def check_remat(policy: str) -> str:
  if policy not in REMAT_POLICIES:
    raise ValueError(f"remat must be one of {REMAT_POLICIES}, got {policy!r}")
  return policy


def remat(fn, policy: str, *, modules: bool = True):
  """fn under jax.checkpoint with the named policy (see REMAT_POLICIES); "none": fn itself.

  modules=False for a function of arrays only (jax.checkpoint instead of nnx.remat).
  """
  if check_remat(policy) == "none":
    return fn
  name = "nothing_saveable" if policy == "block" else policy
  return (nnx.remat if modules else jax.checkpoint)(fn, policy=getattr(jax.checkpoint_policies, name))


def swish(x: jax.Array) -> jax.Array:
  return x * jax.nn.sigmoid(x)


class Conv(nnx.Module):
  """2-D convolution with explicit padding (PyTorch-style symmetric by default).

  `padding` is either an int p (p on every side) or ((top, bottom), (left, right)).
  Computation runs in `dtype` (bfloat16 for mixed-precision training); the
  parameters stay float32.
  """

  def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, *, stride: int = 1,
               padding=None, dtype=jnp.float32, rngs: nnx.Rngs):
    if padding is None:
      padding = kernel // 2
    if isinstance(padding, int):
      padding = ((padding, padding), (padding, padding))
    self.stride = stride
    self.padding = tuple(tuple(p) for p in padding)
    self.dtype = dtype
    fan_in = in_ch * kernel * kernel
    self.kernel = param(rngs, jax.nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal"),
                        (kernel, kernel, in_ch, out_ch), (None, None, "conv_in", "conv_out"))
    bound = fan_in ** -0.5
    self.bias = param(rngs, lambda k, s, d: jax.random.uniform(k, s, d, -bound, bound),
                      (out_ch,), ("conv_out",))

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.apply(x, self.kernel[...], self.bias[...])

  def apply(self, x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """This conv with the given weights (the GAN's adaptive weight differentiates them)."""
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), kernel.astype(self.dtype),
        window_strides=(self.stride, self.stride), padding=self.padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + bias.astype(self.dtype)


class GroupNorm(nnx.Module):
  """GroupNorm over NHWC, statistics in float32 (two-pass variance)."""

  def __init__(self, channels: int, groups: int = 32, eps: float = 1e-6, *, rngs: nnx.Rngs):
    if channels % groups:
      raise ValueError(f"GroupNorm: {channels} channels are not divisible into {groups} groups")
    self.groups = groups
    self.eps = eps
    self.scale = param(rngs, jax.nn.initializers.ones, (channels,), ("norm",))
    self.bias = param(rngs, jax.nn.initializers.zeros, (channels,), ("norm",))

  def __call__(self, x: jax.Array) -> jax.Array:
    dtype = x.dtype
    b, h, w, c = x.shape
    g = x.astype(jnp.float32).reshape(b, h, w, self.groups, c // self.groups)
    mean = g.mean(axis=(1, 2, 4), keepdims=True)
    var = jnp.square(g - mean).mean(axis=(1, 2, 4), keepdims=True)
    g = (g - mean) * jax.lax.rsqrt(var + self.eps)
    y = g.reshape(b, h, w, c) * self.scale[...] + self.bias[...]
    return y.astype(dtype)
