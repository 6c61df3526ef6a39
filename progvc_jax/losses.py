"""Training losses of the tokenizer stage: L1, chroma L1, MS-SSIM, hinge GAN, LPIPS.

Everything is a pure JAX function of arrays, so the trainer can jit and
differentiate it. Images are NHWC in [-1, 1]. LPIPS is optional: its network
weights are read from a .npz file the user names; nothing is downloaded.
"""

import os

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from progvc_jax import colourspace

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def l1(x: jax.Array, y: jax.Array) -> jax.Array:
  return jnp.mean(jnp.abs(x.astype(jnp.float32) - y.astype(jnp.float32)))


def chroma_l1(x: jax.Array, y: jax.Array) -> jax.Array:
  """Mean absolute difference of x and y (NHWC, RGB) on BT.601's two colour-difference axes, Cb and Cr.

  Luma does not enter: the term asks for colour alone. A tokenizer trained on
  L1 in RGB can keep colour along one axis only (the one its latent spends
  most on) and still score well, as the chroma of natural pictures is small
  beside their luma; weighting this term (`loss.chroma`) makes the lost axis
  cost what it is worth.
  """
  to_chroma = jnp.asarray(colourspace.RGB_TO_YCBCR[1:].T)
  return jnp.mean(jnp.abs((x.astype(jnp.float32) - y.astype(jnp.float32)) @ to_chroma))


def _gaussian_blur(x: jax.Array, size: int, sigma: float) -> jax.Array:
  """Per-channel 'valid' Gaussian filtering, as two 1-D passes (the 2-D window is separable)."""
  coords = np.arange(size, dtype=np.float64) - (size - 1) / 2
  g = np.exp(-0.5 * (coords / sigma) ** 2)
  g = jnp.asarray(g / g.sum(), jnp.float32)
  c = x.shape[-1]
  # HIGHEST: SSIM's variances are small differences of large moments, which
  # the default bfloat16 passes of TPU convolutions would swamp.
  for shape in ((size, 1, 1, 1), (1, size, 1, 1)):
    kernel = jnp.tile(g.reshape(shape), (1, 1, 1, c))
    x = jax.lax.conv_general_dilated(
        x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=c, precision=jax.lax.Precision.HIGHEST)
  return x


def ssim_components(x: jax.Array, y: jax.Array, max_val: float, filter_size: int = 11,
                    filter_sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03):
  """Per-channel SSIM (luminance * contrast-structure) and contrast-structure, each (B, C).

  x, y: float32 NHWC with non-negative intensities in [0, max_val].
  """
  c1 = (k1 * max_val) ** 2
  c2 = (k2 * max_val) ** 2
  # One filtering pass over all five moment maps.
  stats = _gaussian_blur(jnp.concatenate([x, y, x * x, y * y, x * y], axis=-1),
                         filter_size, filter_sigma)
  mu_x, mu_y, xx, yy, xy = jnp.split(stats, 5, axis=-1)
  luminance = (2 * mu_x * mu_y + c1) / (mu_x ** 2 + mu_y ** 2 + c1)
  cs = (2 * (xy - mu_x * mu_y) + c2) / (xx + yy - mu_x ** 2 - mu_y ** 2 + c2)
  return jnp.mean(luminance * cs, axis=(1, 2)), jnp.mean(cs, axis=(1, 2))


def _downsample2(x: jax.Array) -> jax.Array:
  """2x2 average pooling; odd sizes are first padded by mirroring the last row/column (as TF)."""
  b, h, w, c = x.shape
  x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="symmetric")
  return x.reshape(b, (h + 1) // 2, 2, (w + 1) // 2, 2, c).mean(axis=(2, 4))


def ms_ssim_min_size(filter_size: int = 11, scales: int = len(MS_SSIM_WEIGHTS)) -> int:
  """Smallest height/width whose coarsest scale still holds one filter window."""
  return (filter_size - 1) * 2 ** (scales - 1) + 1


def ms_ssim(x: jax.Array, y: jax.Array, max_val: float = 2.0, filter_size: int = 11,
            filter_sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03,
            weights=MS_SSIM_WEIGHTS) -> jax.Array:
  """Multi-scale SSIM (Wang et al. 2003) of two NHWC batches, one value per image, shape (B,).

  Matches tf.image.ssim_multiscale: contrast-structure at the finer scales,
  luminance * contrast-structure at the coarsest, negative terms clipped to 0,
  weighted geometric mean per channel, then the channel mean.

  x, y: values in [-max_val / 2, max_val / 2] ([-1, 1] for the default
  max_val=2). They are shifted to [0, max_val] first: the luminance term
  assumes non-negative intensities and is unstable for means near zero. For
  [-1, 1] inputs the result equals tf.image.ssim_multiscale((x + 1) / 2,
  (y + 1) / 2, max_val=1.0).
  """
  if x.shape != y.shape or x.ndim != 4:
    raise ValueError(f"ms_ssim expects two NHWC batches of one shape, got {x.shape} and {y.shape}")
  min_size = ms_ssim_min_size(filter_size, len(weights))
  if min(x.shape[1:3]) < min_size:
    raise ValueError(
        f"ms_ssim needs images of at least {min_size}x{min_size} pixels for {len(weights)} "
        f"scales with a {filter_size}-tap window, got {x.shape[1]}x{x.shape[2]}")
  x = x.astype(jnp.float32) + max_val / 2
  y = y.astype(jnp.float32) + max_val / 2
  terms = []
  for scale, weight in enumerate(weights):
    if scale:
      x, y = _downsample2(x), _downsample2(y)
    ssim_val, cs = ssim_components(x, y, max_val, filter_size, filter_sigma, k1, k2)
    # Negative terms (anti-correlated structure) are clipped to 0 as in TF;
    # jax's pow has a zero, not NaN, derivative at 0 ** weight.
    terms.append(jax.nn.relu(ssim_val if scale == len(weights) - 1 else cs) ** weight)
  return jnp.mean(jnp.prod(jnp.stack(terms), axis=0), axis=-1)


def hinge_d_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
  return 0.5 * (jnp.mean(jax.nn.relu(1.0 - logits_real)) + jnp.mean(jax.nn.relu(1.0 + logits_fake)))


def hinge_g_loss(logits_fake: jax.Array) -> jax.Array:
  return -jnp.mean(logits_fake)


def adaptive_gan_weight(rec_grad_norm: jax.Array, gan_grad_norm: jax.Array,
                        max_weight: float = 1e4) -> jax.Array:
  """VQGAN's weight that balances the GAN gradient against the reconstruction one.

  Both norms are of gradients w.r.t. the decoder's last layer. The weight is a
  constant of the step, not something to differentiate through.
  """
  w = rec_grad_norm / (gan_grad_norm + 1e-4)
  return jax.lax.stop_gradient(jnp.clip(w, 0.0, max_weight))


def gan_start_factor(step, start_step) -> jax.Array:
  """0.0 before `start_step`, 1.0 from it on; traceable, so `step` may be a device scalar."""
  return jnp.where(jnp.asarray(step) >= start_step, 1.0, 0.0).astype(jnp.float32)


# LPIPS (Zhang et al. 2018), VGG16 variant.
VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
# LPIPS' ScalingLayer: maps [-1, 1] inputs to ImageNet-normalised ones.
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)


def lpips_weight_shapes() -> dict[str, tuple[int, ...]]:
  """The key -> shape layout of an LPIPS weights file."""
  shapes, c_in = {}, 3
  for b, block in enumerate(VGG16_BLOCKS, start=1):
    for i, c_out in enumerate(block, start=1):
      shapes[f"conv{b}_{i}.kernel"] = (3, 3, c_in, c_out)
      shapes[f"conv{b}_{i}.bias"] = (c_out,)
      c_in = c_out
    shapes[f"lin{b - 1}.kernel"] = (block[-1],)
  return shapes


def lpips_distance(params: dict[str, jax.Array], x: jax.Array, y: jax.Array) -> jax.Array:
  """LPIPS distance of two NHWC batches in [-1, 1], shape (B,); `params` as in load_lpips."""
  shift = jnp.asarray(LPIPS_SHIFT, jnp.float32)
  scale = jnp.asarray(LPIPS_SCALE, jnp.float32)
  n = x.shape[0]
  h = (jnp.concatenate([x, y]).astype(jnp.float32) - shift) / scale
  total = jnp.zeros((n,), jnp.float32)
  for b, block in enumerate(VGG16_BLOCKS, start=1):
    if b > 1:
      h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    for i in range(1, len(block) + 1):
      h = jax.lax.conv_general_dilated(
          h, params[f"conv{b}_{i}.kernel"], (1, 1), ((1, 1), (1, 1)),
          dimension_numbers=("NHWC", "HWIO", "NHWC"))
      h = jax.nn.relu(h + params[f"conv{b}_{i}.bias"])
    # Unit-normalise over channels; the epsilon sits inside the sqrt so that
    # all-zero ReLU features give a zero gradient rather than NaN.
    f = h * jax.lax.rsqrt(jnp.sum(h * h, axis=-1, keepdims=True) + 1e-20)
    d = jnp.square(f[:n] - f[n:]) @ params[f"lin{b - 1}.kernel"]
    total = total + jnp.mean(d, axis=(1, 2))
  return total


# Weights as arguments, so that eager calls compile once and do not embed them.
_lpips_distance_jit = jax.jit(lpips_distance)


class LPIPS:
  """Frozen LPIPS-VGG16 perceptual distance with weights from a .npz file.

  The file holds float arrays under these keys (kernels HWIO, as in layers.Conv):
    conv{b}_{i}.kernel (3, 3, C_in, C_out), conv{b}_{i}.bias (C_out,) for the
      VGG16 feature convs, blocks b=1..5 with i=1..2 (b<=2) or i=1..3 (b>=3);
      channels 64, 128, 256, 512, 512 per block;
    lin{k}.kernel (C,) for the non-negative 1x1 heads on relu1_2, relu2_2,
      relu3_3, relu4_3, relu5_3 (k=0..4).
  From the PyTorch release: VGG `features.{0,2,5,7,10,12,14,17,19,21,24,26,28}.weight`
  transposed (2, 3, 1, 0), and `lin{k}.model.1.weight` reshaped to (C,).

  Inside a jitted train step, pass `lpips.params` as an argument to
  `lpips_distance` to keep the weights out of the compiled constants.
  """

  def __init__(self, params: dict[str, jax.Array]):
    self.params = params

  def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
    return _lpips_distance_jit(self.params, x, y)


def load_lpips(path: str) -> LPIPS:
  """Reads and checks an LPIPS weights file (layout in the LPIPS docstring)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"LPIPS weights file {path!r} does not exist")
  try:
    with np.load(path, allow_pickle=False) as data:
      arrays = {k: data[k] for k in data.files}
  except Exception as e:
    raise ValueError(f"LPIPS weights file {path!r} is not a readable .npz of arrays: {e}") from e
  shapes = lpips_weight_shapes()
  missing = [k for k in shapes if k not in arrays]
  if missing:
    raise ValueError(f"LPIPS weights file {path!r} lacks {len(missing)} of the {len(shapes)} "
                     f"arrays of the LPIPS docstring's layout: {missing}")
  params = {}
  for key, shape in shapes.items():
    if arrays[key].shape != shape or not np.issubdtype(arrays[key].dtype, np.floating):
      raise ValueError(f"LPIPS weights file {path!r}: {key!r} is {arrays[key].dtype}{arrays[key].shape}, "
                       f"expected float{shape}")
    params[key] = jnp.asarray(arrays[key], jnp.float32)
  return LPIPS(params)


def lpips_from_config(path: str | None) -> LPIPS | None:
  """The LPIPS term for a config value: None (term off) when no file is named."""
  if not path:
    logging.info("LPIPS term off: no weights file given")
    return None
  return load_lpips(path)
