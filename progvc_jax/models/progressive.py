"""A frame's tiles, scale by scale: the functions the codec's encoder and decoder share.

A frame is the batch of its N latent tiles. For scale k = 1..K the context
model's incremental step gives the probabilities of scale k's tokens; the
tokens of scale k then come from the caller (the encoder's true tokens, the
range decoder, or generative completion) and are absorbed into fhat, which
gives the input of scale k + 1. `FrameSteps` holds these per-scale functions
for the float model, jitted once per scale (what the model was trained as:
tools measure it). `IntegerFrameSteps` runs the integer probability path
(integer.py), whose frequencies are the same on every machine, so a stream
encoded anywhere decodes anywhere (docs/design.md section 4): the codec uses
that one. Nothing here imports training or codec code.

The teacher-forced counterparts used in training (`teacher_inputs`) build the
same inputs for all scales at once.
"""

from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from progvc_jax.models import integer, integer_reference
from progvc_jax.models.quantizer import HIGHEST, MultiScaleQuantizer, resize
from progvc_jax.models.transformer import I_FRAME, P_FRAME, ContextModel

COMPLETIONS = ("sample", "argmax", "mean", "none")


class Expected(NamedTuple):
  """A scale completed in expectation (`mean`), as a `choose` for `FrameSteps.run` returns it:
  tokens (N, M), the most probable codes, which the context model conditions on (the next scale's
  input and the next frame's context), and codes (N, M, C), the expected code vector under the
  model's probabilities, which the pixels get (the residual is affine in the code vector); weight:
  the share of that expected residual the pixels get (1: all of it; toward 0 the pixels approach
  `none`'s, which get nothing of the scale)."""
  tokens: jax.Array
  codes: jax.Array
  weight: float = 1.0


def flat(x: jax.Array) -> jax.Array:
  """(N, p, p, ...) -> (N, p * p, ...), row-major."""
  return x.reshape(x.shape[0], x.shape[1] * x.shape[2], *x.shape[3:])


def neighbourhoods(x: jax.Array, grid: tuple[int, int], size: int) -> jax.Array:
  """(N, p*p, C) -> (N, p*p, size^2, C): each position's window of its frame's map (the spatial
  context; integer_reference.neighbourhoods defines it). size 1: x unchanged."""
  return x if size == 1 else integer_reference.neighbourhoods(x, grid, size, jnp)


def teacher_inputs(quantizer: MultiScaleQuantizer, tokens: Sequence[jax.Array],
                   grid: tuple[int, int] | None = None, size: int = 1):
  """The context model's inputs for all scales of tiles with the given token maps.

  tokens: K maps (N, p_k, p_k). Returns x_next (N, L - 1, C), the model's input
  for scales 2..K, and this frame's context for the next frame,
  dict(fhat=(N, L, C), tokens=(N, L)): fhat_k downsampled to scale k's grid.
  With a neighbourhood size > 1 (the frames' tiles laid out as grid = (rows,
  cols)) x_next comes in windows, (N, L - 1, size^2, C); the context stays as it
  is, and `windowed` makes the model's input of it.
  """
  fhats = quantizer.fhat_prefixes(tokens)
  sched = quantizer.schedule
  x_next = [flat(resize(fhats[k - 1], sched[k], "area")) for k in range(1, len(sched))]
  ctx = [flat(resize(fhats[k], sched[k], "area")) for k in range(len(sched))]
  x_next = [neighbourhoods(x, grid, size) for x in x_next]
  return (jnp.concatenate(x_next, axis=1),
          dict(fhat=jnp.concatenate(ctx, axis=1), tokens=jnp.concatenate([flat(t) for t in tokens], 1)))


def windowed(ctx: dict, schedule: Sequence[int], grid: tuple[int, int], size: int) -> dict:
  """A frame's context (as `teacher_inputs` returns it) as the model's input on the next frame:
  its fhat in windows of every scale's map, (N, L, size^2, C), for a neighbourhood size > 1."""
  if size == 1:
    return ctx
  return dict(ctx, fhat=integer_reference.spread(ctx["fhat"], schedule, grid, size, jnp))


def context_at(ctx: dict, model: ContextModel, k: int) -> dict:
  """Scale k's slice of a frame's context (as `teacher_inputs` returns it)."""
  lo, hi = model.offsets[k], model.offsets[k + 1]
  return dict(fhat=ctx["fhat"][:, lo:hi], tokens=ctx["tokens"][:, lo:hi])


def tempered_log(probs: jax.Array, temperature: float) -> jax.Array:
  """log(probs) / temperature: the logits of the probabilities raised to 1 / temperature."""
  return jnp.log(jnp.maximum(probs, 1e-30)) / max(temperature, 1e-6)


def select_tokens(probs: jax.Array, mode: str, key: jax.Array, temperature: float = 1.0,
                  top_k: int = 0, top_p: float = 1.0) -> jax.Array:
  """Tokens (N, M) int32 chosen from probabilities (N, M, V) for generative completion.

  argmax: the most probable code. sample: a draw from p^(1/temperature),
  restricted to the top_k most probable codes (0: all) and to the smallest
  set whose probability reaches top_p; `key` makes it repeatable.
  """
  if mode == "argmax":
    return jnp.argmax(probs, -1).astype(jnp.int32)
  if mode != "sample":
    raise ValueError(f"completion mode must be 'sample' or 'argmax' here, got {mode!r}")
  logp = tempered_log(probs, temperature)
  order = jnp.sort(logp, -1)[..., ::-1]
  if top_k > 0:
    cut = order[..., min(top_k, probs.shape[-1]) - 1, None]
    logp = jnp.where(logp < cut, -jnp.inf, logp)
  if top_p < 1.0:
    p_sorted = jax.nn.softmax(order, -1)
    # Keep codes until the cumulative probability first reaches top_p (the best code always stays).
    keep = jnp.cumsum(p_sorted, -1) - p_sorted < top_p
    cut = jnp.min(jnp.where(keep, order, jnp.inf), -1, keepdims=True)
    logp = jnp.where(logp < cut, -jnp.inf, logp)
  return jax.random.categorical(key, logp, axis=-1).astype(jnp.int32)


def expected_codes(probs: jax.Array, codebook: jax.Array, temperature: float = 1.0) -> jax.Array:
  """The mean code vector (N, M, C) under probabilities (N, M, V) raised to 1 / temperature and
  normalised: the scale's least-squares estimate in latent space at temperature 1, the argmax's
  code as temperature goes to 0."""
  weights = jax.nn.softmax(tempered_log(probs, temperature), -1)
  return jnp.einsum("nmv,vc->nmc", weights, codebook, precision=HIGHEST)


class FrameSteps:
  """The per-scale functions for one frame of N tiles, jitted once per scale.

  state = dict(cache=the model's KV cache, fhat=(N, n, n, C) from the scales so far, which the pixels
  get, fhat_ctx=the same from the scales' tokens, which the context model sees; the two differ only
  after a scale completed in expectation).
  """

  def __init__(self, quantizer: MultiScaleQuantizer, model: ContextModel):
    if tuple(quantizer.schedule) != model.schedule:
      raise ValueError(f"context model schedule {model.schedule} differs from the tokenizer's "
                       f"{tuple(quantizer.schedule)}")
    self.q_def, self.q_params = nnx.split(quantizer)
    self.m_def, self.m_params = nnx.split(model)
    self.schedule = model.schedule
    self.offsets = model.offsets
    self.neighbourhood = model.neighbourhood
    self.tile, self.dim = quantizer.tile, quantizer.codebook.shape[1]
    self._init = jax.jit(self._init_fn, static_argnums=1)
    self._next = jax.jit(self._next_fn, static_argnums=0)
    # The state is donated: each call updates the KV cache in place instead of
    # copying it (about a fifth of a frame's context-model time at 640x360).
    # So a state passed to predict or absorb must not be used again.
    self._predict = jax.jit(self._predict_fn, static_argnums=0, donate_argnums=2)
    self._absorb = jax.jit(self._absorb_fn, static_argnums=0, donate_argnums=2)
    self._select = jax.jit(select_tokens, static_argnums=(1, 3, 4, 5))
    self._expect = jax.jit(self._expect_fn, static_argnums=2)
    self._spread = jax.jit(neighbourhoods, static_argnums=(1, 2))

  @property
  def num_scales(self) -> int:
    return len(self.schedule)

  def _init_fn(self, m_params, n):
    model = nnx.merge(self.m_def, m_params)
    shape = (n, self.tile, self.tile, self.dim)
    return dict(cache=model.init_cache(n), fhat=jnp.zeros(shape, jnp.float32), fhat_ctx=jnp.zeros(shape, jnp.float32))

  def _next_fn(self, k, state):
    return flat(resize(state["fhat_ctx"], self.schedule[k], "area"))

  def _predict_fn(self, k, m_params, state, frame_type, x_k, prev_k):
    model = nnx.merge(self.m_def, m_params)
    logits, cache = model.step(state["cache"], k, x_k, frame_type, prev_k)
    return jax.nn.softmax(logits, -1), dict(state, cache=cache)

  def _expect_fn(self, q_params, probs, temperature):
    quantizer = nnx.merge(self.q_def, q_params)
    return jnp.argmax(probs, -1).astype(jnp.int32), expected_codes(probs, quantizer.codebook[...], temperature)

  def _absorb_fn(self, k, q_params, state, tokens_k, codes_k, weight):
    quantizer = nnx.merge(self.q_def, q_params)
    p = self.schedule[k]
    residual = quantizer.scale_residual(k, tokens_k.reshape(-1, p, p))
    fhat_ctx = state["fhat_ctx"] + residual
    ctx_k = dict(fhat=flat(resize(fhat_ctx, p, "area")), tokens=tokens_k)
    pixels = residual if codes_k is None else _residual(quantizer, k, tokens_k, codes_k, weight)
    return dict(state, fhat=state["fhat"] + pixels, fhat_ctx=fhat_ctx), ctx_k

  def init(self, n: int) -> dict:
    return self._init(self.m_params, n)

  def next_input(self, k: int, state: dict) -> jax.Array:
    """Scale k's input of the state's tiles (k >= 1): fhat of scales < k on scale k's grid (N, p_k^2, C)."""
    return self._next(k, state)

  def predict(self, k: int, state: dict, frame_type: int, prev_k: dict | None, x_k: jax.Array | None):
    """Probabilities (N, p_k^2, V) float32 of scale k's tokens, and the state with scale k cached
    (`state` itself is consumed). x_k: scale k's input (`next_input`, in windows where the
    model has a neighbourhood); None for k = 0."""
    n = state["fhat"].shape[0]
    ft = jnp.full((n,), frame_type, jnp.int32)
    return self._predict(k, self.m_params, state, ft, x_k, prev_k if frame_type == P_FRAME else None)

  def absorb(self, k: int, state: dict, tokens_k: jax.Array, codes_k: jax.Array | None = None,
             weight: float = 1.0):
    """Adds scale k's tokens (N, p_k^2) to fhat; returns the state and this frame's context at k
    (`state` itself is consumed). codes_k (N, p_k^2, C): the code vectors the pixels' fhat gets
    instead of the tokens' (a scale completed in expectation), times weight; the context keeps the tokens."""
    return self._absorb(k, self.q_params, state, jnp.asarray(tokens_k, jnp.int32), codes_k, jnp.float32(weight))

  def select(self, probs, mode, key, temperature=1.0, top_k=0, top_p=1.0):
    return self._select(self.probabilities(probs), mode, key, float(temperature), int(top_k), float(top_p))

  def expect(self, probs, temperature=1.0, weight=1.0) -> Expected:
    """Scale tokens completed in expectation (`Expected`) from what `predict` returned."""
    return Expected(*self._expect(self.q_params, self.probabilities(probs), float(temperature)), float(weight))

  def probabilities(self, dist: jax.Array) -> jax.Array:
    """Float probabilities of what `predict` returns (for generative completion)."""
    return dist

  def run(self, n: int, frame_type: int, prev: list[dict] | None,
          choose: Callable[[int, jax.Array], jax.Array], scales: int | None = None,
          tile_batch: int | None = None, grid: tuple[int, int] | None = None):
    """Codes the first `scales` scales (all by default) of one frame.

    choose(k, probs) returns scale k's tokens (N, p_k^2) given their
    probabilities, or an `Expected` (a scale completed in expectation).
    prev: the previous frame's context per scale (as returned here), needed
    for P-frames at every scale coded. tile_batch: run the
    model on at most this many tiles at a time (given its inputs, a tile's
    sequence is independent of the others, so the probabilities are the same;
    the integer path's are identical to the bit). grid: the frame's tiles
    (rows, cols), which a model with a neighbourhood needs (default: one column).
    Returns (fhat (N, n, n, C), context per scale, tokens per scale).
    """
    scales = self.num_scales if scales is None else scales
    grid = (n, 1) if grid is None else tuple(grid)
    if grid[0] * grid[1] != n:
      raise ValueError(f"a grid of {grid[0]} x {grid[1]} tiles does not hold {n} tiles")
    if frame_type not in (I_FRAME, P_FRAME):
      raise ValueError(f"frame type must be I_FRAME or P_FRAME, got {frame_type!r}")
    if not 1 <= scales <= self.num_scales:
      raise ValueError(f"scales must be in 1..{self.num_scales}, got {scales}")
    if frame_type == P_FRAME and (prev is None or len(prev) < scales):
      have = 0 if prev is None else len(prev)
      raise ValueError(f"a P-frame coded to {scales} scales needs as many of the previous frame, got {have}")
    if tile_batch is not None and tile_batch < 1:
      raise ValueError(f"tile_batch must be at least 1, got {tile_batch}")
    step = n if tile_batch is None else tile_batch
    spans = [slice(a, min(a + step, n)) for a in range(0, n, step)]
    states = [self.init(s.stop - s.start) for s in spans]
    ctx, tokens = [], []
    size = self.neighbourhood
    for k in range(scales):
      x_k = prev_k = None
      if k > 0:  # the frame's input at scale k, in windows of the whole frame's map
        parts = [self.next_input(k, st) for st in states]
        x_k = parts[0] if len(spans) == 1 else jnp.concatenate(parts)
        x_k = x_k if size == 1 else self._spread(x_k, grid, size)
      if frame_type == P_FRAME:
        prev_k = prev[k] if size == 1 else dict(prev[k], fhat=self._spread(prev[k]["fhat"], grid, size))
      probs = []
      for i, s in enumerate(spans):
        part = lambda a, s=s: None if a is None else a[s]
        p, states[i] = self.predict(k, states[i], frame_type, jax.tree.map(part, prev_k), part(x_k))
        probs.append(p)
      chosen = choose(k, probs[0] if len(spans) == 1 else jnp.concatenate(probs))
      codes, weight = None, 1.0
      if isinstance(chosen, Expected):
        chosen, codes, weight = chosen
      chosen = jnp.asarray(chosen)
      parts = []
      for i, s in enumerate(spans):
        states[i], ctx_k = self.absorb(k, states[i], chosen[s], None if codes is None else codes[s], weight)
        parts.append(ctx_k)
      ctx_k = parts[0] if len(spans) == 1 else jax.tree.map(lambda *a: jnp.concatenate(a), *parts)
      ctx.append(ctx_k)
      tokens.append(ctx_k["tokens"])
    fhat = states[0]["fhat"] if len(spans) == 1 else jnp.concatenate([st["fhat"] for st in states])
    return fhat, ctx, tokens

  def completer(self, given: Sequence[jax.Array], mode: str, key: jax.Array, temperature: float = 1.0,
                top_k: int = 0, top_p: float = 1.0, weight: float = 1.0) -> Callable[[int, jax.Array], jax.Array]:
    """A `choose` for `run`: the given tokens for the first len(given) scales, then
    generated ones (sample draws with fold_in(key, k), so a decode repeats exactly), or for
    `mean` the expected code vector at `temperature`, its residual times `weight` (the context
    follows the argmax)."""
    if mode not in ("sample", "argmax", "mean"):
      raise ValueError(f"completion mode must be 'sample', 'argmax' or 'mean', got {mode!r}")
    if mode == "mean" and (top_k != 0 or top_p != 1.0):
      raise ValueError("completion mode 'mean' takes a temperature and a weight only, not top_k or top_p")
    if mode != "mean" and weight != 1.0:
      raise ValueError(f"only completion mode 'mean' takes a weight, not {mode!r}")
    if not 0.0 < weight <= 1.0:
      raise ValueError(f"the weight of a mean completion must be in (0, 1], got {weight}")

    def choose(k, probs):
      if k < len(given):
        return given[k]
      if mode == "mean":
        return self.expect(probs, temperature, weight)
      return self.select(probs, mode, jax.random.fold_in(key, k), temperature, top_k, top_p)
    return choose


def _residual(quantizer: MultiScaleQuantizer, k: int, tokens_k: jax.Array, codes_k: jax.Array | None,
              weight: jax.Array) -> jax.Array:
  """Scale k's contribution to the pixels' fhat: from its tokens (N, p^2), or from code vectors (N, p^2, C)
  times weight."""
  p = quantizer.schedule[k]
  if codes_k is None:
    return quantizer.scale_residual(k, tokens_k.reshape(-1, p, p))
  return weight * quantizer.residual_of_codes(k, codes_k.reshape(-1, p, p, codes_k.shape[-1]))


class IntegerFrameSteps(FrameSteps):
  """FrameSteps on the integer path (integer.py): what the codec runs.

  `predict` returns integer weights w (N, p_k^2, V), each row summing to
  2^24 - V; the range coder codes token s with frequency w_s + 1 out of 2^24.
  They come as float32, which holds integers below 2^24 exactly and is the
  coder's input type, so the host copies nothing (codec/entropy.py).
  state = dict(cache=int8 KV cache, fhat=float fhat for the pixels,
  fhat_int=the context's integer fhat). A frame's context for the next frame
  is integer: dict(fhat=fhat_int area-downsampled to scale k, tokens).
  """

  def __init__(self, quantizer: MultiScaleQuantizer, tables: dict, formats: dict):
    self.q_def, self.q_params = nnx.split(quantizer)
    self.tables = jax.tree.map(jnp.asarray, tables)
    self.formats = formats
    self.schedule = tuple(quantizer.schedule)
    self.offsets = tuple(int(x) for x in np.cumsum([0] + [p * p for p in self.schedule]))
    self.neighbourhood = formats.get("neighbourhood", 1)
    self.tile, self.dim = quantizer.tile, quantizer.codebook.shape[1]
    self._init = jax.jit(self._init_fn, static_argnums=1)
    self._next = jax.jit(self._next_fn, static_argnums=0)
    self._predict = jax.jit(self._predict_fn, static_argnums=(0, 1), donate_argnums=3)
    self._absorb = jax.jit(self._absorb_fn, static_argnums=0, donate_argnums=3)
    self._select = jax.jit(select_tokens, static_argnums=(1, 3, 4, 5))
    self._expect = jax.jit(self._expect_fn, static_argnums=2)
    self._spread = jax.jit(neighbourhoods, static_argnums=(1, 2))

  def _context(self, tables):
    return integer.IntegerContext(tables, self.formats, self.schedule)

  def _fhat(self, tables):
    return integer.IntegerFhat(tables, self.formats, self.schedule, self.formats["phi_of_scale"])

  def _init_fn(self, tables, n):
    shape = (n, self.tile, self.tile, self.dim)
    return dict(cache=self._context(tables).init_cache(n), fhat=jnp.zeros(shape, jnp.float32),
                fhat_int=jnp.zeros(shape, jnp.int32))

  def _next_fn(self, k, tables, state):
    return flat(self._fhat(tables).area(state["fhat_int"], self.schedule[k]))

  def next_input(self, k: int, state: dict) -> jax.Array:
    return self._next(k, self.tables, state)

  def _predict_fn(self, k, frame_type, tables, state, x_k, prev_k):
    weights, cache = self._context(tables).step(state["cache"], k, x_k, frame_type, prev_k)
    return weights.astype(jnp.float32), dict(state, cache=cache)

  def _absorb_fn(self, k, q_params, tables, state, tokens_k, codes_k, weight):
    quantizer = nnx.merge(self.q_def, q_params)
    p = self.schedule[k]
    fh = self._fhat(tables)
    fhat_int = state["fhat_int"] + fh.residual(k, tokens_k.reshape(-1, p, p))
    ctx_k = dict(fhat=flat(fh.area(fhat_int, p)), tokens=tokens_k)
    pixels = _residual(quantizer, k, tokens_k, codes_k, weight)
    return dict(state, fhat=state["fhat"] + pixels, fhat_int=fhat_int), ctx_k

  def init(self, n: int) -> dict:
    return self._init(self.tables, n)

  def predict(self, k: int, state: dict, frame_type: int, prev_k: dict | None, x_k: jax.Array | None):
    """Integer weights (N, p_k^2, V) of scale k's tokens as float32, and the state with scale k
    cached (`state` itself is consumed)."""
    return self._predict(k, frame_type, self.tables, state, x_k, prev_k if frame_type == P_FRAME else None)

  def absorb(self, k: int, state: dict, tokens_k: jax.Array, codes_k: jax.Array | None = None,
             weight: float = 1.0):
    return self._absorb(k, self.q_params, self.tables, state, jnp.asarray(tokens_k, jnp.int32), codes_k,
                        jnp.float32(weight))

  def probabilities(self, dist: jax.Array) -> jax.Array:
    return (dist + 1).astype(jnp.float32) / (1 << integer.FREQ_BITS)
