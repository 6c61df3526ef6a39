"""PatchGAN discriminator for the tokenizer's adversarial loss.

The pix2pix / VQGAN NLayerDiscriminator: 4x4 convolutions, `n_layers`
stride-2 stages (the first without normalisation), a stride-1 stage and a
1-channel output conv, so each logit judges one overlapping patch (70x70
pixels for n_layers=3). GroupNorm replaces BatchNorm so that the model is a
pure function of its parameters, with no batch statistics to carry.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from progvc_jax.models import layers


class PatchDiscriminator(nnx.Module):
  """NHWC images in [-1, 1] -> float32 patch logits (B, h, w, 1).

  For H divisible by 2**n_layers, h = H / 2**n_layers - 2 (30 for 256x256, n_layers=3).
  """

  def __init__(self, *, in_ch: int = 3, ch: int = 64, n_layers: int = 3, norm_groups: int = 32,
               dtype=jnp.float32, rngs: nnx.Rngs):
    conv = lambda i, o, stride: layers.Conv(i, o, 4, stride=stride, padding=1, dtype=dtype, rngs=rngs)
    self.conv_in = conv(in_ch, ch, 2)
    widths = [ch * min(2 ** n, 8) for n in range(n_layers + 1)]
    strides = [2] * (n_layers - 1) + [1]
    self.convs = nnx.List([conv(i, o, s) for i, o, s in zip(widths[:-1], widths[1:], strides)])
    self.norms = nnx.List([layers.GroupNorm(o, norm_groups, rngs=rngs) for o in widths[1:]])
    self.conv_out = conv(widths[-1], 1, 1)

  def __call__(self, x: jax.Array) -> jax.Array:
    h = jax.nn.leaky_relu(self.conv_in(x), 0.2)
    for conv, norm in zip(self.convs, self.norms):
      h = jax.nn.leaky_relu(norm(conv(h)), 0.2)
    return self.conv_out(h).astype(jnp.float32)
