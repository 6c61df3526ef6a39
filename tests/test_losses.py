"""Tests of progvc_jax.losses on real images and constructed inputs."""

import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import skimage.data
from PIL import Image

from progvc_jax import losses
from progvc_jax.data import pipeline

# Jitted once here: op-by-op execution of the 5-scale pyramid is ~20x slower.
ms_ssim = jax.jit(losses.ms_ssim)


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, format="JPEG", quality=quality, subsampling=2)
  return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def _box_blur3(img: np.ndarray) -> np.ndarray:
  f = np.pad(img.astype(np.float64), ((1, 1), (1, 1), (0, 0)), mode="edge")
  h, w = img.shape[:2]
  s = sum(f[i:i + h, j:j + w] for i in range(3) for j in range(3))
  return np.round(s / 9).astype(np.uint8)


def _to_model(*imgs: np.ndarray) -> jax.Array:
  return jnp.asarray(np.stack(imgs), jnp.float32) / 127.5 - 1.0


def _astronaut():
  return skimage.data.astronaut()[:256, 128:384]


# Reference MS-SSIM values, computed once with tensorflow 2.21's
# tf.image.ssim_multiscale(x, y, max_val=255.0) (defaults: filter 11, sigma 1.5,
# k1 0.01, k2 0.03, the five standard weights) on these uint8 images cast to
# float64. ms_ssim shifts [-1, 1] inputs to [0, 2], the same images up to scale.
MS_SSIM_REFERENCES = [
    # astronaut 256x256 crop vs its PIL JPEG at quality 10, 4:2:0.
    (_astronaut, lambda a: _jpeg(a, 10), 0.9293130040168762),
    # chelsea 256x256 crop vs a 3x3 box blur (edge padded, rounded to uint8).
    (lambda: skimage.data.chelsea()[:256, 100:356], _box_blur3, 0.9791815876960754),
    # coffee 181x227 crop (odd sizes: mirror padding before pooling) vs JPEG quality 20.
    (lambda: skimage.data.coffee()[100:281, 150:377], lambda a: _jpeg(a, 20), 0.9498071670532227),
]


def test_l1():
  x = jnp.zeros((2, 4, 4, 3))
  y = x.at[0].set(1.0).at[1].set(-3.0)
  np.testing.assert_allclose(losses.l1(x, y), 2.0)


def test_chroma_l1_sees_colour_and_not_luma():
  x = _to_model(_astronaut())
  # A change of brightness alone (the same shift on R, G and B) is no colour difference.
  np.testing.assert_allclose(losses.chroma_l1(x, x + 0.2), 0.0, atol=1e-6)
  # A hue turned with luma kept is one, and the larger the turn the larger it is.
  turned = [_to_model(pipeline.recolour(_astronaut()[None], np.deg2rad(t), 1.0)[0]) for t in (30, 120)]
  small, large = (float(losses.chroma_l1(x, t)) for t in turned)
  assert 0.02 < small < large
  # The value: mean |delta Cb| and |delta Cr| of a red shift of 0.4 on R alone.
  np.testing.assert_allclose(losses.chroma_l1(x, x.at[..., 0].add(0.4)), 0.4 * (0.168736 + 0.5) / 2,
                             rtol=1e-5)


def test_ms_ssim_identical_is_one():
  x = _to_model(_astronaut(), _astronaut()[::-1])
  out = ms_ssim(x, x)
  assert out.shape == (2,)
  np.testing.assert_allclose(out, 1.0, atol=1e-6)


@pytest.mark.parametrize("index", range(len(MS_SSIM_REFERENCES)))
def test_ms_ssim_matches_tensorflow_reference(index):
  load, distort, expected = MS_SSIM_REFERENCES[index]
  img = load()
  out = ms_ssim(_to_model(img), _to_model(distort(img)))
  np.testing.assert_allclose(out, [expected], atol=1e-4)


def test_ms_ssim_is_per_image_in_a_batch():
  a, c = _astronaut(), skimage.data.chelsea()[:256, 100:356]
  out = ms_ssim(_to_model(a, c), _to_model(_jpeg(a, 10), _box_blur3(c)))
  np.testing.assert_allclose(out, [MS_SSIM_REFERENCES[0][2], MS_SSIM_REFERENCES[1][2]], atol=1e-4)


def test_ms_ssim_decreases_with_noise():
  x = _to_model(_astronaut())
  noise = jax.random.normal(jax.random.key(0), x.shape)
  values = [float(ms_ssim(x, jnp.clip(x + s * noise, -1, 1))[0]) for s in (0.02, 0.05, 0.1, 0.2, 0.4)]
  assert all(a > b for a, b in zip(values, values[1:])), values
  assert 0.9 < values[0] < 1.0 and values[-1] < 0.7, values


def test_ms_ssim_gradient_is_finite_and_nonzero():
  a = _astronaut()
  x, y = _to_model(a), _to_model(_jpeg(a, 10))
  g = jax.jit(jax.grad(lambda x: 1.0 - losses.ms_ssim(x, y).mean()))(x)
  assert bool(jnp.isfinite(g).all())
  assert float(jnp.abs(g).max()) > 0
  # Anti-correlated images drive every contrast-structure term negative: the
  # clipped terms must give zero, not NaN, gradients.
  g = jax.jit(jax.grad(lambda x: 1.0 - losses.ms_ssim(x, -x).mean()))(x)
  assert bool(jnp.isfinite(g).all())


def test_ms_ssim_rejects_small_images():
  assert losses.ms_ssim_min_size() == 161
  x = jnp.zeros((1, 161, 161, 3))
  np.testing.assert_allclose(ms_ssim(x, x), 1.0, atol=1e-6)
  x = jnp.zeros((1, 160, 200, 3))
  with pytest.raises(ValueError, match="at least 161x161"):
    ms_ssim(x, x)


def test_hinge_losses():
  real = jnp.array([2.0, 0.5, -1.0, 0.0])  # relu(1 - real) = 0, 0.5, 2, 1 -> mean 0.875
  fake = jnp.array([-2.0, 0.5, 1.0, -0.5])  # relu(1 + fake) = 0, 1.5, 2, 0.5 -> mean 1.0
  np.testing.assert_allclose(losses.hinge_d_loss(real, fake), 0.5 * (0.875 + 1.0))
  np.testing.assert_allclose(losses.hinge_g_loss(fake), 0.25)
  # A discriminator confident beyond the margin has zero loss.
  np.testing.assert_allclose(losses.hinge_d_loss(jnp.full(3, 1.5), jnp.full(3, -1.5)), 0.0)


def test_adaptive_gan_weight():
  np.testing.assert_allclose(losses.adaptive_gan_weight(3.0, 1.5), 3.0 / (1.5 + 1e-4), rtol=1e-6)
  np.testing.assert_allclose(losses.adaptive_gan_weight(3.0, 0.0), 1e4)
  np.testing.assert_allclose(losses.adaptive_gan_weight(3.0, 0.0, max_weight=50.0), 50.0)
  # No gradient flows into either norm.
  g = jax.grad(lambda a, b: losses.adaptive_gan_weight(a, b), argnums=(0, 1))(2.0, 1.0)
  assert g == (0.0, 0.0)


def test_gan_start_factor():
  f = jax.jit(losses.gan_start_factor)
  assert [float(f(s, 100)) for s in (0, 99, 100, 5000)] == [0.0, 0.0, 1.0, 1.0]


@pytest.fixture(scope="module")
def lpips_weights():
  """Random He-initialised weights in the documented LPIPS layout."""
  rng = np.random.default_rng(0)
  out = {}
  for key, shape in losses.lpips_weight_shapes().items():
    if key.startswith("lin"):
      out[key] = rng.uniform(0, 1, shape).astype(np.float32)
    elif key.endswith("bias"):
      out[key] = rng.normal(0, 0.01, shape).astype(np.float32)
    else:
      out[key] = (rng.normal(size=shape) * np.sqrt(2 / np.prod(shape[:3]))).astype(np.float32)
  return out


def test_lpips_weight_layout():
  shapes = losses.lpips_weight_shapes()
  assert len(shapes) == 13 * 2 + 5
  assert shapes["conv1_1.kernel"] == (3, 3, 3, 64)
  assert shapes["conv5_3.kernel"] == (3, 3, 512, 512)
  assert [shapes[f"lin{k}.kernel"] for k in range(5)] == [(64,), (128,), (256,), (512,), (512,)]
  # VGG16's 14.7M feature parameters.
  assert sum(int(np.prod(s)) for k, s in shapes.items() if k.startswith("conv")) == 14_714_688


def test_lpips_distance(tmp_path, lpips_weights):
  path = tmp_path / "lpips_vgg.npz"
  np.savez(path, **lpips_weights)
  lpips = losses.lpips_from_config(str(path))
  x = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3), minval=-1, maxval=1)
  y = jnp.clip(x + 0.3 * jax.random.normal(jax.random.key(2), x.shape), -1, 1)
  d_xx, d_xy, d_yx = lpips(x, x), lpips(x, y), lpips(y, x)
  assert d_xy.shape == (2,)
  np.testing.assert_allclose(d_xx, 0.0, atol=1e-6)
  assert bool((d_xy > 1e-3).all())
  np.testing.assert_allclose(d_xy, d_yx, rtol=1e-5)
  g = jax.jit(jax.grad(lambda p, y: losses.lpips_distance(p, x, y).sum(), argnums=1))(lpips.params, y)
  assert bool(jnp.isfinite(g).all()) and float(jnp.abs(g).max()) > 0


def test_lpips_bad_files(tmp_path, lpips_weights):
  missing = tmp_path / "nope.npz"
  with pytest.raises(FileNotFoundError, match="nope.npz"):
    losses.load_lpips(str(missing))

  no_key = tmp_path / "no_key.npz"
  np.savez(no_key, **{k: v for k, v in lpips_weights.items() if k != "lin3.kernel"})
  with pytest.raises(ValueError, match=r"no_key\.npz.*'lin3\.kernel'"):
    losses.load_lpips(str(no_key))

  bad_shape = tmp_path / "bad_shape.npz"
  np.savez(bad_shape, **{**lpips_weights, "conv2_1.kernel": np.zeros((3, 3, 128, 64), np.float32)})
  with pytest.raises(ValueError, match=r"bad_shape\.npz.*'conv2_1\.kernel'.*\(3, 3, 64, 128\)"):
    losses.load_lpips(str(bad_shape))

  not_npz = tmp_path / "not_npz.npz"
  not_npz.write_bytes(b"this is not a zip file")
  with pytest.raises(ValueError, match="not_npz.npz"):
    losses.load_lpips(str(not_npz))

  pickled = tmp_path / "pickled.npz"
  np.savez(pickled, **{"conv1_1.kernel": np.array([{"a": 1}], dtype=object)})
  with pytest.raises(ValueError, match="pickled.npz"):
    losses.load_lpips(str(pickled))


def test_lpips_off_without_path(caplog):
  with caplog.at_level("INFO"):
    assert losses.lpips_from_config(None) is None
    assert losses.lpips_from_config("") is None
  assert "LPIPS term off: no weights file given" in caplog.text
