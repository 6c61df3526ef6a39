"""A bundle's models as the codec runs them: frames <-> tile tokens, probabilities, pixels.

The tokenizer (frames <-> tokens, pixels) runs in float32. The probabilities
that drive the range coder come only from `steps`
(progressive.IntegerFrameSteps: the integer probability path, jitted once per
scale for the frame's tile count), whose integer frequencies are the same on
every machine (docs/design.md section 4).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from progvc_jax.codec.bundle import Bundle, load_bundle
from progvc_jax.models.progressive import IntegerFrameSteps
from progvc_jax.models.quantizer import resize

COUNT_BITS = 24  # the range coder's frequencies are out of 2^24 (models/integer.py)


def _unit(frame: jax.Array) -> jax.Array:
  """One uint8 frame (H, W, 3) as a batch of one in [-1, 1]."""
  return frame[None].astype(jnp.float32) / 127.5 - 1.0


class CodecModel:
  """The tokenizer and context model of one bundle."""

  def __init__(self, bundle: Bundle):
    self.fingerprint = bundle.fingerprint
    self.path = bundle.path
    tok = bundle.tokenizer()
    self.tokenizer = tok
    self.bundle = bundle
    self.steps = IntegerFrameSteps(tok.quantizer, bundle.integer_tables, bundle.integer_formats)
    self.schedule = tuple(tok.schedule)
    self.tile, self.downsample = tok.tile, tok.downsample
    self.vocab_size = tok.quantizer.vocab_size
    self._tok_def, self._tok_params = nnx.split(tok)

  @classmethod
  def load(cls, path: str) -> "CodecModel":
    return cls(load_bundle(path))

  @property
  def num_scales(self) -> int:
    return len(self.schedule)

  @property
  def pixel_tile(self) -> int:
    return self.tile * self.downsample

  def tile_grid(self, height: int, width: int) -> tuple[int, int]:
    return self.tokenizer.tile_grid(height, width)

  @functools.partial(jax.jit, static_argnums=(0, 3))
  def _tokens(self, params, frame, num_scales):
    tok = nnx.merge(self._tok_def, params)
    return [t[0].reshape(t.shape[1], -1) for t in tok.encode(_unit(frame), num_scales)]

  @functools.partial(jax.jit, static_argnums=0)
  def _latent_tiles(self, params, frame):
    return nnx.merge(self._tok_def, params).latent_tiles(_unit(frame))

  @functools.partial(jax.jit, static_argnums=(0, 1))
  def _rd_choice(self, k, params, f, fhat, weights, rd_lambda):
    quantizer = nnx.merge(self._tok_def, params).quantizer
    p = self.schedule[k]
    d = quantizer.distances(resize(f - fhat, p, "area"))
    bits = COUNT_BITS - jnp.log2(weights.reshape(-1, weights.shape[-1]) + 1.0)
    cost = d + rd_lambda * bits
    idx = jnp.argmin(cost, axis=1).astype(jnp.int32).reshape(-1, p * p)
    return idx, fhat + quantizer.scale_residual(k, idx.reshape(-1, p, p))

  @functools.partial(jax.jit, static_argnums=(0, 3, 4))
  def _pixels(self, params, fhat, height, width):
    tok = nnx.merge(self._tok_def, params)
    rows, cols = tok.tile_grid(height, width)
    rgb = tok.pixels(tok.from_tiles(fhat, rows, cols))[0, :height, :width]
    return jnp.clip(jnp.round((rgb + 1.0) * 127.5), 0, 255).astype(jnp.uint8)

  def tokens(self, frame: np.ndarray, num_scales: int | None = None) -> list[np.ndarray]:
    """Token maps of one uint8 frame (H, W, 3): [(tiles, p_k^2)] for the first num_scales scales."""
    return [np.asarray(t) for t in self._tokens(self._tok_params, jnp.asarray(frame), num_scales)]

  def latent_tiles(self, frame: np.ndarray) -> jax.Array:
    """The tokenizer's latent tiles (tiles, n, n, C) of one uint8 frame (H, W, 3), before quantization."""
    return self._latent_tiles(self._tok_params, jnp.asarray(frame))

  def rd_choice(self, k: int, f: jax.Array, fhat: jax.Array, weights: jax.Array,
                rd_lambda: float) -> tuple[np.ndarray, jax.Array]:
    """Scale k's tokens (tiles, p_k^2) chosen for distortion + rd_lambda * bits, and fhat with them added.

    f: latent tiles (`latent_tiles`); fhat: the sum of the chosen scales < k
    (zeros for k = 0); weights: the decoder's integer frequencies of scale k.
    Each position takes the code that minimises its squared error against the
    residual f - fhat on scale k's grid plus rd_lambda times its cost in bits
    under those frequencies. At rd_lambda = 0 that is the nearest code, as the
    tokenizer chooses. The error is not weighted by the latent positions a
    coarse token covers: the finer scales correct it, and on carphone and
    bikes that weighting (or its square root) gave a worse BD-rate at its best
    rd_lambda (README, "The default model").
    """
    idx, fhat = self._rd_choice(k, self._tok_params, f, fhat, jnp.asarray(weights), jnp.float32(rd_lambda))
    return np.asarray(idx), fhat

  def fhat(self, tokens: list[np.ndarray]) -> jax.Array:
    """The pixels' fhat tiles (tiles, n, n, C) of the first len(tokens) scales' tokens [(tiles, p_k^2)],
    summed by the decoder's own steps: the floats a decode that completes nothing (`none`) renders."""
    state = self.steps.init(tokens[0].shape[0])
    for k, t in enumerate(tokens):
      state, _ = self.steps.absorb(k, state, t)
    return state["fhat"]

  def pixels(self, fhat: jax.Array, height: int, width: int) -> np.ndarray:
    """uint8 frame (H, W, 3) from the tiles' fhat (tiles, n, n, C)."""
    return np.asarray(self._pixels(self._tok_params, fhat, height, width))
