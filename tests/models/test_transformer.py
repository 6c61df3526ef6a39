"""The context model: block-causal mask, temporal context, KV cache, completion, fitting."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from progvc_jax.models import progressive as pg
from progvc_jax.models.quantizer import MultiScaleQuantizer
from progvc_jax.models.transformer import I_FRAME, P_FRAME, ContextModel

V, C, N = 64, 8, 3


@pytest.fixture(scope="module")
def quantizer():
  return MultiScaleQuantizer(vocab_size=V, dim=C, tile=4, rngs=nnx.Rngs(0))  # scales (1, 2, 3, 4)


def make_model(quantizer, context, seed=1, neighbourhood=1, copy_prev=False):
  m = ContextModel(vocab_size=V, latent_dim=C, schedule=quantizer.schedule, width=32, depth=2, heads=2,
                   context=context, neighbourhood=neighbourhood, copy_prev=copy_prev, rngs=nnx.Rngs(seed))
  # adaLN-Zero starts every block as the identity; perturb all weights so each path matters.
  state = nnx.state(m, nnx.Param)
  leaves, tree = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  nnx.update(m, jax.tree.unflatten(tree, [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]))
  return m


def random_tokens(quantizer, seed, n=N):
  rng = np.random.default_rng(seed)
  return [jnp.asarray(rng.integers(0, V, (n, p, p)), jnp.int32) for p in quantizer.schedule]


def logits_of(model, quantizer, tokens, prev_tokens, frame_type, grid=None):
  """Teacher-forced logits of tiles laid out as grid (rows, cols; used with a neighbourhood)."""
  x_next, _ = pg.teacher_inputs(quantizer, tokens, grid, model.neighbourhood)
  _, prev = pg.teacher_inputs(quantizer, prev_tokens)
  prev = pg.windowed(prev, model.schedule, grid, model.neighbourhood)
  return np.asarray(model(x_next, jnp.full((tokens[0].shape[0],), frame_type), prev))


def scale_slice(model, k):
  return slice(model.offsets[k], model.offsets[k + 1])


@pytest.mark.parametrize("context", ["additive", "cross"])
def test_block_causal_mask_and_truncation_safe_context(quantizer, context):
  model = make_model(quantizer, context)
  cur, prev = random_tokens(quantizer, 0), random_tokens(quantizer, 1)
  base = logits_of(model, quantizer, cur, prev, P_FRAME)
  for k in range(model.num_scales - 1):
    changed = list(cur)
    changed[k + 1] = (changed[k + 1] + 1) % V  # the current frame's scale k+2 ...
    other = logits_of(model, quantizer, changed, prev, P_FRAME)
    upto = model.offsets[k + 2]  # ... is input to scales > k+2 only
    np.testing.assert_allclose(other[:, :upto], base[:, :upto], atol=1e-6, rtol=0)
    if k + 2 < model.num_scales:
      assert np.abs(other[:, upto:] - base[:, upto:]).max() > 1e-3

    changed = list(prev)
    changed[k + 1] = (changed[k + 1] + 1) % V  # the previous frame's scale k+2 ...
    other = logits_of(model, quantizer, cur, changed, P_FRAME)
    upto = model.offsets[k + 1]  # ... is context of scales >= k+2 only
    np.testing.assert_allclose(other[:, :upto], base[:, :upto], atol=1e-6, rtol=0)
    assert np.abs(other[:, upto:] - base[:, upto:]).max() > 1e-3
  # I-frames ignore the previous frame.
  i_base = logits_of(model, quantizer, cur, prev, I_FRAME)
  i_other = logits_of(model, quantizer, cur, random_tokens(quantizer, 2), I_FRAME)
  np.testing.assert_allclose(i_other, i_base, atol=1e-6, rtol=0)
  assert np.abs(i_base - base).max() > 1e-3  # and are conditioned differently


@pytest.mark.parametrize("context,neighbourhood,tile_batch,grid,copy_prev", [
    ("additive", 1, None, None, False), ("cross", 1, None, None, True), ("additive", 3, 4, (2, 3), True)])
def test_kv_cached_steps_agree_with_teacher_forcing(quantizer, context, neighbourhood, tile_batch, grid, copy_prev):
  model = make_model(quantizer, context, neighbourhood=neighbourhood, copy_prev=copy_prev)
  steps = pg.FrameSteps(quantizer, model)
  n = N if grid is None else grid[0] * grid[1]
  cur, prev_tokens = random_tokens(quantizer, 3, n), random_tokens(quantizer, 4, n)
  _, prev_ctx = pg.teacher_inputs(quantizer, prev_tokens)
  prev = [pg.context_at(prev_ctx, model, k) for k in range(model.num_scales)]
  given = [t.reshape(n, -1) for t in cur]
  for frame_type in (I_FRAME, P_FRAME):
    probs = []
    fhat, ctx, tokens = steps.run(n, frame_type, prev, lambda k, p: probs.append(p) or given[k],
                                  tile_batch=tile_batch, grid=grid)
    full = jax.nn.softmax(logits_of(model, quantizer, cur, prev_tokens, frame_type, grid), -1)
    np.testing.assert_allclose(np.concatenate(probs, 1), full, atol=1e-5, rtol=0)
    np.testing.assert_allclose(fhat, quantizer.decode(cur), atol=1e-5)
    _, own = pg.teacher_inputs(quantizer, cur)
    np.testing.assert_allclose(jnp.concatenate([c["fhat"] for c in ctx], 1), own["fhat"], atol=1e-5)
    np.testing.assert_array_equal(jnp.concatenate(tokens, 1), own["tokens"])


@pytest.mark.parametrize("context", ["additive", "cross"])
def test_truncated_previous_frame_gives_identical_probabilities(quantizer, context):
  """A stream cut to K' scales: what frame t's scales <= K' see is bit-identical."""
  model = make_model(quantizer, context)
  steps = pg.FrameSteps(quantizer, model)
  cur = [t.reshape(N, -1) for t in random_tokens(quantizer, 5)]
  prev = [t.reshape(N, -1) for t in random_tokens(quantizer, 6)]
  cut = 2
  for k_prime in (1, cut):
    other = prev[:k_prime] + [(t * 7 + 3) % V for t in prev[k_prime:]]
    outs = []
    for p_tokens in (prev, other):
      _, p_ctx, _ = steps.run(N, I_FRAME, None, lambda k, _, p=p_tokens: p[k])
      probs = []
      steps.run(N, P_FRAME, p_ctx[:k_prime], lambda k, p: probs.append(np.asarray(p)) or cur[k], scales=k_prime)
      outs.append(probs)
    for a, b in zip(*outs):
      np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match="needs as many of the previous frame"):
    steps.run(N, P_FRAME, p_ctx[:1], lambda k, p: cur[k], scales=2)


def test_select_tokens():
  logits = jax.random.normal(jax.random.key(0), (4, 5, 16)) * 2
  probs = jax.nn.softmax(logits, -1)
  best = np.asarray(jnp.argmax(probs, -1))
  np.testing.assert_array_equal(pg.select_tokens(probs, "argmax", None), best)
  key = jax.random.key(1)
  a = pg.select_tokens(probs, "sample", key)
  np.testing.assert_array_equal(a, pg.select_tokens(probs, "sample", key))  # seeded: repeatable
  np.testing.assert_array_equal(pg.select_tokens(probs, "sample", key, top_k=1), best)
  np.testing.assert_array_equal(pg.select_tokens(probs, "sample", key, top_p=1e-6), best)
  # top-p 0.5 keeps exactly the codes needed to reach half of the mass.
  draws = np.stack([np.asarray(pg.select_tokens(probs, "sample", jax.random.key(s), top_p=0.5)) for s in range(64)])
  p = np.asarray(probs)
  for i in range(4):
    for j in range(5):
      order = np.argsort(-p[i, j])
      need = int(np.searchsorted(np.cumsum(p[i, j][order]), 0.5) + 1)
      assert set(draws[:, i, j]) <= set(order[:need].tolist())
  # Frequencies follow the probabilities.
  one = jax.nn.softmax(jnp.array([[[0.0, 1.0, 2.0]]]), -1)
  many = jax.vmap(lambda k: pg.select_tokens(one, "sample", k))(jax.random.split(jax.random.key(2), 4000))
  freq = np.bincount(np.asarray(many).ravel(), minlength=3) / 4000
  np.testing.assert_allclose(freq, np.asarray(one).ravel(), atol=0.03)
  # A low temperature sharpens towards argmax.
  cold = jax.vmap(lambda k: pg.select_tokens(one, "sample", k, temperature=0.05))(jax.random.split(jax.random.key(3), 200))
  assert np.mean(np.asarray(cold) == 2) > 0.99
  with pytest.raises(ValueError, match="completion mode"):
    pg.select_tokens(probs, "greedy", key)


def test_generative_completion_keeps_given_scales_and_repeats(quantizer):
  model = make_model(quantizer, "additive")
  steps = pg.FrameSteps(quantizer, model)
  given = [t.reshape(N, -1) for t in random_tokens(quantizer, 7)][:2]
  runs = {}
  for name, mode, seed in (("a", "sample", 0), ("b", "sample", 0), ("c", "sample", 1), ("arg", "argmax", 0)):
    _, _, tokens = steps.run(N, I_FRAME, None, steps.completer(given, mode, jax.random.key(seed)))
    runs[name] = [np.asarray(t) for t in tokens]
  for r in runs.values():
    assert len(r) == quantizer.num_scales
    for k in range(2):
      np.testing.assert_array_equal(r[k], given[k])
  for x, y in zip(runs["a"], runs["b"]):
    np.testing.assert_array_equal(x, y)
  assert any((x != y).any() for x, y in zip(runs["a"][2:], runs["c"][2:]))
  # argmax completion picks the most probable code at every generated scale.
  probs = []
  steps.run(N, I_FRAME, None, lambda k, p: probs.append(p) or jnp.asarray(runs["arg"][k]))
  for k in range(2, quantizer.num_scales):
    np.testing.assert_array_equal(runs["arg"][k], np.argmax(probs[k], -1))
  with pytest.raises(ValueError, match="completion mode"):
    steps.completer(given, "none", jax.random.key(0))


def test_mean_completion_follows_the_argmax_and_renders_the_expected_code(quantizer):
  """`mean`: the context model sees the argmax tokens (the same tokens and context as argmax), the
  pixels' fhat gets the expected code vector of every generated scale."""
  model = make_model(quantizer, "additive")
  steps = pg.FrameSteps(quantizer, model)
  given = [t.reshape(N, -1) for t in random_tokens(quantizer, 7)][:2]
  fhat_a, ctx_a, tok_a = steps.run(N, I_FRAME, None, steps.completer(given, "argmax", jax.random.key(0)))
  probs = []
  fill = steps.completer(given, "mean", jax.random.key(0), temperature=0.8)
  fhat_m, ctx_m, tok_m = steps.run(N, I_FRAME, None, lambda k, p: probs.append(p) or fill(k, p))
  for a, m in zip(ctx_a, ctx_m):
    for name in ("fhat", "tokens"):
      np.testing.assert_array_equal(a[name], m[name])
  # The pixels: the given scales' residuals plus each generated scale's residual of its mean code.
  fhat = quantizer.decode([t.reshape(N, p, p) for t, p in zip(given, quantizer.schedule)])
  for k in range(2, quantizer.num_scales):
    w = np.asarray(probs[k], np.float64) ** (1 / 0.8)
    mean = (w / w.sum(-1, keepdims=True)) @ np.asarray(quantizer.codebook[...], np.float64)
    p = quantizer.schedule[k]
    fhat = fhat + quantizer.residual_of_codes(k, jnp.asarray(mean, jnp.float32).reshape(N, p, p, C))
  np.testing.assert_allclose(fhat_m, fhat, atol=1e-5)
  assert np.abs(np.asarray(fhat_m) - np.asarray(fhat_a)).max() > 1e-3
  # The residual is affine in the code vectors, so that of the mean code is the mean residual;
  # a one-hot distribution gives the token's own residual.
  k, p = 3, quantizer.schedule[3]
  h1, h2 = (quantizer.codebook[...][t] for t in random_tokens(quantizer, 8)[3:] + random_tokens(quantizer, 9)[3:])
  np.testing.assert_allclose(quantizer.residual_of_codes(k, 0.3 * h1 + 0.7 * h2),
                             0.3 * quantizer.residual_of_codes(k, h1) + 0.7 * quantizer.residual_of_codes(k, h2),
                             atol=1e-5)
  one_hot = jax.nn.one_hot(tok_a[k], V)
  np.testing.assert_array_equal(pg.expected_codes(one_hot, quantizer.codebook[...]).reshape(N, p, p, C),
                                quantizer.codebook[...][tok_a[k].reshape(N, p, p)])
  # A weight w gives the generated scales w times their expected residual; the context stays the argmax's.
  fhat_w, ctx_w, _ = steps.run(N, I_FRAME, None, steps.completer(given, "mean", jax.random.key(0), 0.8, weight=0.25))
  for a, m in zip(ctx_a, ctx_w):
    np.testing.assert_array_equal(a["tokens"], m["tokens"])
  given_fhat = np.asarray(quantizer.decode([t.reshape(N, p, p) for t, p in zip(given, quantizer.schedule)]))
  np.testing.assert_allclose(fhat_w, given_fhat + 0.25 * (np.asarray(fhat_m) - given_fhat), atol=1e-5)
  for kwargs, message in (({"top_k": 4}, "temperature and a weight only"), ({"weight": 0.0}, r"in \(0, 1\]"),
                          ({"weight": 1.5}, r"in \(0, 1\]")):
    with pytest.raises(ValueError, match=message):
      steps.completer(given, "mean", jax.random.key(0), **kwargs)
  with pytest.raises(ValueError, match="only completion mode 'mean' takes a weight"):
    steps.completer(given, "argmax", jax.random.key(0), weight=0.5)


@pytest.mark.slow
def test_tiny_model_fits_toy_tokens(quantizer):
  """A learnable toy source: each I-frame tile is one of 4 fixed token stacks, and a
  P-frame repeats its previous frame except for a few random tokens. Bits per
  token must fall far below log2 V = 6."""
  rng = np.random.default_rng(0)
  stacks = [[rng.integers(0, V, (p, p)) for p in quantizer.schedule] for _ in range(4)]
  model = ContextModel(vocab_size=V, latent_dim=C, schedule=quantizer.schedule, width=64, depth=2, heads=2,
                       rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model)
  tx = optax.adam(3e-3)
  opt = tx.init(params)

  def batch(seed):
    r = np.random.default_rng(seed)
    ids = r.integers(0, 4, 16)
    prev = [jnp.asarray(np.stack([stacks[i][k] for i in ids]), jnp.int32) for k in range(len(stacks[0]))]
    flips = [r.random(t.shape) < 0.05 for t in prev]
    cur = [jnp.where(f, r.integers(0, V, t.shape), t) for f, t in zip(flips, prev)]
    cur = [jnp.concatenate([p[:8], c[8:]]) for p, c in zip(prev, cur)]  # 8 I-frame rows, 8 P-frame rows
    x_next, ctx = pg.teacher_inputs(quantizer, cur)
    _, prev_ctx = pg.teacher_inputs(quantizer, prev)
    frame_type = jnp.asarray([I_FRAME] * 8 + [P_FRAME] * 8)
    return x_next, frame_type, prev_ctx, ctx["tokens"]

  @jax.jit
  def step(params, opt, x_next, frame_type, prev, targets):
    def loss(p):
      logp = jax.nn.log_softmax(nnx.merge(graphdef, p)(x_next, frame_type, prev), -1)
      bits = -jnp.take_along_axis(logp, targets[..., None], -1)[..., 0] / np.log(2)
      return bits.mean(), bits
    (l, bits), g = jax.value_and_grad(loss, has_aux=True)(params)
    up, opt = tx.update(g, opt)
    return optax.apply_updates(params, up), opt, bits

  for i in range(300):
    params, opt, bits = step(params, opt, *batch(i))
  bits = np.asarray(bits)
  bits_i, bits_p = bits[:8].mean(), bits[8:].mean()
  assert bits_i < 0.5, bits_i  # the 4 stacks are memorised (2 bits for the first token)
  # P-frames: 5% of tokens are fresh (6 bits each); copying the rest is nearly free.
  assert bits_p < 0.3 * np.log2(V), bits_p
