"""The context model: a VAR-style Transformer over the scales of one latent tile.

It gives the probability of every token of a tile's K token maps, scale by
scale. The sequence is the tile's scales in order, each scale's grid
flattened row-major (L = sum p_k^2 positions). Position j belongs to scale
level[j] and sees every position of scales <= level[j] (VAR's block-causal
mask), so the logits of scale k depend only on what a decoder has once it
has decoded scales < k.

Input of scale 1 is a learned start token; input of scale k >= 2 is a linear
embedding of fhat_(k-1) (the quantizer's reconstruction from scales < k)
area-downsampled to the scale-k grid. Learned position and level embeddings
are added. Every block is adaLN-Zero conditioned on the frame type (I or P)
and uses attention with L2-normalised queries and keys and a learned
temperature per head.

Temporal context (P-frames), truncation-safe: at scale k the model sees the
previous frame only through its scales <= k, namely
  * fhat_(t-1,k) area-downsampled to the scale-k grid (what the previous
    frame looked like at this level of detail), and
  * the previous frame's tokens of scale k, embedded, and with `copy_prev`
    also as a "same as before" path: a learned, per-position boost added to
    the logit of the token the previous frame had at the same position and
    scale, so unchanged tokens of static content cost almost nothing.
So when a stream is cut to K' scales for every frame, everything scale k <=
K' needs was received.

Spatial context (`neighbourhood` s > 1): a tile's inputs at scale k, fhat of
scales < k and the previous frame's fhat of scales <= k, come as the s x s
window around each position of the whole frame's map at scale k's grid
(integer_reference.neighbourhoods), so tiles see their neighbours' coarser
scales and the previous frame around them (motion), all of which the decoder
has before scale k. `context` chooses how it enters:
  additive: both are embedded and added to the input of scale k;
  cross:    every block cross-attends to the previous frame's positions of
            scales <= k (plus a learned null slot, all an I-frame sees).

`__call__` is the teacher-forced pass used in training. With `scan_layers`
it runs the blocks as one `lax.scan` over their stacked parameters, so its
program holds a single block however deep the model (compile time flat in
depth). The parameters keep their per-block layout either way, so
checkpoints and bundles do not depend on it; the price is one stacked copy
of the block parameters inside the step. `init_cache` and
`step` are the incremental pass the codec runs: one call per scale, fed only
that scale's inputs, with keys and values of earlier scales in a cache.
"""

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from progvc_jax import sharding
from progvc_jax.models import layers

I_FRAME, P_FRAME = 0, 1
COPY_LIMIT_BITS = 64  # the "same as before" boost stays within +-64 bits (the integer path's clip)
CONTEXTS = ("additive", "cross")


def _normal(std: float):
  return jax.nn.initializers.truncated_normal(std)


def layer_norm(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  """LayerNorm without affine parameters (adaLN supplies scale and shift), statistics in float32."""
  x32 = x.astype(jnp.float32)
  mean = x32.mean(-1, keepdims=True)
  var = jnp.square(x32 - mean).mean(-1, keepdims=True)
  return ((x32 - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


class Dense(nnx.Module):
  """y = x W + b with W of shape (*in_shape, *out_shape) and logical axes for both."""

  def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int], axes: Sequence[str | None],
               *, std: float | None = None, bias: bool = True, zero: bool = False, dtype=jnp.float32,
               rngs: nnx.Rngs):
    self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
    fan_in = int(np.prod(self.in_shape))
    init = jax.nn.initializers.zeros if zero else _normal(std if std is not None else fan_in ** -0.5)
    self.kernel = layers.param(rngs, init, (*self.in_shape, *self.out_shape), axes)
    out_axes = tuple(axes)[len(self.in_shape):]
    self.bias = layers.param(rngs, jax.nn.initializers.zeros, self.out_shape, out_axes) if bias else None
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    n_in = len(self.in_shape)
    y = jax.lax.dot_general(x.astype(self.dtype), self.kernel[...].astype(self.dtype),
                            ((tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in))), ((), ())))
    return y if self.bias is None else y + self.bias[...].astype(self.dtype)


class Attention(nnx.Module):
  """Multi-head attention with L2-normalised queries and keys (VAR's attn_l2_norm)."""

  def __init__(self, width: int, heads: int, *, dtype, rngs: nnx.Rngs):
    if width % heads:
      raise ValueError(f"width {width} does not divide into {heads} heads")
    self.heads, self.head_dim = heads, width // heads
    std = (width * 3) ** -0.5
    self.q = Dense((width,), (heads, self.head_dim), ("embed", "heads", None), std=std, dtype=dtype, rngs=rngs)
    self.kv = Dense((width,), (2, heads, self.head_dim), ("embed", None, "heads", None), std=std,
                    dtype=dtype, rngs=rngs)
    self.out = Dense((heads, self.head_dim), (width,), ("heads", None, "embed"), std=std, dtype=dtype,
                     rngs=rngs)
    # log of the attention temperature; queries and keys are unit vectors.
    self.log_scale = layers.param(rngs, jax.nn.initializers.constant(np.log(4.0)), (heads,), ("heads",))

  def queries(self, x: jax.Array) -> jax.Array:
    q = self.q(x).astype(jnp.float32)
    scale = jnp.exp(jnp.minimum(self.log_scale[...], np.log(100.0)))[:, None]
    return q * jax.lax.rsqrt(jnp.sum(q * q, -1, keepdims=True) + 1e-12) * scale

  def keys_values(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    kv = self.kv(x)
    k, v = kv[..., 0, :, :].astype(jnp.float32), kv[..., 1, :, :]
    return k * jax.lax.rsqrt(jnp.sum(k * k, -1, keepdims=True) + 1e-12), v

  def attend(self, q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None) -> jax.Array:
    """q (N, Lq, H, D), k/v (N, Lk, H, D), mask broadcastable to (N, H, Lq, Lk)."""
    q = sharding.constrain(q, "batch", "length", "heads", None)
    s = jnp.einsum("nqhd,nkhd->nhqk", q, k)
    if mask is not None:
      s = jnp.where(mask, s, -1e30)
    p = jax.nn.softmax(s, axis=-1)
    o = jnp.einsum("nhqk,nkhd->nqhd", p.astype(v.dtype), v)
    return self.out(sharding.constrain(o, "batch", "length", "heads", None))


class Block(nnx.Module):
  """adaLN-Zero Transformer block: self-attention, optional cross-attention, MLP."""

  def __init__(self, width: int, heads: int, mlp: int, cross: bool, *, dtype, rngs: nnx.Rngs):
    self.cross = cross
    n_mod = 9 if cross else 6  # (shift, scale, gate) per sub-layer
    self.ada = Dense((width,), (n_mod, width), ("embed", None, "mlp"), zero=True, dtype=dtype, rngs=rngs)
    self.attn = Attention(width, heads, dtype=dtype, rngs=rngs)
    self.cross_attn = Attention(width, heads, dtype=dtype, rngs=rngs) if cross else None
    self.fc1 = Dense((width,), (mlp,), ("embed", "mlp"), dtype=dtype, rngs=rngs)
    self.fc2 = Dense((mlp,), (width,), ("mlp", "embed"), std=mlp ** -0.5 / 2, dtype=dtype, rngs=rngs)

  def modulation(self, cond: jax.Array) -> list[jax.Array]:
    m = self.ada(jax.nn.silu(cond))  # (N, n_mod, width)
    return [m[:, i, None, :] for i in range(m.shape[1])]

  def mlp(self, x: jax.Array) -> jax.Array:
    return self.fc2(sharding.constrain(jax.nn.gelu(self.fc1(x), approximate=True), "batch", "length", "mlp"))

  def __call__(self, x, mod, self_kv, self_mask, cross_kv=None, cross_mask=None):
    """x (N, Lq, W); self_kv/cross_kv: the keys and values to attend to."""
    shift, scale, gate = mod[0:3]
    h = layer_norm(x) * (1 + scale) + shift
    x = x + gate * self.attn.attend(self.attn.queries(h), *self_kv(h), self_mask)
    if self.cross:
      shift, scale, gate = mod[3:6]
      h = layer_norm(x) * (1 + scale) + shift
      x = x + gate * self.cross_attn.attend(self.cross_attn.queries(h), *cross_kv, cross_mask)
    shift, scale, gate = mod[-3:]
    return x + gate * self.mlp(layer_norm(x) * (1 + scale) + shift)


def _teacher_forced_block(model, block, x, cond, self_mask, mem, cross_mask):
  """One block of the teacher-forced pass: a unit of rematerialisation."""
  cross_kv = None
  if block.cross:
    nk, nv = model._null_kv(block, x.shape[0])
    k, v = block.cross_attn.keys_values(mem)
    cross_kv = (jnp.concatenate([nk, k], 1), jnp.concatenate([nv.astype(v.dtype), v], 1))
  return block(x, block.modulation(cond), block.attn.keys_values, self_mask, cross_kv, cross_mask)


class ContextModel(nnx.Module):
  """Logits over the V codes for every token of a tile's scales.

  Args:
    vocab_size: V, the tokenizer's codebook size.
    latent_dim: C, the tokenizer's latent channels.
    schedule: the tokenizer's scale grid sizes (p_1, ..., p_K).
    width, depth, heads, mlp_ratio: Transformer size.
    context: "additive" or "cross" (see the module docstring).
    neighbourhood: s, the side of the window of the frame's map each input position sees (odd;
      1: the tile alone). Inputs then carry an s^2 axis: x_next (N, L - 1, s^2, C).
    copy_prev: in P-frames, add a learned boost (one output of the head, at most
      COPY_LIMIT_BITS either way) to the logit of the previous frame's token at the same position.
    dtype: compute dtype (parameters stay float32; logits are float32).
    remat: what the teacher-forced pass keeps for the backward pass (layers.REMAT_POLICIES).
    scan_layers: run the teacher-forced pass's blocks under one lax.scan.
  """

  def __init__(self, *, vocab_size: int, latent_dim: int, schedule: Sequence[int], width: int = 256,
               depth: int = 4, heads: int = 4, mlp_ratio: float = 4.0, context: str = "additive",
               neighbourhood: int = 1, copy_prev: bool = False, dtype=jnp.float32, remat: str = "none",
               scan_layers: bool = False, rngs: nnx.Rngs):
    if context not in CONTEXTS:
      raise ValueError(f"context must be one of {CONTEXTS}, got {context!r}")
    if neighbourhood < 1 or neighbourhood % 2 == 0:
      raise ValueError(f"neighbourhood must be an odd number >= 1, got {neighbourhood}")
    self.schedule = tuple(int(p) for p in schedule)
    self.neighbourhood = int(neighbourhood)
    self.vocab_size, self.width, self.context, self.dtype = vocab_size, width, context, dtype
    self.remat = layers.check_remat(remat)
    self.scan_layers = bool(scan_layers)
    self.offsets = tuple(int(x) for x in np.cumsum([0] + [p * p for p in self.schedule]))
    # Scale of every position (a tuple: NNX would take an array attribute for state).
    self.levels = tuple(int(k) for k, p in enumerate(self.schedule) for _ in range(p * p))
    L, K = self.offsets[-1], len(self.schedule)
    std = (width * 3) ** -0.5
    self.start = layers.param(rngs, _normal(std), (width,), ("embed",))
    inputs = (latent_dim,) if neighbourhood == 1 else (neighbourhood ** 2, latent_dim)
    in_axes = (None,) * len(inputs) + ("embed",)
    self.embed_in = Dense(inputs, (width,), in_axes, dtype=dtype, rngs=rngs)
    self.pos = layers.param(rngs, _normal(0.02), (L, width), (None, "embed"))
    self.level = layers.param(rngs, _normal(0.02), (K, width), (None, "embed"))
    self.frame_type = layers.param(rngs, _normal(std), (2, width), (None, "embed"))
    self.embed_prev = Dense(inputs, (width,), in_axes, dtype=dtype, rngs=rngs)
    self.prev_token = layers.param(rngs, _normal(std), (vocab_size, width), ("vocab", "embed"))
    self.null_slot = layers.param(rngs, _normal(std), (width,), ("embed",)) if context == "cross" else None
    mlp = int(width * mlp_ratio)
    self.blocks = nnx.List([Block(width, heads, mlp, context == "cross", dtype=dtype, rngs=rngs)
                            for _ in range(depth)])
    self.head_ada = Dense((width,), (2, width), ("embed", None, "mlp"), zero=True, dtype=dtype, rngs=rngs)
    self.head = Dense((width,), (vocab_size,), ("embed", "vocab"), std=0.02, dtype=dtype, rngs=rngs)
    self.copy_gate = Dense((width,), (1,), ("embed", None), zero=True, dtype=dtype, rngs=rngs) if copy_prev else None

  @property
  def length(self) -> int:
    return self.offsets[-1]

  @property
  def num_scales(self) -> int:
    return len(self.schedule)

  # Pieces shared by both passes.
  def _inputs(self, x_next: jax.Array | None, n: int, lo: int, hi: int) -> jax.Array:
    """Embedded inputs of positions [lo, hi): start token for scale 1, embed_in(x) after it."""
    parts = []
    if lo == 0:
      parts.append(jnp.broadcast_to(self.start[...].astype(self.dtype), (n, 1, self.width)))
    if x_next is not None:
      parts.append(self.embed_in(x_next))
    h = jnp.concatenate(parts, axis=1)
    return h + (self.pos[...][lo:hi] + self.level[...][np.asarray(self.levels[lo:hi])]).astype(self.dtype)

  def _previous(self, prev: dict, lo: int, hi: int) -> jax.Array:
    """Embedding of the previous frame's context at positions [lo, hi)."""
    h = self.embed_prev(prev["fhat"]) + self.prev_token[...][prev["tokens"]].astype(self.dtype)
    return h + (self.pos[...][lo:hi] + self.level[...][np.asarray(self.levels[lo:hi])]).astype(self.dtype)

  def _cond(self, frame_type: jax.Array) -> jax.Array:
    return self.frame_type[...][frame_type].astype(self.dtype)

  def _logits(self, x: jax.Array, cond: jax.Array, prev_tokens: jax.Array | None, is_p: jax.Array) -> jax.Array:
    """Logits (N, M, V) float32; with copy_prev, P-frame rows get the "same as before" boost on
    the logit of prev_tokens (N, M), the previous frame's tokens at the same positions."""
    m = self.head_ada(jax.nn.silu(cond))
    h = layer_norm(x) * (1 + m[:, 1, None, :]) + m[:, 0, None, :]
    logits = self.head(h).astype(jnp.float32)
    if self.copy_gate is None or prev_tokens is None:
      return logits
    limit = COPY_LIMIT_BITS * np.log(2.0)  # in nats
    boost = jnp.clip(self.copy_gate(h).astype(jnp.float32), -limit, limit)
    same = prev_tokens[..., None] == jnp.arange(self.vocab_size)
    return logits + jnp.where(same & is_p[:, None, None], boost, 0.0)

  def _null_kv(self, block: Block, n: int):
    k, v = block.cross_attn.keys_values(layer_norm(self.null_slot[...].astype(self.dtype))[None, None])
    return jnp.broadcast_to(k, (n, *k.shape[1:])), jnp.broadcast_to(v, (n, *v.shape[1:]))

  # Teacher-forced pass (training).
  def __call__(self, x_next: jax.Array, frame_type: jax.Array, prev: dict | None = None) -> jax.Array:
    """Logits (N, L, V) of all scales at once.

    x_next: (N, L - 1, C), fhat_(k-1) downsampled to scale k's grid for k >= 2
      (progressive.teacher_inputs); (N, L - 1, s^2, C) with a neighbourhood s > 1;
    frame_type: (N,) int, I_FRAME or P_FRAME;
    prev: the previous frame's context, dict(fhat=(N, L, C) or (N, L, s^2, C), tokens=(N, L))
      (progressive.teacher_inputs); ignored for I-frames, required for P-frames.
    """
    n, L = x_next.shape[0], self.length
    x = self._inputs(x_next, n, 0, L)
    cond = self._cond(frame_type)
    is_p = (frame_type == P_FRAME)
    lv = jnp.asarray(self.levels)
    self_mask = (lv[:, None] >= lv[None, :])[None, None]
    mem = cross_mask = None
    if prev is not None:
      p = self._previous(prev, 0, L)
      if self.context == "additive":
        x = x + jnp.where(is_p[:, None, None], p, 0).astype(self.dtype)
      else:
        mem = layer_norm(p)
        visible = (lv[:, None] >= lv[None, :])[None] & is_p[:, None, None]
        cross_mask = jnp.concatenate([jnp.ones((n, L, 1), bool), visible], axis=2)[:, None]
    if self.context == "cross" and mem is None:
      cross_mask = jnp.concatenate([jnp.ones((n, L, 1), bool), jnp.zeros((n, L, L), bool)], 2)[:, None]
      mem = jnp.zeros((n, L, self.width), self.dtype)
    if self.scan_layers and len(self.blocks) > 1:
      x = self._scanned_blocks(x, cond, self_mask, mem, cross_mask)
    else:
      run = layers.remat(_teacher_forced_block, self.remat)
      for block in self.blocks:
        x = sharding.constrain(x, "batch", "length", "embed")
        x = run(self, block, x, cond, self_mask, mem, cross_mask)
    x = sharding.constrain(x, "batch", "length", "embed")
    logits = self._logits(x, cond, None if prev is None else prev["tokens"], is_p)
    return sharding.constrain(logits, "batch", "length", "vocab")

  def _scanned_blocks(self, x, cond, self_mask, mem, cross_mask):
    """The blocks as one lax.scan over their parameters stacked on a leading layer axis."""
    graphdef, _ = nnx.split(self.blocks[0])
    stacked = jax.tree.map(lambda *ps: jnp.stack(ps), *[nnx.state(b) for b in self.blocks])

    def body(x, block_state):
      block = nnx.merge(graphdef, block_state)
      x = sharding.constrain(x, "batch", "length", "embed")
      return _teacher_forced_block(self, block, x, cond, self_mask, mem, cross_mask)

    body = layers.remat(body, self.remat, modules=False)
    x, _ = jax.lax.scan(lambda x, st: (body(x, st), None), x, stacked)
    return x

  # Incremental pass (codec).
  def init_cache(self, n: int) -> list[dict]:
    """Empty key/value caches for n sequences (the tiles of a frame)."""
    heads, hd = self.blocks[0].attn.heads, self.blocks[0].attn.head_dim
    out = []
    for block in self.blocks:
      c = dict(k=jnp.zeros((n, self.length, heads, hd), jnp.float32),
               v=jnp.zeros((n, self.length, heads, hd), self.dtype))
      if block.cross:
        nk, nv = self._null_kv(block, n)
        c["ck"] = jnp.concatenate([nk, jnp.zeros((n, self.length, heads, hd), jnp.float32)], 1)
        c["cv"] = jnp.concatenate([nv, jnp.zeros((n, self.length, heads, hd), nv.dtype)], 1)
      out.append(c)
    return out

  def step(self, cache: list[dict], k: int, x_k: jax.Array | None, frame_type: jax.Array,
           prev_k: dict | None = None) -> tuple[jax.Array, list[dict]]:
    """Logits (N, p_k^2, V) of scale k (0-based, static) and the updated cache.

    x_k: (N, p_k^2, C), fhat_(k-1) downsampled to scale k's grid (None for k = 0);
    prev_k: the previous frame's context at scale k only, dict(fhat=(N, p_k^2, C),
      tokens=(N, p_k^2)); None for I-frames. With a neighbourhood s > 1 both fhat
      inputs carry an s^2 axis before C.
    """
    lo, hi = self.offsets[k], self.offsets[k + 1]
    n = frame_type.shape[0]
    x = self._inputs(x_k, n, lo, hi)
    cond = self._cond(frame_type)
    is_p = (frame_type == P_FRAME)
    mem = None
    if prev_k is not None:
      p = self._previous(prev_k, lo, hi)
      if self.context == "additive":
        x = x + jnp.where(is_p[:, None, None], p, 0).astype(self.dtype)
      else:
        mem = layer_norm(p)
    new_cache = []
    for block, c in zip(self.blocks, cache):
      c = dict(c)

      def self_kv(h, block=block, c=c):
        kk, vv = block.attn.keys_values(h)
        c["k"] = c["k"].at[:, lo:hi].set(kk)
        c["v"] = c["v"].at[:, lo:hi].set(vv.astype(c["v"].dtype))
        return c["k"][:, :hi], c["v"][:, :hi]

      cross_kv = cross_mask = None
      if block.cross:
        if mem is not None:
          kk, vv = block.cross_attn.keys_values(mem)
          c["ck"] = c["ck"].at[:, 1 + lo:1 + hi].set(kk)
          c["cv"] = c["cv"].at[:, 1 + lo:1 + hi].set(vv.astype(c["cv"].dtype))
        cross_kv = (c["ck"][:, :1 + hi], c["cv"][:, :1 + hi])
        slot = jnp.arange(1 + hi)
        cross_mask = ((slot == 0)[None] | is_p[:, None])[:, None, None, :]
        if mem is None:
          cross_mask = jnp.broadcast_to(slot == 0, (n, 1, 1, 1 + hi))
      x = block(x, block.modulation(cond), self_kv, None, cross_kv, cross_mask)
      new_cache.append(c)
    return self._logits(x, cond, None if prev_k is None else prev_k["tokens"], is_p), new_cache
