"""How well a codec keeps colours: the same pictures with their hues turned round the circle.

A tokenizer trained on few scenes can learn too few colours: it may render
every hue along the one axis its data vary on (orange to blue) and turn
greens and violets grey. Turning the hue of test pictures (luma kept, see
pipeline.recolour) makes every hue appear at the same luma and structure, so
the scores per turn show which colours a model loses, apart from how well it
draws detail.
"""

from typing import Callable, Sequence

import numpy as np

from progvc_jax import colourspace
from progvc_jax.data import pipeline
from progvc_jax.eval import metrics

_RGB_TO_CHROMA = colourspace.RGB_TO_YCBCR[1:]  # (Cb, Cr) rows


def chroma_error(ref: np.ndarray, dist: np.ndarray) -> float:
  """Mean distance between the (Cb, Cr) of ref and dist, pixel by pixel, in 8-bit code values."""
  d = (ref.astype(np.float64) - dist.astype(np.float64)) @ _RGB_TO_CHROMA.T.astype(np.float64)
  return float(np.mean(np.hypot(d[..., 0], d[..., 1])))


def chroma(frames: np.ndarray) -> float:
  """Mean (Cb, Cr) magnitude of frames: how colourful they are (0 for grey)."""
  return chroma_error(frames, np.repeat(
      (frames.astype(np.float64) @ np.array([0.299, 0.587, 0.114]))[..., None], 3, -1))


def hue_sweep(reconstruct: Callable[[np.ndarray], np.ndarray], pictures: Sequence[np.ndarray],
              turns_degrees: Sequence[float], saturation: float = 1.0) -> list[dict]:
  """Per hue turn: PSNR-RGB, PSNR-Y, chroma error and the colourfulness kept, averaged over pictures.

  reconstruct: uint8 frames (N, H, W, 3) -> their reconstruction, the same shape.
  pictures: uint8 (H, W, 3) of any sizes (each is reconstructed alone).
  Returns [{"turn": degrees, "psnr": dB, "psnr_y": dB of luma alone (the turn keeps it, so this is
  the detail drawn, apart from colour), "chroma_error": code values, "chroma_kept": reconstructed
  colourfulness / source colourfulness}].
  """
  rows = []
  for turn in turns_degrees:
    psnr, psnr_y, err, kept = [], [], [], []
    for picture in pictures:
      src = pipeline.recolour(picture[None], np.deg2rad(turn), saturation)
      out = np.asarray(reconstruct(src))
      if out.shape != src.shape:
        raise ValueError(f"reconstruct gave shape {out.shape} for {src.shape}")
      psnr.append(metrics.psnr_rgb(src, out))
      psnr_y.append(metrics.psnr_y(src, out))
      err.append(chroma_error(src, out))
      kept.append(chroma(out) / max(chroma(src), 1e-9))
    rows.append(dict(turn=float(turn), psnr=float(np.mean(psnr)), psnr_y=float(np.mean(psnr_y)),
                     chroma_error=float(np.mean(err)), chroma_kept=float(np.mean(kept))))
  return rows
