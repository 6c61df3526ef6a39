"""The progvc CPU codec: bundles, the container, range coding, encoder, decoder, command line.

Python API:
  from progvc_jax import codec
  data = codec.encode(frames, model="model.pgvcm", scales=6)   # uint8 (T, H, W, 3) -> bytes
  frames = codec.decode(data, model="model.pgvcm")             # bytes -> uint8 (T, H, W, 3)
`model` is a bundle path or a loaded CodecModel; None uses the shipped default.
"""

import numpy as np


def load_model(model=None):
  """A CodecModel from a bundle path (None: the shipped default), or `model` itself if already loaded."""
  from progvc_jax.codec import cli
  from progvc_jax.codec.model import CodecModel
  if isinstance(model, CodecModel):
    return model
  if model is None:
    return cli.default_model()
  return CodecModel.load(model)


def encode(frames: np.ndarray, model=None, *, fps: float = 25.0, **kwargs) -> bytes:
  """uint8 frames (T, H, W, 3) -> a progvc stream; kwargs: scales, target_kbps, gop."""
  from progvc_jax.codec import encoder
  return encoder.encode(frames, load_model(model), fps=fps, **kwargs)


def decode(data: bytes, model=None, **kwargs) -> np.ndarray:
  """A progvc stream -> uint8 frames (T, H, W, 3); kwargs: complete, seed, temperature, top_k, top_p, tile_batch."""
  from progvc_jax.codec import decoder
  return decoder.decode(data, load_model(model), **kwargs)
