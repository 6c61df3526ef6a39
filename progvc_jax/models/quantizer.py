"""VAR's multi-scale residual quantizer over square latent tiles.

For scales k = 1..K the residual f - fhat_(k-1) is area-downsampled to the
scale-k grid, each vector takes its nearest code of one shared codebook, the
code embeddings are bicubic-upsampled back to the tile, refined by one of the
shared Phi convs (h * (1 - r) + r * conv(h)) and added to fhat. Any prefix of
scales decodes to fhat_k.

Resizing follows PyTorch's `F.interpolate` exactly (area = adaptive average
pooling; bicubic with a = -0.75, align_corners=False, border-clamped taps), so
VAR's released tokenizers give the same tokens here. Both resizes are linear
and separable: they are applied as small constant matrices, in float32 at
HIGHEST precision, because the codec needs the same tokens on every backend.
"""

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from progvc_jax.models import layers

VAR_SCHEDULE_16 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
HIGHEST = jax.lax.Precision.HIGHEST


def scale_schedule(tile: int) -> tuple[int, ...]:
  """The grid sizes of the K scales for a square latent tile of side `tile`.

  VAR's schedule for 16; for other sizes VAR's schedule scaled to the tile
  (rounded half up, deduplicated), always from 1 to `tile`.
  """
  if tile < 2:
    raise ValueError(f"latent tile must be at least 2, got {tile}")
  if tile == 16:
    return VAR_SCHEDULE_16
  sizes = {max(1, math.floor(p * tile / 16 + 0.5)) for p in VAR_SCHEDULE_16}
  return tuple(sorted(sizes | {1, tile}))


@functools.lru_cache(maxsize=None)
def area_matrix(out: int, inp: int) -> np.ndarray:
  """(out, inp) averaging weights of PyTorch's adaptive average pooling."""
  m = np.zeros((out, inp), np.float64)
  for i in range(out):
    lo, hi = (i * inp) // out, -((-(i + 1) * inp) // out)
    m[i, lo:hi] = 1.0 / (hi - lo)
  return m.astype(np.float32)


def _cubic_weights(t: float, a: float = -0.75) -> tuple[float, ...]:
  def near(x):  # |x| <= 1
    return ((a + 2) * x - (a + 3)) * x * x + 1

  def far(x):  # 1 < |x| < 2
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

  return far(t + 1), near(t), near(1 - t), far(2 - t)


@functools.lru_cache(maxsize=None)
def bicubic_matrix(out: int, inp: int) -> np.ndarray:
  """(out, inp) weights of PyTorch's bicubic resize (align_corners=False)."""
  m = np.zeros((out, inp), np.float64)
  scale = inp / out
  for i in range(out):
    src = (i + 0.5) * scale - 0.5  # not clamped at 0 for cubic, as in PyTorch
    base = math.floor(src)
    for tap, w in enumerate(_cubic_weights(src - base)):
      m[i, min(max(base - 1 + tap, 0), inp - 1)] += w
  return m.astype(np.float32)


def resize(x: jax.Array, size: int, kind: str) -> jax.Array:
  """Resizes square NHWC maps to size x size with PyTorch's area or bicubic."""
  n = x.shape[1]
  if n == size:
    return x
  m = jnp.asarray((area_matrix if kind == "area" else bicubic_matrix)(size, n))
  x = jnp.einsum("oh,bhwc->bowc", m, x, precision=HIGHEST)
  return jnp.einsum("ow,bhwc->bhoc", m, x, precision=HIGHEST)


def phi_index(scale: int, num_scales: int, num_phi: int) -> int:
  """Which shared Phi refines scale `scale` (0-based), as VAR assigns them."""
  k = num_phi
  lo = 1 / 3 / k if k == 4 else 1 / 2 / k
  ticks = np.linspace(lo, 1 - lo, k)
  return int(np.argmin(np.abs(ticks - scale / (num_scales - 1))))


def codebook_usage(hits: jax.Array) -> dict[str, jax.Array]:
  """Per-scale usage figures from hit counts of shape (K, V).

  perplexity: exp of the entropy of the code distribution (V when uniform,
  1 when collapsed); unused: share of codes never hit.
  """
  hits = hits.astype(jnp.float32)
  p = hits / jnp.maximum(hits.sum(-1, keepdims=True), 1.0)
  entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), -1)
  return {"perplexity": jnp.exp(entropy), "unused": jnp.mean(hits == 0, -1)}


def revive_dead_codes(codebook: jax.Array, usage: jax.Array, candidates: jax.Array,
                      rng: jax.Array, threshold: float) -> tuple[jax.Array, jax.Array]:
  """Replaces codes used less than `threshold` with random candidate vectors.

  usage: (V,) hit counts (typically an EMA over steps, summed over scales);
  candidates: (M, C) latent residual vectors seen by the quantizer. Returns the
  new codebook and the number of revived codes.
  """
  dead = usage < threshold
  picks = jax.random.randint(rng, (codebook.shape[0],), 0, candidates.shape[0])
  new = jnp.where(dead[:, None], candidates[picks].astype(codebook.dtype), codebook)
  return new, dead.sum()


class MultiScaleQuantizer(nnx.Module):
  """VAR's multi-scale residual quantizer; inputs are tiles (N, n, n, C)."""

  def __init__(self, *, vocab_size: int = 4096, dim: int = 32, tile: int = 16,
               schedule: Sequence[int] | None = None, num_phi: int = 4,
               phi_ratio: float = 0.5, beta: float = 0.25, rngs: nnx.Rngs):
    self.schedule = tuple(schedule or scale_schedule(tile))
    if self.schedule[-1] != tile or list(self.schedule) != sorted(set(self.schedule)):
      raise ValueError(f"scale schedule {self.schedule} must rise strictly and end at the tile size {tile}")
    self.tile = tile
    self.vocab_size = vocab_size
    self.phi_ratio = phi_ratio
    self.beta = beta
    self.codebook = layers.param(rngs, jax.nn.initializers.truncated_normal(1.0),
                                 (vocab_size, dim), ("vocab", "embed"))
    self.phi = nnx.List([layers.Conv(dim, dim, 3, rngs=rngs) for _ in range(num_phi)])

  @property
  def num_scales(self) -> int:
    return len(self.schedule)

  def distances(self, z: jax.Array) -> jax.Array:
    """Squared L2 distances (M, V) of vectors z (..., C), flattened to M rows, to every code."""
    e = self.codebook[...]
    flat = z.reshape(-1, z.shape[-1])
    return (jnp.sum(flat * flat, 1, keepdims=True) + jnp.sum(e * e, 1)
            - 2.0 * jnp.matmul(flat, e.T, precision=HIGHEST))

  def nearest(self, z: jax.Array) -> jax.Array:
    """Index of the nearest code (squared L2) for vectors z (..., C)."""
    return jnp.argmin(self.distances(z), axis=1).astype(jnp.int32).reshape(z.shape[:-1])

  def scale_residual(self, k: int, idx: jax.Array) -> jax.Array:
    """The contribution of scale k (0-based) to fhat, from its tokens (N, p, p)."""
    return self.residual_of_codes(k, self.codebook[...][idx])

  def residual_of_codes(self, k: int, codes: jax.Array) -> jax.Array:
    """The contribution to fhat of scale k's code vectors (N, p, p, C); an affine map, so the
    expected residual under a distribution of tokens is that of the expected code vector."""
    h = resize(codes, self.tile, "bicubic")
    conv = self.phi[phi_index(k, self.num_scales, len(self.phi))]
    return h * (1.0 - self.phi_ratio) + conv(h) * self.phi_ratio

  def encode(self, f: jax.Array, num_scales: int | None = None) -> list[jax.Array]:
    """Token maps of the first `num_scales` scales (all by default): [(N, p_k, p_k)]."""
    f = jax.lax.stop_gradient(f.astype(jnp.float32))
    fhat = jnp.zeros_like(f)
    tokens = []
    for k, p in enumerate(self.schedule[:num_scales]):
      idx = self.nearest(resize(f - fhat, p, "area"))
      fhat = fhat + self.scale_residual(k, idx)
      tokens.append(idx)
    return tokens

  def decode(self, tokens: Sequence[jax.Array]) -> jax.Array:
    """fhat_k from the token maps of the first k = len(tokens) scales."""
    return self.fhat_prefixes(tokens)[-1]

  def fhat_prefixes(self, tokens: Sequence[jax.Array]) -> list[jax.Array]:
    """[fhat_1, ..., fhat_k] for the given prefix of token maps."""
    if not tokens:
      raise ValueError("at least one scale is needed to decode")
    out, fhat = [], 0.0
    for k, idx in enumerate(tokens):
      fhat = fhat + self.scale_residual(k, idx)
      out.append(fhat)
    return out

  def next_scale_inputs(self, tokens: Sequence[jax.Array]) -> jax.Array:
    """The context model's teacher-forcing input (VAR's): fhat_k area-downsampled
    to the grid of scale k+1, flattened row-major, for k = 1..K-1: (N, L - 1, C)."""
    fhats = self.fhat_prefixes(tokens[:-1])
    parts = [resize(fh, self.schedule[k + 1], "area") for k, fh in enumerate(fhats)]
    return jnp.concatenate([p.reshape(p.shape[0], -1, p.shape[-1]) for p in parts], axis=1)

  def __call__(self, f: jax.Array, keep: jax.Array | None = None):
    """Training forward pass.

    keep: optional (N,) number of scales to keep per tile (random-prefix
    training, so that every prefix decodes to a usable image). Returns the
    straight-through fhat (values of the kept prefix, gradients to f) and aux:
    `vq_loss` (VAR's commitment + codebook loss averaged over scales), `hits`
    (K, V) code counts, and `tokens`.
    """
    f = f.astype(jnp.float32)
    f_ng = jax.lax.stop_gradient(f)
    fhat = jnp.zeros_like(f)
    kept = jnp.zeros_like(f)
    vq_loss = 0.0
    hits, tokens = [], []
    for k, p in enumerate(self.schedule):
      idx = self.nearest(resize(jax.lax.stop_gradient(f_ng - fhat), p, "area"))
      h = self.scale_residual(k, idx)
      fhat = fhat + h
      if keep is not None:
        kept = kept + jnp.where((keep > k)[:, None, None, None], h, 0.0)
      vq_loss = vq_loss + self.beta * jnp.mean(jnp.square(jax.lax.stop_gradient(fhat) - f))
      vq_loss = vq_loss + jnp.mean(jnp.square(fhat - f_ng))
      hits.append(jnp.bincount(idx.reshape(-1), length=self.vocab_size))
      tokens.append(idx)
    out = fhat if keep is None else kept
    f_st = f + jax.lax.stop_gradient(out - f)
    aux = {"vq_loss": vq_loss / self.num_scales, "hits": jnp.stack(hits), "tokens": tokens}
    return f_st, aux
