"""The integer probability path in plain NumPy: the definition of progvc's probability format.

Given a bundle's integer tables and formats (quantize.py) and the tokens of a
frame's tiles, `frame_weights` computes the integer weights w (N, L, V) of
every token of every scale, all scales at once, with the block-causal mask
(VAR's): position j of scale k sees the positions of scales <= k. The range
coder codes token s of a row with frequency w_s + 1 out of 2^24.

The jitted codec (integer.py) computes the same numbers one scale at a time
with a KV cache, on int8/int32; it must agree with this file bit for bit.
Here every value is int64 and `_i32` checks that it would fit the int32 the
jitted path holds it in. No JAX, no floating point.
"""

import math

import numpy as np

I32 = 2**31


def _i32(x: np.ndarray) -> np.ndarray:
  if x.size and (x.min() < -I32 or x.max() >= I32):
    raise OverflowError("an integer-path value left int32")
  return x


def requant(x, shift):
  """round(x * 2^-shift), halves up; a negative shift multiplies exactly."""
  x, shift = np.asarray(x, np.int64), np.asarray(shift, np.int64)
  down = (x + ((1 << np.maximum(shift, 0)) >> 1)) >> np.maximum(shift, 0)
  return _i32(np.where(shift >= 0, down, x << np.maximum(-shift, 0)))


def clip8(x):
  return np.clip(x, -127, 127)


def bit_length(x):
  return np.vectorize(lambda v: int(v).bit_length(), otypes=[np.int64])(x)


def isqrt(n):
  return np.vectorize(math.isqrt, otypes=[np.int64])(n)


def normalize(c, scale):
  """c' * scale / isqrt(sum c'^2) per row, rounded through one reciprocal a row; c' = c shifted right
  to fit the square's budget."""
  bits = (30 - (c.shape[-1] - 1).bit_length()) // 2  # squares of a row sum below 2^30
  c = requant(c, np.maximum(bit_length(np.abs(c).max(-1, keepdims=True)) - bits, 0))
  root = np.maximum(isqrt(_i32((c * c).sum(-1, keepdims=True))), 1)
  s = 29 - scale.bit_length()
  return clip8(requant(c * ((scale << s) // root), s))


def layer_norm(x, frac):
  w = x.shape[-1]
  return normalize(x - x.sum(-1, keepdims=True) // w, (math.isqrt(w << (2 * frac + 2)) + 1) // 2)


def dense(x, p, n_in=1):
  w = np.asarray(p["kernel"], np.int64)
  acc = np.tensordot(x, w, axes=(list(range(x.ndim - n_in, x.ndim)), list(range(n_in))))
  return requant(_i32(acc + p["bias"]), p["shift"])


def exp2_neg(d, table):
  return np.asarray(table, np.int64)[d & 255] >> np.minimum(d >> 8, 31)


def frequencies(z, table):
  """Weights w >= 0 of logit rows z (1/256 bit), summing to 2^24 - V (see integer.frequencies)."""
  v = z.shape[-1]
  e = exp2_neg(z.max(-1, keepdims=True) - z, table)
  s = e.sum(-1, keepdims=True)
  sh = bit_length(s) - 15
  w = _i32(e * ((((1 << 24) - (1 << 13)) << 6) // (s >> sh))) >> (6 + sh)
  top = np.argmax(z, -1)[..., None]
  np.put_along_axis(w, top, np.take_along_axis(w, top, -1) + (1 << 24) - v - w.sum(-1, keepdims=True), -1)
  return w


def fhat_prefixes(tables, formats, schedule, phi_of_scale, tokens):
  """[fhat_1, ..., fhat_K] integer (N, n, n, C) from token maps [(N, p_k, p_k)]."""
  n, fhat, out = schedule[-1], 0, []
  for k, idx in enumerate(tokens):
    e = np.asarray(tables["codebook"], np.int64)[idx]
    if schedule[k] != n:
      b = np.asarray(tables["bicubic"][k], np.int64)
      e = requant(np.einsum("op,npqc->noqc", b, e), formats["bicubic_frac"])
      e = requant(np.einsum("oq,npqc->npoc", b, e), formats["bicubic_frac"])
    phi = tables["phi"][phi_of_scale[k]]
    padded = np.pad(e, ((0, 0), (1, 1), (1, 1), (0, 0)))
    acc = sum(padded[:, i:i + n, j:j + n] @ np.asarray(phi["kernel"][i, j], np.int64)
              for i in range(3) for j in range(3))
    fhat = fhat + requant(_i32(acc + phi["bias"]), formats["phi_frac"])
    out.append(fhat)
  return out


def area(fhat, size):
  """Window means of PyTorch's adaptive average pooling, rounded half up."""
  n = fhat.shape[1]
  lo = [(i * n) // size for i in range(size)]
  hi = [-((-(i + 1) * n) // size) for i in range(size)]
  out = np.zeros((fhat.shape[0], size, size, fhat.shape[-1]), np.int64)
  for i in range(size):
    for j in range(size):
      count = (hi[i] - lo[i]) * (hi[j] - lo[j])
      out[:, i, j] = (2 * fhat[:, lo[i]:hi[i], lo[j]:hi[j]].sum((1, 2)) + count) // (2 * count)
  return out


def flat(x):
  return x.reshape(x.shape[0], -1, *x.shape[3:])


def neighbourhoods(x, grid, size, xp=np):
  """Each position's size x size window of its frame's map at one scale: the spatial context.

  x (N, p*p, C): one scale's values per tile, N = frames * rows * cols tiles in
  (frame, row, col) order, grid = (rows, cols). The tiles' p x p grids join
  into the frame's (rows p) x (cols p) map, and position (i, j) of that map gets
  the values at (i + a, j + b) for a, b in -(size // 2) .. size // 2 (row-major),
  zero beyond the frame. Returns (N, p*p, size^2, C). Gathers only, so the same
  code serves the float and the integer paths (xp: numpy or jax.numpy).
  """
  rows, cols = grid
  n, m, c = x.shape
  p = math.isqrt(m)
  frames, r = n // (rows * cols), size // 2
  img = x.reshape(frames, rows, cols, p, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(frames, rows * p, cols * p, c)
  img = xp.pad(img, ((0, 0), (r, r), (r, r), (0, 0)))
  win = xp.stack([img[:, a:a + rows * p, b:b + cols * p] for a in range(size) for b in range(size)], axis=3)
  win = win.reshape(frames, rows, p, cols, p, size * size, c).transpose(0, 1, 3, 2, 4, 5, 6)
  return win.reshape(n, m, size * size, c)


def spread(x, schedule, grid, size, xp=np):
  """`neighbourhoods` of every scale of sequences x (N, sum p_k^2, C) of the given scales."""
  if size == 1:
    return x
  out, lo = [], 0
  for p in schedule:
    out.append(neighbourhoods(x[:, lo:lo + p * p], grid, size, xp))
    lo += p * p
  return xp.concatenate(out, 1)


def attention(h, b, fb, temperature, table, levels, heads):
  """Masked integer self-attention over the whole sequence (N, L, W)."""
  n, length, _ = h.shape
  q = normalize(dense(h, b["q"]).reshape(n, length, heads, -1), 128)
  k = normalize(dense(h, b["k"]).reshape(n, length, heads, -1), 128)
  v = clip8(dense(h, b["v"])).reshape(n, length, heads, -1)
  z = requant(np.einsum("nqhd,nkhd->nhqk", q, k) * temperature[:, None, None], 14)
  visible = levels[:, None] >= levels[None, :]
  z = np.where(visible, z, -I32)
  e = np.where(visible, exp2_neg(z.max(-1, keepdims=True) - z, table), 0)
  s = e.sum(-1, keepdims=True)
  sh = bit_length(s) - 15
  p = np.minimum(requant(e * ((1 << 30) // (s >> sh)), 16 + sh), (1 << 14) - 1)
  o = clip8(requant(np.einsum("nhqk,nkhd->nqhd", p, v), 14 - (fb["o_frac"] - fb["v_frac"])))
  return dense(o.reshape(n, length, -1), b["out"])


def gelu(u, table, shift):
  half = 1 << 11
  return np.where(u >= half, clip8(requant(u, shift)), np.asarray(table, np.int64)[np.clip(u, -half, half - 1) + half])


def frame_weights(tables, formats, tokens, frame_type, prev_tokens=None, grid=None):
  """Integer weights (N, L, V) of a frame's tiles.

  tables, formats: the bundle's integer model; tokens: the frame's K token
  maps [(N, p_k, p_k)]; frame_type: 0 (I) or 1 (P); prev_tokens: the
  previous frame's K token maps (P-frames); grid: the frame's tiles (rows,
  cols), needed where formats["neighbourhood"] > 1 (default: one column).
  """
  sched, heads, phi_of_scale = tuple(t.shape[1] for t in tokens), formats["heads"], formats["phi_of_scale"]
  size = formats.get("neighbourhood", 1)
  grid = (len(tokens[0]), 1) if grid is None else grid
  n_in = 1 if size == 1 else 2
  levels = np.concatenate([np.full(p * p, k) for k, p in enumerate(sched)])
  fhats = fhat_prefixes(tables, formats, sched, phi_of_scale, tokens)
  x = np.asarray(tables["base"][frame_type], np.int64)[None].repeat(len(tokens[0]), 0)
  x_next = np.concatenate([flat(area(fhats[k - 1], sched[k])) for k in range(1, len(sched))], 1)
  x[:, 1:] += dense(spread(x_next, sched[1:], grid, size), tables["embed_in"], n_in)
  if frame_type == 1:
    prev = fhat_prefixes(tables, formats, sched, phi_of_scale, prev_tokens)
    prev_fhat = np.concatenate([flat(area(prev[k], p)) for k, p in enumerate(sched)], 1)
    prev_idx = np.concatenate([flat(t) for t in prev_tokens], 1)
    x += (dense(spread(prev_fhat, sched, grid, size), tables["embed_prev"], n_in)
          + np.asarray(tables["prev_token"], np.int64)[prev_idx])
  ft = "IP"[frame_type]
  temperature = np.asarray(tables["temperature"], np.int64)
  for i, fb in enumerate(formats["blocks"]):
    b = tables["blocks"][i][ft]
    x = _i32(x + attention(layer_norm(x, fb["ln1_frac"]), b, fb, temperature[i], tables["exp2"], levels, heads))
    u = dense(layer_norm(x, fb["ln2_frac"]), b["fc1"])
    x = _i32(x + dense(gelu(u, tables["gelu"][i], fb["g_frac"] - fb["h_frac"]), b["fc2"]))
  z = dense(layer_norm(x, formats["head_ln_frac"]), tables["head"][ft])
  if formats.get("copy_prev", False):  # "same as before": the head's last output boosts prev's token
    boost, z = np.clip(z[..., -1:], -(64 << 8), 64 << 8), z[..., :-1]
    if frame_type == 1:
      z = z + np.where(prev_idx[..., None] == np.arange(z.shape[-1]), boost, 0)
  return frequencies(z, tables["exp2"])
