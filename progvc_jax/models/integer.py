"""The integer probability path: the context model as the codec runs it, in integer arithmetic only.

A range decoder needs the encoder's probabilities exactly, and float32 is
not exact across CPUs, ISA levels, thread counts, fast math, GPUs or TPUs.
Integers are: sums of integers are the same in any order. So everything that
decides a token's probability runs here on int8/int32 values, from the
tokens to integer frequencies that sum to 2^24 (docs/design.md
section 4). The format is defined by the NumPy reference
(integer_reference.py); this module is its jitted, KV-cached counterpart and
must agree with it bit for bit.

Representation: a real value v is held as the integer round(v * 2^f) for a
fraction-bit count f fixed per tensor at export (`formats`). Every rescale is
a rounding shift (`requant`), every nonlinearity a table or an integer
iteration:
  * matmuls: int8 x int8 with int32 accumulation (12-bit inputs where the
    inputs are the latent fhat, with int32 x int32);
  * LayerNorm and QK-norm: integer mean, a per-row shift that keeps squares
    in range, Newton's integer square root, a rounded integer division;
  * softmax (attention and the final distribution): scores in 1/256 bits,
    2^-x from a 256-entry table and a shift;
  * GELU: a 4096-entry table;
  * adaLN: its modulation depends only on the frame type, so export folds it
    into per-frame-type weights (`tables[...]["I"|"P"]`);
  * "same as before" (`copy_prev`): one more head output, clipped, added to
    the logit of the previous frame's token by comparison with the vocabulary.
The tokens' fhat as the context model sees it is integer too (`IntegerFhat`):
codebook, bicubic upsampling, the Phi conv and area downsampling on integers.
The pixels stay float (models/quantizer.py): they never touch a probability.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

FREQ_BITS = 24  # frequencies of a row sum to 2^24: the range coder's precision
Z_FRAC = 8  # logits and attention scores are in units of 1/256 bit
EXP_FRAC = 14  # 2^-x table: 2^-x in Q14
SCORE_FRAC = 14  # q . k of two Q7 unit vectors
UNIT_FRAC = 7  # QK-normalised vectors are int8 in Q7
PROB_FRAC = 14  # attention weights
GELU_BITS = 12  # the GELU table covers 2^12 inputs
FRAME_TYPES = ("I", "P")
COPY_LIMIT = 64 << Z_FRAC  # the "same as before" boost, in 1/256 bit (transformer.COPY_LIMIT_BITS)


def requant(x: jax.Array, shift) -> jax.Array:
  """x * 2^-shift rounded half up; a negative shift is an exact left shift."""
  shift = jnp.asarray(shift, jnp.int32)
  right = jnp.maximum(shift, 0)
  down = (x + (jnp.left_shift(1, right) >> 1)) >> right
  return jnp.where(shift >= 0, down, jnp.left_shift(x, jnp.maximum(-shift, 0)))


def clip8(x: jax.Array) -> jax.Array:
  return jnp.clip(x, -127, 127).astype(jnp.int8)


def bit_length(x: jax.Array) -> jax.Array:
  """Bits needed for x >= 0 (0 for 0)."""
  return 32 - jax.lax.clz(x.astype(jnp.int32))


def isqrt(n: jax.Array) -> jax.Array:
  """floor(sqrt(n)) for 0 <= n < 2^30, by a fixed number of integer Newton steps from above."""
  x = jnp.left_shift(1, (bit_length(n) + 1) // 2)
  for _ in range(6):
    x = jnp.maximum((x + n // x) >> 1, 1)  # >= floor(sqrt(n)) throughout; never 0, so never a division by 0
  return jnp.where(x * x > n, x - 1, x)


def centred_bits(width: int) -> int:
  """Bits a row of `width` values keeps before squaring, so the sum of squares stays below 2^30."""
  return (30 - (width - 1).bit_length()) // 2


def normalize(c: jax.Array, scale: int) -> jax.Array:
  """int8 rows c * scale / sqrt(sum c^2), rounded: unit vectors in Q7 (scale 2^7), LayerNorm (scale sqrt(W) 2^f).

  The row is shifted right until it fits `centred_bits`; its root r =
  isqrt(sum c^2) gives one reciprocal a row, inv = floor(scale 2^s / r) with
  s = 29 - bits(scale), and out = round(c inv / 2^s). As |c| <= r, c inv < 2^29.
  """
  bits = centred_bits(c.shape[-1])
  top = jnp.max(jnp.abs(c), -1, keepdims=True)
  c = requant(c, jnp.maximum(bit_length(top) - bits, 0))
  root = jnp.maximum(isqrt(jnp.sum(c * c, -1, keepdims=True)), 1)
  s = 29 - scale.bit_length()
  return clip8(requant(c * ((scale << s) // root), s))


def layer_norm(x: jax.Array, frac: int) -> jax.Array:
  """int8 LayerNorm (no affine) of int32 rows, output in Q`frac`."""
  w = x.shape[-1]
  c = x - jnp.sum(x, -1, keepdims=True) // w
  return normalize(c, sqrt_scale(w, frac))


def sqrt_scale(width: int, frac: int) -> int:
  """round(sqrt(width) * 2^frac), computed exactly on integers."""
  return (math.isqrt(width << (2 * frac + 2)) + 1) // 2


def dense(x: jax.Array, p: dict, n_in: int = 1) -> jax.Array:
  """Integer dense layer: round((x W + b) * 2^-shift) per output channel.

  x int8 (or int32 for 12-bit inputs), p = dict(kernel=int8 (*in, *out),
  bias=int32 (*out,) in accumulator units, shift=int32 (*out,)).
  """
  w = p["kernel"]
  contract = (tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in)))
  if x.dtype != jnp.int8:
    w = w.astype(jnp.int32)
  acc = jax.lax.dot_general(x, w, (contract, ((), ())), preferred_element_type=jnp.int32)
  return requant(acc + p["bias"], p["shift"])


def same_as_before(z, prev_tokens, xp):
  """Head outputs (..., V + 1) -> logits (..., V): the last output, clipped to +-COPY_LIMIT, is added
  to the logit of the previous frame's token at each position (P-frames; prev_tokens None: I-frames)."""
  boost, z = xp.clip(z[..., -1:], -COPY_LIMIT, COPY_LIMIT), z[..., :-1]
  if prev_tokens is None:
    return z
  return z + xp.where(prev_tokens[..., None] == xp.arange(z.shape[-1]), boost, 0)


def exp2_neg(d: jax.Array, table: jax.Array) -> jax.Array:
  """2^(-d/256) in Q14 for d >= 0 (d in 1/256 bit): table[d mod 256] >> (d / 256)."""
  return table[d & 255] >> jnp.minimum(d >> 8, 31)


def frequencies(z: jax.Array, table: jax.Array) -> jax.Array:
  """Integer weights w >= 0 of rows of logits z (..., V) in 1/256 bit, each row summing to 2^24 - V.

  The range coder gives symbol s the frequency w_s + 1 out of 2^24 (entropy.py).
  e = 2^(z - max z) in Q14; w = floor(e * M / 2^(6 + sh)) with a 15-bit
  normaliser S' = S >> sh of the row's sum S and M = floor((2^24 - 2^13) 2^6 / S'),
  so that sum(w) stays below 2^24 - V; what is left goes to the row's first
  most probable symbol.
  """
  v = z.shape[-1]
  e = exp2_neg(jnp.max(z, -1, keepdims=True) - z, table)
  s = jnp.sum(e, -1, keepdims=True)
  sh = bit_length(s) - 15
  m = (((1 << FREQ_BITS) - (1 << 13)) << 6) // (s >> sh)
  w = (e * m) >> (6 + sh)
  rest = ((1 << FREQ_BITS) - v) - jnp.sum(w, -1, keepdims=True)
  top = jnp.argmax(z, -1)[..., None]
  return jnp.put_along_axis(w, top, jnp.take_along_axis(w, top, -1) + rest, -1, inplace=False)


def softmax_weights(scores: jax.Array, temp: jax.Array, table: jax.Array) -> jax.Array:
  """Attention weights in Q14 from int32 scores (Q14 cosines) and per-head temperatures (.., H, 1, 1).

  e = 2^(z - max z) in Q14 sums to S; with S' = S >> sh in 15 bits and one
  reciprocal a row, inv = floor(2^30 / S'), p = round(e inv / 2^(16 + sh)).
  """
  z = requant(scores * temp, SCORE_FRAC)
  e = exp2_neg(jnp.max(z, -1, keepdims=True) - z, table)
  s = jnp.sum(e, -1, keepdims=True)
  sh = bit_length(s) - 15
  return jnp.minimum(requant(e * ((1 << 30) // (s >> sh)), 16 + sh), (1 << PROB_FRAC) - 1)


def gelu(u: jax.Array, table: jax.Array, shift: int) -> jax.Array:
  """int8 GELU of int32 inputs: a table over the 2^12 inputs around 0; above it GELU(x) = x."""
  half = 1 << (GELU_BITS - 1)
  looked = table[jnp.clip(u, -half, half - 1) + half]
  return jnp.where(u >= half, clip8(requant(u, shift)), looked.astype(jnp.int8))


class IntegerFhat:
  """fhat as the context model sees it, on integers: (N, n, n, C) int32 in Q`e_frac`."""

  def __init__(self, tables: dict, formats: dict, schedule, phi_of_scale):
    self.t, self.f = tables, formats
    self.schedule, self.phi_of_scale = tuple(schedule), tuple(phi_of_scale)
    self.tile = self.schedule[-1]

  def residual(self, k: int, idx: jax.Array) -> jax.Array:
    """Scale k's contribution from its tokens (N, p, p)."""
    e = self.t["codebook"][idx]
    if self.schedule[k] != self.tile:
      b = self.t["bicubic"][k]
      e = requant(jnp.einsum("op,npqc->noqc", b, e), self.f["bicubic_frac"])
      e = requant(jnp.einsum("oq,npqc->npoc", b, e), self.f["bicubic_frac"])
    phi = self.t["phi"][self.phi_of_scale[k]]
    n = self.tile
    padded = jnp.pad(e, ((0, 0), (1, 1), (1, 1), (0, 0)))
    acc = sum(jnp.einsum("nhwc,cd->nhwd", padded[:, i:i + n, j:j + n], phi["kernel"][i, j])
              for i in range(3) for j in range(3))
    return requant(acc + phi["bias"], self.f["phi_frac"])

  def area(self, fhat: jax.Array, size: int) -> jax.Array:
    """Area downsampling to size x size: window sums divided by the window size, rounded half up."""
    if size == self.tile:
      return fhat
    m, counts = self.t["area"][size]["sum"], self.t["area"][size]["count"]
    s = jnp.einsum("oh,pw,nhwc->nopc", m, m, fhat)
    return (2 * s + counts[..., None]) // (2 * counts[..., None])


class IntegerContext:
  """The context model's per-scale step on integers: frequencies of scale k's tokens given the cache.

  `tables` and `formats` are the bundle's integer model (quantize.py writes
  them); frame type is static, because adaLN is folded into the weights.
  """

  def __init__(self, tables: dict, formats: dict, schedule):
    self.t, self.f = tables, formats
    self.schedule = tuple(schedule)
    self.offsets = tuple(int(x) for x in np.cumsum([0] + [p * p for p in self.schedule]))
    self.heads = formats["heads"]
    self.width = tables["base"].shape[-1]
    self.depth = len(formats["blocks"])

  @property
  def length(self) -> int:
    return self.offsets[-1]

  def init_cache(self, n: int) -> list[dict]:
    d = self.width // self.heads
    shape = (n, self.length, self.heads, d)
    return [dict(k=jnp.zeros(shape, jnp.int8), v=jnp.zeros(shape, jnp.int8)) for _ in range(self.depth)]

  def _attention(self, h, b, cache, lo, hi, fb):
    n, m = h.shape[:2]
    q = normalize(dense(h, b["q"]).reshape(n, m, self.heads, -1), 1 << UNIT_FRAC)
    kk = normalize(dense(h, b["k"]).reshape(n, m, self.heads, -1), 1 << UNIT_FRAC)
    vv = clip8(dense(h, b["v"])).reshape(n, m, self.heads, -1)
    cache = dict(k=cache["k"].at[:, lo:hi].set(kk), v=cache["v"].at[:, lo:hi].set(vv))
    keys, values = cache["k"][:, :hi], cache["v"][:, :hi]
    scores = jnp.einsum("nqhd,nkhd->nhqk", q, keys, preferred_element_type=jnp.int32)
    p = softmax_weights(scores, self.t["temperature"][b["index"]][None, :, None, None], self.t["exp2"])
    # p < 2^14 splits into two int8 halves, so the weighted sum runs as int8 matmuls.
    o = sum(jnp.einsum("nhqk,nkhd->nqhd", (p >> s & 127).astype(jnp.int8), values,
                       preferred_element_type=jnp.int32) << s for s in (0, 7))
    o = clip8(requant(o, PROB_FRAC - (fb["o_frac"] - fb["v_frac"])))
    return dense(o.reshape(n, m, -1), b["out"]), cache

  def step(self, cache: list[dict], k: int, x_k: jax.Array | None, frame_type: int,
           prev_k: dict | None) -> tuple[jax.Array, list[dict]]:
    """Integer weights (N, p_k^2, V) of scale k (see `frequencies`) and the updated cache.

    x_k: (N, p_k^2, C) int32, the integer fhat of scales < k area-downsampled to
    scale k's grid (None for k = 0); prev_k: the previous frame's dict(fhat, tokens)
    at scale k (P-frames only). With a neighbourhood s > 1 (formats["neighbourhood"])
    both fhat inputs come as windows (N, p_k^2, s^2, C).
    """
    lo, hi = self.offsets[k], self.offsets[k + 1]
    ft = FRAME_TYPES[frame_type]
    n = cache[0]["k"].shape[0]
    x = jnp.broadcast_to(self.t["base"][frame_type, lo:hi], (n, hi - lo, self.width))
    n_in = self.t["embed_in"]["kernel"].ndim - 1  # 2 with a neighbourhood: (window, C) -> width
    if x_k is not None:
      x = x + dense(x_k, self.t["embed_in"], n_in)
    if prev_k is not None:
      x = x + dense(prev_k["fhat"], self.t["embed_prev"], n_in) + self.t["prev_token"][prev_k["tokens"]]
    new_cache = []
    for i, (fb, c) in enumerate(zip(self.f["blocks"], cache)):
      b = dict(self.t["blocks"][i][ft], index=i)
      a, c = self._attention(layer_norm(x, fb["ln1_frac"]), b, c, lo, hi, fb)
      x = x + a
      u = dense(layer_norm(x, fb["ln2_frac"]), b["fc1"])
      x = x + dense(gelu(u, self.t["gelu"][i], fb["g_frac"] - fb["h_frac"]), b["fc2"])
      new_cache.append(c)
    z = dense(layer_norm(x, self.f["head_ln_frac"]), self.t["head"][ft])
    if self.f.get("copy_prev", False):
      z = same_as_before(z, None if prev_k is None else prev_k["tokens"], jnp)
    return frequencies(z, self.t["exp2"]), new_cache
