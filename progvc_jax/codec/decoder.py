"""The progvc decoder: container -> chunks -> tokens -> frames, one frame at a time.

For each frame the context model's incremental step gives the integer
frequencies of scale k (the same on every machine), the range decoder turns chunk k into scale k's tokens, and the
tokens' checksum is verified (a mismatch names frame and scale). Scales that
were not sent are completed by the model (`sample` or `argmax`), rendered as
its expected code vector (`mean`, the residual times a weight), or left out
(`none`: the frame is the prefix it received); `stream` (the default) does
what the stream's header names for the number of scales the frame has (the
encoder's choice; `none` for a stream that names nothing). A stream made with another
model (fingerprint) is refused before anything is decoded.

A stream that ends early (a cut download, a pipe closed) is not an error:
frames that arrived with fewer scales are completed like any truncated
frame, and frames of which nothing arrived repeat the last frame decoded,
so the video keeps its length (the reader's `cut` says what arrived).
Corruption is still an error.
"""

import io
import warnings
from typing import BinaryIO, Iterator

import jax
import numpy as np

from progvc_jax.codec import DEFAULT_COMPLETION, bitstream, entropy
from progvc_jax.codec.model import CodecModel
from progvc_jax.models.progressive import COMPLETIONS

StreamError = bitstream.StreamError
# `stream`: the completion the stream names for each frame's scale count (bitstream.Header.completion).
DECODER_COMPLETIONS = ("stream",) + COMPLETIONS


def check_model(header: bitstream.Header, model: CodecModel) -> None:
  if header.fingerprint != model.fingerprint:
    raise StreamError(f"the stream was made with model {header.fingerprint.hex()}, not with {model.path} "
                      f"({model.fingerprint.hex()}); pass the bundle it was encoded with")
  if tuple(header.schedule) != model.schedule or header.tile != model.tile or header.vocab_size != model.vocab_size:
    raise StreamError("the stream's scale schedule, tile or codebook do not match the model")


def open_stream(f: BinaryIO, partial: bool = True) -> bitstream.Reader:
  """A reader of the container f (a file object, seekable or not); partial: accept a stream that ends early."""
  return bitstream.Reader(f, partial=partial)


def decode_tokens(model: CodecModel, f, *, complete: str = DEFAULT_COMPLETION["complete"], seed: int = 0,
                  temperature: float = DEFAULT_COMPLETION["temperature"], top_k: int = DEFAULT_COMPLETION["top_k"],
                  top_p: float = DEFAULT_COMPLETION["top_p"], weight: float = DEFAULT_COMPLETION["weight"],
                  tile_batch: int | None = None,
                  partial: bool = True) -> Iterator[tuple[bitstream.Header, list[np.ndarray], object]]:
  """Yields (header, tokens per scale [(tiles, p_k^2)], fhat tiles) for each frame of the container f
  (a file object, or a Reader from `open_stream`).

  tile_batch: run the context model on at most this many tiles at once (less
  memory for large frames; the frequencies, and so the tokens, are identical).
  partial: decode a stream that ends early (see the module docstring); a
  frame that repeats the last one comes with no tokens. False: that is a StreamError.
  weight: the share of the expected residual `mean` renders (1: all of it).
  complete="stream" takes mode, temperature and weight from the stream (top_k, top_p do not apply).
  """
  if complete not in DECODER_COMPLETIONS:
    raise ValueError(f"complete must be one of {DECODER_COMPLETIONS}, got {complete!r}")
  if not 0.0 < weight <= 1.0:
    raise ValueError(f"the weight of a mean completion must be in (0, 1], got {weight}")
  reader = f if isinstance(f, bitstream.Reader) else open_stream(f, partial)
  header = reader.header
  check_model(header, model)
  rows, cols = model.tile_grid(header.height, header.width)
  n = rows * cols
  key = jax.random.key(seed)
  prev = fhat = None
  decoded = 0
  for i, frame in enumerate(reader):
    sent = frame.scales
    decoded += 1

    def receive(k, weights, i=i, frame=frame):
      chunk = frame.chunks[k]
      tokens = entropy.decode_chunk(chunk.payload, np.asarray(weights).reshape(-1, weights.shape[-1]))
      if bitstream.token_checksum(tokens) != chunk.checksum:
        raise StreamError(f"frame {i} scale {k + 1}: the decoded tokens fail their checksum "
                          "(corrupt stream, or decoded with another model)")
      return tokens.reshape(n, -1)

    mode, t, w = complete, temperature, weight
    if complete == "stream":
      mode, t, w = bitstream.completion_parts(header.completion_of(sent))
    if mode == "none" or sent == model.num_scales:
      fhat, prev, tokens = model.steps.run(n, frame.kind, prev, receive, scales=sent, tile_batch=tile_batch,
                                           grid=(rows, cols))
    else:
      fill = model.steps.completer([], mode, jax.random.fold_in(key, i), t, top_k, top_p, w)
      fhat, prev, tokens = model.steps.run(
          n, frame.kind, prev, lambda k, p, receive=receive, fill=fill: receive(k, p) if k < sent else fill(k, p),
          tile_batch=tile_batch, grid=(rows, cols))
    yield header, [np.asarray(t) for t in tokens], fhat
  if reader.cut is not None:
    if fhat is None:
      raise StreamError(f"the stream ends after {reader.cut.offset} bytes, before its first frame's first scale: "
                        "nothing to decode")
    for _ in range(header.frame_count - decoded):
      yield header, [], fhat


def decode_frames(model: CodecModel, f, **kwargs) -> Iterator[np.ndarray]:
  """Yields uint8 frames (H, W, 3) decoded from the container f (kwargs: see decode_tokens)."""
  last = None
  for header, tokens, fhat in decode_tokens(model, f, **kwargs):
    if tokens or last is None:
      last = model.pixels(fhat, header.height, header.width)
    yield last


def decode(data: bytes, model: CodecModel, **kwargs) -> np.ndarray:
  """Python API: a progvc stream -> uint8 frames (T, H, W, 3). A stream that ends early decodes
  with a warning that says what arrived (partial=False: a StreamError)."""
  reader = open_stream(io.BytesIO(data), kwargs.pop("partial", True))
  frames = np.stack(list(decode_frames(model, reader, **kwargs)))
  if reader.cut is not None:
    warnings.warn(reader.cut.describe(), stacklevel=2)
  return frames
