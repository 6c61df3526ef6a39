"""Bjontegaard deltas between two rate-distortion curves, piecewise cubic variant.

Each curve is interpolated with a monotone piecewise cubic (PCHIP) over the
natural log of the rate, and the gap between the two is averaged over the
interval both curves cover: in log-rate at equal quality for BD-rate, in
quality at equal log-rate for BD-quality. PCHIP, unlike the original
cubic polynomial fit, does not overshoot between points, so the delta is
stable for curves with uneven spacing or few points.

Rates may be in any unit (bytes, bpp, kbit/s) as long as both curves use
the same; quality is any higher-is-better metric (PSNR, MS-SSIM, VMAF).
"""

from typing import Sequence

import numpy as np
from scipy.interpolate import PchipInterpolator


def _curve(rate: Sequence[float], quality: Sequence[float], name: str) -> tuple[np.ndarray, np.ndarray]:
  r, q = np.asarray(rate, np.float64), np.asarray(quality, np.float64)
  if r.ndim != 1 or r.shape != q.shape:
    raise ValueError(f"curve {name}: rates and qualities must be 1-D of one length, got {r.shape} and {q.shape}")
  if not (np.all(np.isfinite(r)) and np.all(np.isfinite(q))):
    raise ValueError(f"curve {name}: rates and qualities must be finite")
  if np.any(r <= 0):
    raise ValueError(f"curve {name}: rates must be positive, got {r.tolist()}")
  return np.log(r), q


def _unique_by(x: np.ndarray, y: np.ndarray, keep_max_y: bool) -> tuple[np.ndarray, np.ndarray]:
  """Points sorted by x with one per distinct x: the one with the largest (or smallest) y.

  Points that tie on x are the same operating point measured twice or a
  dominated one; keeping the best of them is what an encoder would choose.
  """
  order = np.lexsort((-y if keep_max_y else y, x))  # by x, the kept y first among equal x
  x, y = x[order], y[order]
  first = np.concatenate([[True], np.diff(x) > 0])
  return x[first], y[first]


def _mean_gap(x_a: np.ndarray, y_a: np.ndarray, x_b: np.ndarray, y_b: np.ndarray, what: str) -> float:
  """Mean over the common x interval of PCHIP(b) - PCHIP(a)."""
  for name, x in (("a", x_a), ("b", x_b)):
    if len(x) < 2:
      raise ValueError(f"curve {name} needs at least 2 points with distinct {what}, has {len(x)}")
  lo, hi = max(x_a[0], x_b[0]), min(x_a[-1], x_b[-1])
  if hi <= lo:
    raise ValueError(f"the curves do not overlap in {what}: a covers {x_a[0]:.4g}..{x_a[-1]:.4g}, "
                     f"b covers {x_b[0]:.4g}..{x_b[-1]:.4g}")
  area_a = PchipInterpolator(x_a, y_a).integrate(lo, hi)
  area_b = PchipInterpolator(x_b, y_b).integrate(lo, hi)
  return float((area_b - area_a) / (hi - lo))


def bd_rate(rate_a: Sequence[float], q_a: Sequence[float], rate_b: Sequence[float],
            q_b: Sequence[float]) -> float:
  """Bjontegaard delta rate of curve b against curve a, in percent.

  The average rate difference at equal quality over the qualities both
  curves reach: negative means b needs fewer bits for the same quality
  (-20 = b saves a fifth). Each curve needs 2 or more points of distinct
  quality; for a quality measured at several rates the lowest rate counts.
  """
  log_r_a, qa = _curve(rate_a, q_a, "a")
  log_r_b, qb = _curve(rate_b, q_b, "b")
  # log-rate as a function of quality: the lowest rate wins ties.
  qa, log_r_a = _unique_by(qa, log_r_a, keep_max_y=False)
  qb, log_r_b = _unique_by(qb, log_r_b, keep_max_y=False)
  return float(np.expm1(_mean_gap(qa, log_r_a, qb, log_r_b, "quality")) * 100)


def bd_quality(rate_a: Sequence[float], q_a: Sequence[float], rate_b: Sequence[float],
               q_b: Sequence[float]) -> float:
  """Bjontegaard delta quality (e.g. BD-PSNR in dB) of curve b against curve a.

  The average quality difference at equal rate over the rates both curves
  span: positive means b is better. Each curve needs 2 or more points of
  distinct rate; for a rate measured more than once the best quality counts.
  """
  log_r_a, qa = _curve(rate_a, q_a, "a")
  log_r_b, qb = _curve(rate_b, q_b, "b")
  log_r_a, qa = _unique_by(log_r_a, qa, keep_max_y=True)
  log_r_b, qb = _unique_by(log_r_b, qb, keep_max_y=True)
  return _mean_gap(log_r_a, qa, log_r_b, qb, "rate")
