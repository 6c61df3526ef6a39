"""The progvc tokenizer: conv encoder, multi-scale residual quantizer, conv decoder.

The encoder and decoder follow VAR's VQ-VAE (the latent-diffusion vq-f16
design): ResNet blocks with GroupNorm and swish, self-attention at the lowest
resolution and in the middle, stride-2 convs with VAR's asymmetric (0, 1)
padding to downsample, nearest upsampling followed by a conv. Submodules carry
VAR's names (encoder.down[i].block[j].norm1, ...), so VAR's released weights
load by renaming alone (see progvc_jax/convert_var.py) and the VAR-exact
variant is simply a config (`configs/tokenizer.py:var_f16`).

A `patch` factor above 1 makes a cheaper network for CPU codecs: the
encoder starts by folding each patch x patch block of pixels into channels
(space-to-depth) and the decoder ends by unfolding its last conv's channels
back into pixels (depth-to-space), so no conv runs at full resolution. The
downsample factor is then patch x 2^(levels - 1). patch=1 is VAR's network.

Frames of any size are edge-padded to a multiple of the pixel tile
(latent tile x downsample factor). The encoder and decoder run on the whole
padded frame, so there are no pixel seams; the quantizer works on fixed
latent tiles, batched, so one compiled program serves every resolution.
"""

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from progvc_jax import sharding
from progvc_jax.models import layers
from progvc_jax.models.quantizer import MultiScaleQuantizer


class ResnetBlock(nnx.Module):

  def __init__(self, cin: int, cout: int, groups: int, dtype, rngs: nnx.Rngs):
    self.norm1 = layers.GroupNorm(cin, groups, rngs=rngs)
    self.conv1 = layers.Conv(cin, cout, 3, dtype=dtype, rngs=rngs)
    self.norm2 = layers.GroupNorm(cout, groups, rngs=rngs)
    self.conv2 = layers.Conv(cout, cout, 3, dtype=dtype, rngs=rngs)
    self.nin_shortcut = layers.Conv(cin, cout, 1, dtype=dtype, rngs=rngs) if cin != cout else None

  def __call__(self, x):
    h = self.conv1(layers.swish(self.norm1(x)))
    h = self.conv2(layers.swish(self.norm2(h)))
    return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nnx.Module):
  """Single-head self-attention over all positions of a feature map."""

  def __init__(self, ch: int, groups: int, dtype, rngs: nnx.Rngs):
    self.norm = layers.GroupNorm(ch, groups, rngs=rngs)
    self.qkv = layers.Conv(ch, 3 * ch, 1, dtype=dtype, rngs=rngs)
    self.proj_out = layers.Conv(ch, ch, 1, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    b, h, w, c = x.shape
    q, k, v = jnp.split(self.qkv(self.norm(x)).reshape(b, h * w, 3 * c), 3, axis=-1)
    att = jax.nn.softmax(jnp.einsum("bic,bjc->bij", q, k).astype(jnp.float32) * c ** -0.5, axis=-1)
    out = jnp.einsum("bij,bjc->bic", att.astype(v.dtype), v).reshape(b, h, w, c)
    return x + self.proj_out(out)


class Resample(nnx.Module):
  """Downsampling (stride-2 conv, pad right/bottom) or upsampling (nearest x2, conv)."""

  def __init__(self, ch: int, down: bool, dtype, rngs: nnx.Rngs):
    self.down = down
    pad = ((0, 1), (0, 1)) if down else 1
    self.conv = layers.Conv(ch, ch, 3, stride=2 if down else 1, padding=pad, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    if not self.down:
      x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return self.conv(x)


class Level(nnx.Module):
  """One resolution of the encoder or decoder: ResNet blocks, optional attention, resampling."""

  def __init__(self, cin, cout, n_blocks, attn, resample, groups, dtype, rngs):
    chans = [cin] + [cout] * n_blocks
    self.block = nnx.List([ResnetBlock(a, b, groups, dtype, rngs) for a, b in zip(chans[:-1], chans[1:])])
    self.attn = nnx.List([AttnBlock(cout, groups, dtype, rngs) for _ in range(n_blocks)] if attn else [])
    self.resample = Resample(cout, resample == "down", dtype, rngs) if resample else None

  def __call__(self, x):
    for i, block in enumerate(self.block):
      x = block(x)
      if self.attn:
        x = self.attn[i](x)
    x = x if self.resample is None else self.resample(x)
    return sharding.constrain(x, "batch", "spatial", "spatial", "channels")


class Mid(nnx.Module):

  def __init__(self, ch, attn, groups, dtype, rngs):
    self.block_1 = ResnetBlock(ch, ch, groups, dtype, rngs)
    self.attn_1 = AttnBlock(ch, groups, dtype, rngs) if attn else None
    self.block_2 = ResnetBlock(ch, ch, groups, dtype, rngs)

  def __call__(self, x):
    x = self.block_1(x)
    if self.attn_1 is not None:
      x = self.attn_1(x)
    return sharding.constrain(self.block_2(x), "batch", "spatial", "spatial", "channels")


def space_to_depth(x: jax.Array, p: int) -> jax.Array:
  """(B, H, W, C) -> (B, H/p, W/p, p*p*C), each p x p block's pixels in row-major order."""
  if p == 1:
    return x
  b, h, w, c = x.shape
  x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h // p, w // p, p * p * c)


def depth_to_space(x: jax.Array, p: int) -> jax.Array:
  """The inverse of space_to_depth."""
  if p == 1:
    return x
  b, h, w, c = x.shape
  x = x.reshape(b, h, w, p, p, c // (p * p)).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h * p, w * p, c // (p * p))


def _apply(module, x):
  return module(x)


class Encoder(nnx.Module):

  def __init__(self, *, ch, ch_mult, num_res_blocks, z_channels, using_sa, using_mid_sa,
               groups, patch, dtype, remat="none", rngs):
    n = len(ch_mult)
    self.patch, self.remat = patch, remat
    self.conv_in = layers.Conv(3 * patch * patch, ch, 3, dtype=dtype, rngs=rngs)
    mults = (1,) + tuple(ch_mult)
    self.down = nnx.List([
        Level(ch * mults[i], ch * mults[i + 1], num_res_blocks, using_sa and i == n - 1,
              "down" if i != n - 1 else None, groups, dtype, rngs) for i in range(n)])
    top = ch * ch_mult[-1]
    self.mid = Mid(top, using_mid_sa, groups, dtype, rngs)
    self.norm_out = layers.GroupNorm(top, groups, rngs=rngs)
    self.conv_out = layers.Conv(top, z_channels, 3, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    h = sharding.constrain(self.conv_in(space_to_depth(x, self.patch)), "batch", "spatial", "spatial", "channels")
    run = layers.remat(_apply, self.remat)
    for level in self.down:
      h = run(level, h)
    return self.conv_out(layers.swish(self.norm_out(self.mid(h))))


class Decoder(nnx.Module):
  """Mirror of the encoder; `up[i]` is the level at the resolution of `down[i]`."""

  def __init__(self, *, ch, ch_mult, num_res_blocks, z_channels, using_sa, using_mid_sa,
               groups, patch, dtype, remat="none", rngs):
    n = len(ch_mult)
    self.patch, self.remat = patch, remat
    top = ch * ch_mult[-1]
    self.conv_in = layers.Conv(z_channels, top, 3, dtype=dtype, rngs=rngs)
    self.mid = Mid(top, using_mid_sa, groups, dtype, rngs)
    cin = {n - 1: top}
    for i in reversed(range(1, n)):
      cin[i - 1] = ch * ch_mult[i]
    self.up = nnx.List([
        Level(cin[i], ch * ch_mult[i], num_res_blocks + 1, using_sa and i == n - 1,
              "up" if i != 0 else None, groups, dtype, rngs) for i in range(n)])
    self.norm_out = layers.GroupNorm(ch * ch_mult[0], groups, rngs=rngs)
    self.conv_out = layers.Conv(ch * ch_mult[0], 3 * patch * patch, 3, dtype=dtype, rngs=rngs)

  def features(self, z):
    """The input of the last conv (`conv_out`)."""
    run = layers.remat(_apply, self.remat)
    h = run(self.mid, self.conv_in(z))
    for level in reversed(self.up):
      h = run(level, h)
    return layers.swish(self.norm_out(h))

  def __call__(self, z):
    return self.output(self.features(z))

  def output(self, features):
    """Pixels from the features: conv_out, then depth-to-space when patch > 1."""
    return depth_to_space(self.conv_out(features), self.patch)


def pad_to_multiple(x: jax.Array, multiple: int) -> jax.Array:
  """Edge-replicates NHWC frames on the bottom and right to a multiple of `multiple`."""
  h, w = x.shape[1:3]
  ph, pw = -h % multiple, -w % multiple
  if ph == 0 and pw == 0:
    return x
  return jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")


class Tokenizer(nnx.Module):
  """Frames in [-1, 1] (B, H, W, 3) <-> multi-scale token maps per latent tile."""

  def __init__(self, *, ch: int = 128, ch_mult: Sequence[int] = (1, 1, 2, 2, 4),
               num_res_blocks: int = 2, z_channels: int = 32, using_sa: bool = True,
               using_mid_sa: bool = True, norm_groups: int = 32, vocab_size: int = 4096,
               tile: int = 16, schedule: Sequence[int] | None = None, num_phi: int = 4,
               phi_ratio: float = 0.5, beta: float = 0.25, patch: int = 1, dtype=jnp.float32,
               remat: str = "none", rngs: nnx.Rngs):
    if patch < 1:
      raise ValueError(f"tokenizer patch must be at least 1, got {patch}")
    layers.check_remat(remat)
    net = dict(ch=ch, ch_mult=tuple(ch_mult), num_res_blocks=num_res_blocks, z_channels=z_channels,
               using_sa=using_sa, using_mid_sa=using_mid_sa, groups=norm_groups, patch=patch,
               dtype=dtype, remat=remat, rngs=rngs)
    self.downsample = patch * 2 ** (len(ch_mult) - 1)
    self.tile = tile
    self.encoder = Encoder(**net)
    self.quant_conv = layers.Conv(z_channels, z_channels, 3, rngs=rngs)
    self.quantizer = MultiScaleQuantizer(vocab_size=vocab_size, dim=z_channels, tile=tile,
                                         schedule=schedule, num_phi=num_phi, phi_ratio=phi_ratio,
                                         beta=beta, rngs=rngs)
    self.post_quant_conv = layers.Conv(z_channels, z_channels, 3, rngs=rngs)
    self.decoder = Decoder(**net)

  @property
  def schedule(self) -> tuple[int, ...]:
    return self.quantizer.schedule

  @property
  def pixel_tile(self) -> int:
    return self.tile * self.downsample

  def tile_grid(self, height: int, width: int) -> tuple[int, int]:
    """Latent tiles (rows, cols) of an H x W frame after padding."""
    return -(-height // self.pixel_tile), -(-width // self.pixel_tile)

  # Latents and tiles.
  def latent(self, x: jax.Array) -> jax.Array:
    """f = quant_conv(encoder(x)) for frames whose size is a multiple of the downsample factor."""
    return self.quant_conv(self.encoder(x)).astype(jnp.float32)

  def pixels(self, fhat: jax.Array) -> jax.Array:
    """Frames in [-1, 1] from a latent (B, h, w, C)."""
    return jnp.clip(self.decoder(self.post_quant_conv(fhat)).astype(jnp.float32), -1.0, 1.0)

  def to_tiles(self, f: jax.Array) -> jax.Array:
    """(B, h, w, C) -> (B * rows * cols, n, n, C), tiles in row-major order per frame."""
    b, h, w, c = f.shape
    n = self.tile
    t = f.reshape(b, h // n, n, w // n, n, c).transpose(0, 1, 3, 2, 4, 5)
    return t.reshape(-1, n, n, c)

  def from_tiles(self, t: jax.Array, rows: int, cols: int) -> jax.Array:
    n, c = self.tile, t.shape[-1]
    f = t.reshape(-1, rows, cols, n, n, c).transpose(0, 1, 3, 2, 4, 5)
    return f.reshape(-1, rows * n, cols * n, c)

  # Frames <-> tokens.
  def latent_tiles(self, x: jax.Array) -> jax.Array:
    """The latent tiles (B * T, n, n, C) of frames x (B, H, W, 3) of any size, before quantization."""
    return self.to_tiles(self.latent(pad_to_multiple(x, self.pixel_tile)))

  def encode(self, x: jax.Array, num_scales: int | None = None) -> list[jax.Array]:
    """Token maps [(B, T, p_k, p_k)] of frames x (B, H, W, 3) of any size; T tiles a frame."""
    b = x.shape[0]
    tokens = self.quantizer.encode(self.latent_tiles(x), num_scales)
    return [t.reshape(b, -1, *t.shape[1:]) for t in tokens]

  def decode(self, tokens: Sequence[jax.Array], height: int, width: int) -> jax.Array:
    """Frames (B, H, W, 3) from the token maps of any prefix of scales."""
    rows, cols = self.tile_grid(height, width)
    flat = [t.reshape(-1, *t.shape[2:]) for t in tokens]
    fhat = self.from_tiles(self.quantizer.decode(flat), rows, cols)
    return self.pixels(fhat)[:, :height, :width]

  def __call__(self, x: jax.Array, keep: jax.Array | None = None):
    """Training forward pass on frames x (B, H, W, 3).

    keep: optional (B,) number of scales kept per frame (random-prefix
    training). Returns the reconstruction (B, H, W, 3) and the quantizer's aux
    with two more entries: `latent`, the encoder's latent tiles, and
    `last_features`, the decoder's input to its last conv (for the GAN's
    adaptive weight).
    """
    b, height, width, _ = x.shape
    rows, cols = self.tile_grid(height, width)
    f = self.latent(pad_to_multiple(x, self.pixel_tile))
    tile_keep = None if keep is None else jnp.repeat(keep, rows * cols)
    tiles = self.to_tiles(f)
    fq, aux = self.quantizer(tiles, tile_keep)
    feats = self.decoder.features(self.post_quant_conv(self.from_tiles(fq, rows, cols)))
    rec = self.decoder.output(feats)
    aux.update(latent=jax.lax.stop_gradient(tiles), last_features=feats)
    return rec.astype(jnp.float32)[:, :height, :width], aux
