"""Tokenizer: frames of any size to multi-scale token maps and back, gradients, axes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from progvc_jax.configs import tokenizer as tokenizer_config
from progvc_jax.models import tokenizer as tokenizer_lib
from progvc_jax.models.tokenizer import Tokenizer

# The tiny config's shape (downsample 8, 8 x 8 latent tiles) at test width.
SMALL = dict(ch=8, ch_mult=(1, 2, 2, 2), num_res_blocks=1, z_channels=8, using_sa=True,
             norm_groups=4, vocab_size=64, tile=8)


@pytest.fixture(scope="module")
def tok():
  return Tokenizer(**SMALL, rngs=nnx.Rngs(0))


@pytest.mark.slow
@pytest.mark.parametrize("height,width", [(270, 480), (100, 130)])
def test_odd_sizes_encode_and_every_prefix_decodes(tok, height, width):
  graphdef, params = nnx.split(tok)
  x = jax.random.uniform(jax.random.key(0), (1, height, width, 3), minval=-1, maxval=1)
  tokens = jax.jit(lambda p, x: nnx.merge(graphdef, p).encode(x))(params, x)
  rows, cols = tok.tile_grid(height, width)
  assert rows * 64 >= height > (rows - 1) * 64 and cols * 64 >= width > (cols - 1) * 64
  assert [t.shape for t in tokens] == [(1, rows * cols, p, p) for p in tok.schedule]
  assert all(t.dtype == jnp.int32 and int(t.min()) >= 0 and int(t.max()) < 64 for t in tokens)

  decode = jax.jit(lambda p, t: nnx.merge(graphdef, p).decode(t, height, width))
  frames = [decode(params, tokens[:k]) for k in range(1, len(tokens) + 1)]
  for k, frame in enumerate(frames, 1):
    assert frame.shape == (1, height, width, 3), k
    assert float(jnp.abs(frame).max()) <= 1.0
  # Each prefix decodes to its own frame.
  assert float(jnp.abs(frames[0] - frames[-1]).max()) > 0


def test_tiles_round_trip(tok):
  f = jnp.arange(2 * 16 * 24 * 3, dtype=jnp.float32).reshape(2, 16, 24, 3)
  tiles = tok.to_tiles(f)
  assert tiles.shape == (2 * 2 * 3, 8, 8, 3)
  np.testing.assert_array_equal(np.asarray(tiles[1]), np.asarray(f[0, :8, 8:16]))  # row-major tiles
  np.testing.assert_array_equal(np.asarray(tok.from_tiles(tiles, 2, 3)), np.asarray(f))


def test_padding_replicates_edges_and_crops(tok):
  x = jax.random.uniform(jax.random.key(1), (1, 70, 66, 3), minval=-1, maxval=1)
  graphdef, params = nnx.split(tok)
  # A frame and the same frame padded by edge replication give the same tokens.
  padded = jnp.pad(x, ((0, 0), (0, 128 - 70), (0, 128 - 66), (0, 0)), mode="edge")
  enc = jax.jit(lambda p, x: nnx.merge(graphdef, p).encode(x))
  for a, b in zip(enc(params, x), enc(params, padded)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
def test_gradients_reach_encoder_through_straight_through(tok):
  graphdef, params = nnx.split(tok, nnx.Param)[0], nnx.state(tok, nnx.Param)
  x = jax.random.uniform(jax.random.key(2), (2, 64, 64, 3), minval=-1, maxval=1)

  def loss(p):
    rec, aux = nnx.merge(graphdef, p)(x, keep=jnp.array([2, 7]))
    return jnp.mean(jnp.abs(rec - x)) + aux["vq_loss"]

  grads = jax.grad(loss)(params)
  for path in [("encoder", "conv_in", "kernel"), ("quant_conv", "kernel"), ("decoder", "conv_out", "kernel"),
               ("quantizer", "codebook")]:
    g = grads
    for part in path:
      g = g[part]
    assert float(jnp.abs(g[...]).sum()) > 0, path


def test_every_parameter_has_logical_axes(tok):
  specs = nnx.to_flat_state(nnx.get_partition_spec(nnx.state(tok, nnx.Param)))
  params = dict(nnx.to_flat_state(nnx.state(tok, nnx.Param)))
  for path, spec in specs:
    axes = tuple(spec.get_value())
    assert len(axes) == params[path].ndim, path
    assert any(a is not None for a in axes), path


@pytest.mark.parametrize("variant", ["tiny", "default", "base", "large", "var_f16"])
def test_config_variants_build(variant):
  config = tokenizer_config.get_config(variant)
  shapes = nnx.eval_shape(lambda: Tokenizer(**config.model, rngs=nnx.Rngs(0)))
  assert shapes.downsample == (8 if variant in ("tiny", "default") else 16)
  assert shapes.schedule[-1] == config.model.tile
  with pytest.raises(ValueError, match="unknown tokenizer variant"):
    tokenizer_config.get_config("huge")


def test_space_to_depth_folds_blocks_and_inverts():
  x = jnp.arange(2 * 4 * 6 * 3, dtype=jnp.float32).reshape(2, 4, 6, 3)
  y = tokenizer_lib.space_to_depth(x, 2)
  assert y.shape == (2, 2, 3, 12)
  # Channels of output pixel (i, j) are the 2 x 2 block at (2i, 2j), row-major, each pixel's RGB.
  np.testing.assert_array_equal(np.asarray(y[1, 1, 2]), np.asarray(x[1, 2:4, 4:6].reshape(-1)))
  np.testing.assert_array_equal(np.asarray(tokenizer_lib.depth_to_space(y, 2)), np.asarray(x))
  assert tokenizer_lib.space_to_depth(x, 1) is x


@pytest.mark.slow
def test_patch_tokenizer_has_no_full_resolution_conv(monkeypatch):
  """patch=4 with two levels is a downsample-8 tokenizer whose convs all run at 1/4 resolution or below."""
  tok = Tokenizer(**dict(SMALL, ch_mult=(1, 2), using_sa=False, patch=4, schedule=(1, 2, 4, 8)),
                  rngs=nnx.Rngs(0))
  assert tok.downsample == 8 and tok.pixel_tile == 64 and tok.schedule == (1, 2, 4, 8)
  assert tok.encoder.conv_in.kernel.shape[-2] == 48 and tok.decoder.conv_out.kernel.shape[-1] == 48
  graphdef, params = nnx.split(tok)
  x = jax.random.uniform(jax.random.key(3), (1, 70, 100, 3), minval=-1, maxval=1)
  seen = []
  orig = tokenizer_lib.layers.Conv.__call__

  def spy(self, h):
    seen.append(h.shape[1])
    return orig(self, h)

  monkeypatch.setattr(tokenizer_lib.layers.Conv, "__call__", spy)
  rec, _ = nnx.merge(graphdef, params)(x)
  monkeypatch.undo()
  assert rec.shape == x.shape and max(seen) == 128 // 4
  tokens = tok.encode(x)
  assert [t.shape for t in tokens] == [(1, 2 * 2, p, p) for p in (1, 2, 4, 8)]
  assert tok.decode(tokens[:2], 70, 100).shape == (1, 70, 100, 3)
  with pytest.raises(ValueError, match="patch must be at least 1"):
    Tokenizer(**dict(SMALL, patch=0), rngs=nnx.Rngs(0))
