"""Spatial context across tiles: windows of the frame's map, causal scale by scale, exact on integers."""

import types

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from progvc_jax import quantize
from progvc_jax.models import integer_reference as ref
from progvc_jax.models import progressive as pg
from progvc_jax.models.quantizer import MultiScaleQuantizer
from progvc_jax.models.transformer import I_FRAME, P_FRAME
from tests.models.test_transformer import logits_of as teacher_logits
from tests.models.test_transformer import make_model
from tests.models.test_transformer import random_tokens as tokens_of

V, C = 64, 8
GRID = (2, 3)  # rows, cols of tiles in a frame
N = GRID[0] * GRID[1]


@pytest.fixture(scope="module")
def quantizer():
  return MultiScaleQuantizer(vocab_size=V, dim=C, tile=4, rngs=nnx.Rngs(0))  # scales (1, 2, 3, 4)


@pytest.fixture(scope="module")
def model(quantizer):
  return make_model(quantizer, "additive", neighbourhood=3, copy_prev=True)


def random_tokens(quantizer, seed):
  return tokens_of(quantizer, seed, N)


def logits_of(model, quantizer, tokens, prev_tokens, frame_type):
  return teacher_logits(model, quantizer, tokens, prev_tokens, frame_type, GRID)


@pytest.mark.parametrize("size,p", [(3, 2), (5, 3), (3, 1)])
def test_windows_are_the_frames_neighbourhoods(size, p):
  frames, (rows, cols) = 2, GRID
  x = np.random.default_rng(size).integers(-50, 50, (frames * N, p * p, 2))
  img = np.zeros((frames, rows * p, cols * p, 2), np.int64)  # the frames' maps, built by hand
  for t in range(frames * N):
    f, r, c = t // N, (t % N) // cols, t % cols
    img[f, r * p:(r + 1) * p, c * p:(c + 1) * p] = x[t].reshape(p, p, 2)
  got = ref.neighbourhoods(x, GRID, size)
  r0 = size // 2
  for t in range(frames * N):
    f, r, c = t // N, (t % N) // cols, t % cols
    for i in range(p):
      for j in range(p):
        for w in range(size * size):
          y, z = r * p + i + w // size - r0, c * p + j + w % size - r0
          inside = 0 <= y < rows * p and 0 <= z < cols * p
          np.testing.assert_array_equal(got[t, i * p + j, w], img[f, y, z] if inside else 0)
  np.testing.assert_array_equal(pg.neighbourhoods(jnp.asarray(x, jnp.int32), GRID, size), got)


def test_a_tile_sees_its_neighbours_coarser_scales_and_nothing_finer(model, quantizer):
  cur, prev = random_tokens(quantizer, 0), random_tokens(quantizer, 1)
  base = logits_of(model, quantizer, cur, prev, P_FRAME)
  near, far = 1, 2  # tile 0 is at (0, 0): tile 1 at (0, 1) is its neighbour, tile 2 at (0, 2) is not
  for k in range(model.num_scales - 1):
    changed = list(cur)
    changed[k] = changed[k].at[0].set((changed[k][0] + 1) % V)  # tile 0's scale k+1 ...
    other = logits_of(model, quantizer, changed, prev, P_FRAME)
    upto = model.offsets[k + 1]  # ... is input to scales > k+1 only, ...
    np.testing.assert_allclose(other[:, :upto], base[:, :upto], atol=1e-6, rtol=0)
    assert np.abs(other[near, upto:] - base[near, upto:]).max() > 1e-3  # of the tile's neighbours ...
    np.testing.assert_allclose(other[far], base[far], atol=1e-6, rtol=0)  # ... and only theirs

    changed = list(prev)
    changed[k] = changed[k].at[0].set((changed[k][0] + 1) % V)  # the previous frame's tile 0, scale k+1, ...
    other = logits_of(model, quantizer, cur, changed, P_FRAME)
    upto = model.offsets[k]  # ... is context of scales >= k+1, around tile 0
    np.testing.assert_allclose(other[:, :upto], base[:, :upto], atol=1e-6, rtol=0)
    assert np.abs(other[near, upto:] - base[near, upto:]).max() > 1e-3
    np.testing.assert_allclose(other[far], base[far], atol=1e-6, rtol=0)


def test_a_grid_must_hold_the_tiles(model, quantizer):
  steps = pg.FrameSteps(quantizer, model)
  with pytest.raises(ValueError, match="does not hold"):
    steps.run(N, I_FRAME, None, lambda k, p: None, grid=(2, 2))


def test_integer_path_matches_the_reference_with_windows(model, quantizer):
  clip = [random_tokens(quantizer, s) for s in (5, 6, 7)]
  batches = [(clip[t], np.full((N,), min(t, 1), np.int32), clip[t - 1] if t else None, GRID) for t in range(3)]
  tables, formats = quantize.integer_model(types.SimpleNamespace(quantizer=quantizer), model,
                                           quantize.calibrate(quantizer, model, batches))
  assert formats["neighbourhood"] == 3 and tables["embed_in"]["kernel"].shape == (9, C, model.width)
  assert formats["copy_prev"] and tables["head"]["P"]["kernel"].shape == (model.width, V + 1)
  steps = pg.IntegerFrameSteps(quantizer, tables, formats)
  for tile_batch in (None, 4):
    prev = None
    for t, tokens in enumerate(clip):
      got = []
      flat = [m.reshape(N, -1) for m in tokens]
      _, prev, _ = steps.run(N, min(t, 1), prev, lambda k, w: got.append(np.asarray(w)) or flat[k],
                             tile_batch=tile_batch, grid=GRID)
      want = ref.frame_weights(tables, formats, [np.asarray(m) for m in tokens], min(t, 1),
                               [np.asarray(m) for m in clip[t - 1]] if t else None, grid=GRID)
      np.testing.assert_array_equal(np.concatenate(got, 1), want)
