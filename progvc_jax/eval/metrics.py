"""Quality of a decoded video against its source, and its rate in bits per pixel.

Every metric takes the source and the decoded video on the same frames, as
uint8 RGB arrays (T, H, W, 3) of one shape, and scores each frame; the
clip's score is the mean over frames. VMAF also takes video files.
ColorVideoVDP scores the clip as a whole (it models temporal vision), and
runs only where the `perceptual` extra (PyTorch and cvvdp) is installed.

Not here: DISTS and FID, which need network weights that progvc does not
ship; LPIPS runs only with a weights file the caller names.
"""

import concurrent.futures
import functools
import io
import json
import os
import tempfile
from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from progvc_jax import losses
from progvc_jax.data import video
from progvc_jax.eval import ffmpeg

MAX_PSNR = 100.0  # dB given to identical frames, whose MSE is 0
BT709_LUMA = (0.2126, 0.7152, 0.0722)
VMAF_MODEL = "vmaf_v0.6.1"
VMAF_NEG_MODEL = "vmaf_v0.6.1neg"  # "no enhancement gain": sharpening and contrast boosts score no higher
CVVDP_DISPLAY = "standard_fhd"  # cvvdp's 24-inch 1920x1080 office monitor, 200 cd/m2, seen from 60 cm
_BATCH_PIXELS = 1 << 21  # frames per JAX call: about 2 Mpixel, a few hundred MB of MS-SSIM moments

_ms_ssim_jit = jax.jit(losses.ms_ssim, static_argnames=("weights",))


def _check_video(name: str, x: np.ndarray) -> None:
  if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
    desc = f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
    raise ValueError(f"{name} must be a uint8 RGB video array (T, H, W, 3), got {desc}")
  if x.shape[0] == 0:
    raise ValueError(f"{name} has no frames")


def _check_pair(ref: np.ndarray, dist: np.ndarray) -> None:
  _check_video("ref", ref)
  _check_video("dist", dist)
  if ref.shape != dist.shape:
    raise ValueError(f"ref and dist must have one shape (the same frames), got {ref.shape} and {dist.shape}")


def _psnr(mse: np.ndarray) -> np.ndarray:
  with np.errstate(divide="ignore"):
    return np.minimum(10 * np.log10(255.0 ** 2 / mse), MAX_PSNR)


def psnr_rgb_frames(ref: np.ndarray, dist: np.ndarray) -> np.ndarray:
  """Per-frame PSNR in dB over R, G and B together (one MSE over all three), peak 255, shape (T,).

  Identical frames get MAX_PSNR (100 dB) instead of infinity.
  """
  _check_pair(ref, dist)
  # Frame by frame: a float copy of a whole clip would take 8 bytes a sample.
  mse = np.array([np.mean(np.square(r.astype(np.float64) - d)) for r, d in zip(ref, dist)])
  return _psnr(mse)


def psnr_rgb(ref: np.ndarray, dist: np.ndarray) -> float:
  """Mean over frames of psnr_rgb_frames (per-frame PSNR first, then the mean)."""
  return float(np.mean(psnr_rgb_frames(ref, dist)))


def _luma(rgb: np.ndarray) -> np.ndarray:
  return rgb.astype(np.float64) @ np.asarray(BT709_LUMA)


def psnr_y_frames(ref: np.ndarray, dist: np.ndarray) -> np.ndarray:
  """Per-frame PSNR in dB of BT.709 luma, shape (T,).

  Luma is Y = 0.2126 R + 0.7152 G + 0.0722 B of the RGB frames: full range
  0..255, not rounded, peak 255. It is not the limited-range Y' plane
  (16..235) of the coded video, so values differ from a Y-plane PSNR of the
  YUV files. Identical frames get MAX_PSNR (100 dB) instead of infinity.
  """
  _check_pair(ref, dist)
  mse = np.array([np.mean(np.square(_luma(r) - _luma(d))) for r, d in zip(ref, dist)])
  return _psnr(mse)


def psnr_y(ref: np.ndarray, dist: np.ndarray) -> float:
  """Mean over frames of psnr_y_frames (per-frame PSNR first, then the mean)."""
  return float(np.mean(psnr_y_frames(ref, dist)))


def _batches(ref: np.ndarray, dist: np.ndarray) -> Iterator[tuple[jax.Array, jax.Array, int]]:
  """(ref, dist, valid) batches in [-1, 1]; the last is padded to full size so that one compile serves all."""
  size = max(1, min(len(ref), _BATCH_PIXELS // (ref.shape[1] * ref.shape[2])))
  for start in range(0, len(ref), size):
    r, d = ref[start:start + size], dist[start:start + size]
    valid = len(r)
    if valid < size:
      pad = ((0, size - valid), (0, 0), (0, 0), (0, 0))
      r, d = np.pad(r, pad, mode="edge"), np.pad(d, pad, mode="edge")
    yield jnp.asarray(r) / 127.5 - 1, jnp.asarray(d) / 127.5 - 1, valid


def ms_ssim_weights(height: int, width: int) -> tuple[float, ...]:
  """Scale weights of MS-SSIM on frames of this size.

  The five standard scales need 161 pixels a side (11-tap window at 1/16
  size). Smaller frames use as many of the finest scales as fit, their
  weights renormalised to sum to 1; e.g. 176x144 gets four.
  """
  n = len(losses.MS_SSIM_WEIGHTS)
  while n and losses.ms_ssim_min_size(scales=n) > min(height, width):
    n -= 1
  if not n:
    raise ValueError(f"MS-SSIM needs frames of at least {losses.ms_ssim_min_size(scales=1)} pixels a side, "
                     f"got {width}x{height}")
  total = sum(losses.MS_SSIM_WEIGHTS[:n])
  return tuple(w / total for w in losses.MS_SSIM_WEIGHTS[:n])


def ms_ssim_frames(ref: np.ndarray, dist: np.ndarray) -> np.ndarray:
  """Per-frame MS-SSIM of the RGB frames (mean over channels), shape (T,); scales as in ms_ssim_weights."""
  _check_pair(ref, dist)
  weights = ms_ssim_weights(*ref.shape[1:3])
  scores = [np.asarray(_ms_ssim_jit(r, d, weights=weights))[:valid] for r, d, valid in _batches(ref, dist)]
  return np.concatenate(scores).astype(np.float64)


def ms_ssim(ref: np.ndarray, dist: np.ndarray) -> float:
  """Mean over frames of ms_ssim_frames."""
  return float(np.mean(ms_ssim_frames(ref, dist)))


def lpips(ref: np.ndarray, dist: np.ndarray, weights_path: str) -> float:
  """Mean over frames of the LPIPS-VGG16 distance (lower is better).

  The network weights come from the .npz file `weights_path` (layout in
  losses.LPIPS); nothing is downloaded, and without a file there is no LPIPS.
  """
  if not weights_path:
    raise ValueError("LPIPS needs a weights file (.npz, layout in progvc_jax.losses.LPIPS); none was given")
  _check_pair(ref, dist)
  model = losses.load_lpips(weights_path)
  scores = [np.asarray(model(r, d))[:valid] for r, d, valid in _batches(ref, dist)]
  return float(np.mean(np.concatenate(scores)))


def _as_file(frames_or_path: np.ndarray | str, name: str, folder: str) -> tuple[str, tuple[int, int, int]]:
  """A video file of the input (arrays are written as raw y4m) and its (frames, height, width)."""
  if isinstance(frames_or_path, np.ndarray):
    _check_video(name, frames_or_path)
    path = os.path.join(folder, f"{name}.y4m")
    video.write_video(path, frames_or_path, fps=25)  # VMAF pairs frames by index, not by time
    return path, frames_or_path.shape[:3]
  info = video.probe(frames_or_path)
  return os.fspath(frames_or_path), (info.num_frames, info.height, info.width)


def vmaf_models_frames(ref: np.ndarray | str, dist: np.ndarray | str,
                       models: Sequence[str] = (VMAF_MODEL, VMAF_NEG_MODEL)) -> dict[str, np.ndarray]:
  """Per-frame VMAF of dist against ref under each of libvmaf's built-in `models`, in one ffmpeg run.

  Returns {model: scores of shape (T,)}. ref, dist: uint8 RGB arrays
  (T, H, W, 3), written as BT.709 limited-range 4:2:0 y4m for libvmaf, or
  paths of 8-bit 4:2:0 videos. Both must have the same size and number of
  frames; frame i is compared with frame i.
  """
  if not models:
    raise ValueError("VMAF needs at least one model")
  ffmpeg.require("libvmaf")
  with tempfile.TemporaryDirectory(prefix="progvc-vmaf-") as tmp:
    ref_path, ref_shape = _as_file(ref, "ref", tmp)
    dist_path, dist_shape = _as_file(dist, "dist", tmp)
    if ref_shape != dist_shape:
      raise ValueError(f"VMAF needs the same frames in ref and dist: (frames, height, width) "
                       f"{ref_shape} and {dist_shape}")
    # Each model's score is logged under the name given here: m0, m1, ...
    model_arg = "|".join(rf"version={m}\:name=m{i}" for i, m in enumerate(models))
    # Timestamps renumbered by index, so that files with other rates or start times still pair up.
    graph = (f"[0:v]settb=AVTB,setpts=N[dist];[1:v]settb=AVTB,setpts=N[ref];"
             f"[dist][ref]libvmaf=model='{model_arg}':log_fmt=json:log_path=vmaf.json"
             f":n_threads={os.cpu_count() or 1}")
    # cwd=tmp keeps the log path free of characters that filtergraphs would need escaped.
    ffmpeg.run(["-i", os.path.abspath(dist_path), "-i", os.path.abspath(ref_path), "-lavfi", graph,
                "-f", "null", "-"], "VMAF", cwd=tmp)
    with open(os.path.join(tmp, "vmaf.json"), encoding="utf-8") as f:
      log = json.load(f)
  out = {m: np.array([frame["metrics"][f"m{i}"] for frame in log["frames"]], np.float64)
         for i, m in enumerate(models)}
  if len(log["frames"]) != ref_shape[0]:
    raise ffmpeg.FFmpegError(f"VMAF: libvmaf scored {len(log['frames'])} frames of {ref_shape[0]}")
  return out


def vmaf_frames(ref: np.ndarray | str, dist: np.ndarray | str, model: str = VMAF_MODEL) -> np.ndarray:
  """Per-frame VMAF (ffmpeg's libvmaf, built-in model `model`) of dist against ref, shape (T,).

  Inputs as in vmaf_models_frames. VMAF_NEG_MODEL gives VMAF NEG.
  """
  return vmaf_models_frames(ref, dist, (model,))[model]


def vmaf(ref: np.ndarray | str, dist: np.ndarray | str, model: str = VMAF_MODEL) -> float:
  """Mean over frames of vmaf_frames (0..100, higher is better)."""
  return float(np.mean(vmaf_frames(ref, dist, model)))


def _ppm(frame: np.ndarray) -> io.BytesIO:
  """An RGB frame as an in-memory PPM (lossless, and quicker to write and read than PNG)."""
  from PIL import Image
  buf = io.BytesIO()
  Image.fromarray(frame).save(buf, format="PPM")
  buf.seek(0)
  return buf


def _ssimulacra2_one(pair: tuple[np.ndarray, np.ndarray]) -> float:
  from ssimulacra2 import compute_ssimulacra2
  return float(compute_ssimulacra2(_ppm(pair[0]), _ppm(pair[1])))


# Frames scored at once: NumPy and SciPy release the GIL in most of the metric's work (two threads score 8
# frames at 640x360 in 0.99 s against 1.56 s one by one, on 2 cores), and each thread holds some 30
# float64 copies of a frame.
SSIMULACRA2_THREADS = 4


def ssimulacra2_frames(ref: np.ndarray, dist: np.ndarray) -> np.ndarray:
  """Per-frame SSIMULACRA 2 of dist against ref, shape (T,): 100 for identical frames, lower is worse
  (about 90 is visually lossless, 70 high quality, 50 medium, 30 low; it can go below 0).

  Computed by the `ssimulacra2` package, a NumPy port of libjxl's tool: sRGB
  to XYB, SSIM and two edge-difference maps at 6 scales, pooled by 1- and
  4-norms, weighted and mapped to the score. Frames are scored in up to
  SSIMULACRA2_THREADS threads (no more than the CPUs this process may use); each score is the same
  as one scored alone.
  """
  _check_pair(ref, dist)
  cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
  threads = min(SSIMULACRA2_THREADS, cpus, len(ref))
  if threads <= 1:
    return np.array([_ssimulacra2_one(p) for p in zip(ref, dist)], np.float64)
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    return np.array(list(pool.map(_ssimulacra2_one, zip(ref, dist))), np.float64)


def ssimulacra2(ref: np.ndarray, dist: np.ndarray) -> float:
  """Mean over frames of ssimulacra2_frames."""
  return float(np.mean(ssimulacra2_frames(ref, dist)))


class MissingExtraError(RuntimeError):
  """A metric needs an optional install that is missing."""


CVVDP_INSTALL = ("pip install 'progvc[perceptual]' (PyTorch and cvvdp, about 5 GB; where pip's configuration "
                 "points at a local torch+cpu wheel, first run pip install --isolated torch torchvision)")


def require_cvvdp() -> None:
  """Raises MissingExtraError, saying how to install it, unless ColorVideoVDP can run here."""
  _cvvdp_module()


def cvvdp_available() -> bool:
  """Whether ColorVideoVDP can run here: cvvdp, torch and torchvision import."""
  try:
    require_cvvdp()
  except MissingExtraError:
    return False
  return True


@functools.cache
def _cvvdp_module():
  try:
    import pycvvdp
  except Exception as e:  # ImportError, or torchvision's own failure to load against another torch build
    raise MissingExtraError(f"ColorVideoVDP needs the perceptual extra ({type(e).__name__}: {e}); "
                            f"install it with {CVVDP_INSTALL}") from None
  return pycvvdp


@functools.cache
def _cvvdp_metric(display: str):
  pycvvdp = _cvvdp_module()
  import torch
  return pycvvdp.cvvdp(display_name=display, device=torch.device("cpu"), quiet=True)


def cvvdp(ref: np.ndarray, dist: np.ndarray, fps: float, display: str = CVVDP_DISPLAY) -> float:
  """ColorVideoVDP of dist against ref in JOD (just-objectionable differences): 10 for identical videos,
  lower is worse; a difference of 1 JOD means that 75% of viewers would prefer the better video.

  The frames are taken as sRGB on cvvdp's display model `display` and seen
  at `fps` frames a second; one score for the whole clip, on CPU.
  """
  _check_pair(ref, dist)
  if not fps > 0:
    raise ValueError(f"ColorVideoVDP needs the frame rate, got fps={fps}")
  metric = _cvvdp_metric(display)
  import torch
  with torch.no_grad():
    jod, _ = metric.predict(torch.from_numpy(np.ascontiguousarray(dist)), torch.from_numpy(np.ascontiguousarray(ref)),
                            dim_order="FHWC", frames_per_second=float(fps))
  return float(jod)


def bits_per_pixel(num_bytes: int, width: int, height: int, frames: int) -> float:
  """Rate of a coded video of `num_bytes`: 8 * num_bytes / (width * height * frames)."""
  if num_bytes < 0 or min(width, height, frames) <= 0:
    raise ValueError(f"bits_per_pixel needs num_bytes >= 0 and positive sizes, got "
                     f"num_bytes={num_bytes}, {width}x{height}, {frames} frames")
  return 8 * num_bytes / (width * height * frames)
