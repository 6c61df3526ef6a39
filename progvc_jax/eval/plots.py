"""Evaluation figures as PNG files: rate-distortion curves and labelled frame strips.

Plots draw on matplotlib's Agg canvas directly, without pyplot, so they need
no display and leave no global figure state behind.
"""

from typing import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np
from PIL import Image, ImageDraw, ImageFont

LABEL_HEIGHT = 22  # pixels of the band above each frame of a strip
GAP = 4  # pixels between frames of a strip


def rd_plot(curves: dict[str, tuple[Sequence[float], Sequence[float]]], metric: str, path: str,
            title: str | None = None, size: tuple[int, int] = (800, 600)) -> None:
  """Writes a PNG of `size` (width, height) pixels with one line per codec.

  curves: name -> (bits per pixel, metric values), one value per rate point,
  in any order (each line is drawn in order of rate).
  """
  if not curves:
    raise ValueError("rd_plot needs at least one curve")
  fig = Figure(figsize=(size[0] / 100, size[1] / 100), dpi=100)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  for name, (bpp, values) in curves.items():
    bpp, values = np.asarray(bpp, np.float64), np.asarray(values, np.float64)
    if bpp.ndim != 1 or bpp.shape != values.shape or not len(bpp):
      raise ValueError(f"curve {name!r}: needs equal, non-zero numbers of rates and values, "
                       f"got {bpp.shape} and {values.shape}")
    order = np.argsort(bpp)
    ax.plot(bpp[order], values[order], marker="o", label=name)
  ax.set_xlabel("bits per pixel")
  ax.set_ylabel(metric)
  ax.set_title(title or f"{metric} against rate")
  ax.grid(True, alpha=0.4)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, format="png")


def frame_strip(rows: Sequence[tuple[str, np.ndarray]], path: str) -> None:
  """Writes a PNG of the frames side by side, left to right, each under its label.

  rows: (label, uint8 RGB frame (H, W, 3)); frames may differ in size (they
  are top-aligned). A label longer than its frame is cut at the frame's width.
  The image is sum(W) + GAP * (n - 1) wide and LABEL_HEIGHT + max(H) high.
  """
  if not rows:
    raise ValueError("frame_strip needs at least one frame")
  for label, frame in rows:
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
      desc = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
      raise ValueError(f"frame {label!r} must be uint8 RGB (H, W, 3), got {desc}")
  width = sum(frame.shape[1] for _, frame in rows) + GAP * (len(rows) - 1)
  height = LABEL_HEIGHT + max(frame.shape[0] for _, frame in rows)
  strip = Image.new("RGB", (width, height), "white")
  font = ImageFont.load_default(size=14)
  x = 0
  for label, frame in rows:
    # Each label is drawn on its own band, which clips it to the frame's width.
    band = Image.new("RGB", (frame.shape[1], LABEL_HEIGHT), "white")
    ImageDraw.Draw(band).text((3, 3), label, fill="black", font=font)
    strip.paste(band, (x, 0))
    strip.paste(Image.fromarray(frame), (x, LABEL_HEIGHT))
    x += frame.shape[1] + GAP
  strip.save(path, format="PNG")
