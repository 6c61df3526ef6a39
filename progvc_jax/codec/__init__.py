"""The progvc CPU codec: bundles, the container, range coding, encoder, decoder, command line.

Python API:
  from progvc_jax import codec
  data = codec.encode(frames, model="model.pgvcm", scales=6)   # uint8 (T, H, W, 3) -> bytes
  frames = codec.decode(data, model="model.pgvcm")             # bytes -> uint8 (T, H, W, 3)
`model` is a bundle path or a loaded CodecModel; None uses the shipped default.
"""

import functools
import os

import numpy as np

# How the scales that were not sent are filled unless the caller says otherwise, in the Python API and in
# `progvc decode`: as the stream says. The encoder names a completion for each scale count
# (encoder.choose_completion: `none` or `mean:t=3` at one of four weights, whichever scores highest on
# SSIMULACRA 2 on the first frames), because no single setting beats `none` on every clip (README,
# "Completing the scales that were not sent"); a stream that names none is decoded with `none`.
# temperature, top_k, top_p and weight apply to an explicit `complete`.
DEFAULT_COMPLETION = {"complete": "stream", "temperature": 1.0, "top_k": 0, "top_p": 1.0, "weight": 1.0}


def load_model(model=None):
  """A CodecModel from a bundle path (None: the shipped default), or `model` itself if already loaded.

  A path's model is loaded once per process (and again if the file changes), so that repeated calls
  reuse its compiled steps instead of loading and compiling the bundle each time.
  """
  from progvc_jax.codec import cli
  from progvc_jax.codec.model import CodecModel
  if isinstance(model, CodecModel):
    return model
  if model is None:
    if not os.path.isfile(cli.DEFAULT_MODEL):
      return cli.default_model()  # its error
    model = cli.DEFAULT_MODEL
  path = os.path.abspath(os.fspath(model))
  if not os.path.isfile(path):
    return CodecModel.load(path)  # its error
  stat = os.stat(path)
  return _loaded(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4)
def _loaded(path: str, mtime_ns: int, size: int):
  from progvc_jax.codec.model import CodecModel
  return CodecModel.load(path)


def encode(frames: np.ndarray, model=None, *, fps: float = 25.0, **kwargs) -> bytes:
  """uint8 frames (T, H, W, 3) -> a progvc stream; kwargs: scales, target_kbps, gop, layout, rd_lambda, complete
  (the completion the stream names: "choose", the default, or "none", "argmax", "mean:t=T", "mean:t=T/w=W")."""
  from progvc_jax.codec import encoder
  return encoder.encode(frames, load_model(model), fps=fps, **kwargs)


def decode(data: bytes, model=None, **kwargs) -> np.ndarray:
  """A progvc stream (or a prefix of one: see decoder.decode) -> uint8 frames (T, H, W, 3); kwargs: complete,
  seed, temperature, top_k, top_p, weight, tile_batch, partial."""
  from progvc_jax.codec import decoder
  return decoder.decode(data, load_model(model), **kwargs)
