"""Range coding of one chunk: a scale's tokens under the integer path's frequencies.

A chunk's rows are integer weights w (M, V) with w >= 0 and every row
summing to 2^24 - V (models/integer.py `frequencies`). The coder gives symbol
s of a row the frequency w_s + 1 out of 2^24, exactly, so the coded bytes are
a pure function of the integers:

constriction's Categorical(perfect=False) family is its lazy leaky
categorical: for a row p it computes scale = (2^24 - V) / sum(p) and symbol
s's interval [floor(P_s * scale) + s, floor(P_(s+1) * scale) + s + 1), with
P_s = p_0 + ... + p_(s-1) summed in the row's float type, and 2^24 as the
last symbol's upper end. Handed w as float32, every P_s is an integer below
2^24 and so exact in float32 whatever the order of the additions, sum(p) is
exactly 2^24 - V, scale is exactly 1.0, and the interval is exactly
[P_s + s, P_s + s + w_s + 1). No rounding happens anywhere, on any machine
(tests/codec/test_entropy.py: float32 and float64 rows, and constriction's
lazy and eager models, give the same bytes).
"""

import constriction
import numpy as np

from progvc_jax.codec.bitstream import StreamError

FREQ_BITS = 24
_FAMILY = constriction.stream.model.Categorical(perfect=False)


def _rows(weights: np.ndarray) -> np.ndarray:
  """The weights as C-contiguous float32 rows (exact: they are integers below 2^24)."""
  w = np.asarray(weights)
  if w.dtype != np.float32 and not np.issubdtype(w.dtype, np.integer):
    raise ValueError(f"weights must be integers, or float32 holding integers, got {w.dtype}")
  return np.ascontiguousarray(w, dtype=np.float32)


def check_weights(weights: np.ndarray, m: int | None = None) -> np.ndarray:
  """weights (M, V) as float32 rows for the coder; ValueError unless every row is >= 0 and sums
  to 2^24 - V (float32 sums of such integers are exact)."""
  w = _rows(weights)
  if w.ndim != 2 or (m is not None and w.shape[0] != m) or w.shape[1] < 2:
    raise ValueError(f"weights must be ({m if m is not None else 'M'}, V) with V >= 2, got {w.shape}")
  total = (1 << FREQ_BITS) - w.shape[1]
  if w.size and (w.min() < 0 or (w.sum(1, dtype=np.float32) != total).any()):
    raise ValueError(f"weight rows must be >= 0 and sum to 2^{FREQ_BITS} - V = {total}")
  return w


def encode_chunk(tokens: np.ndarray, weights: np.ndarray) -> bytes:
  """Range-codes tokens (M,) under integer weights (M, V); trailing zero bytes are dropped (the decoder restores them)."""
  t = np.asarray(tokens)
  if t.ndim != 1 or (t.size and not np.issubdtype(t.dtype, np.integer)):
    raise ValueError(f"tokens must be a 1-D integer array, got {t.dtype} {t.shape}")
  rows = check_weights(weights, t.shape[0])
  v = rows.shape[1]
  if t.size and (t.min() < 0 or t.max() >= v):
    raise ValueError(f"tokens must be in 0..{v - 1}, got {t.min()}..{t.max()}")
  encoder = constriction.stream.queue.RangeEncoder()
  encoder.encode(t.astype(np.int32), _FAMILY, rows)
  return encoder.get_compressed().astype("<u4").tobytes().rstrip(b"\0")


def decode_chunk(payload: bytes, weights: np.ndarray) -> np.ndarray:
  """The (M,) int32 tokens of a payload, M = len(weights); StreamError if the payload cannot be theirs."""
  rows = _rows(weights)
  data = bytes(payload)
  words = np.frombuffer(data + b"\0" * (-len(data) % 4), dtype="<u4").astype(np.uint32)
  decoder = constriction.stream.queue.RangeDecoder(words)
  try:
    tokens = decoder.decode(_FAMILY, rows)
  except (KeyboardInterrupt, SystemExit):
    raise
  except BaseException as e:  # invalid data raises assorted types, a Rust panic even a BaseException
    raise StreamError(f"corrupt chunk: the range decoder failed ({type(e).__name__}: {e})") from None
  tokens = np.asarray(tokens, dtype=np.int32)
  # A valid payload is used up exactly; leftover words mean corruption or other probabilities.
  if not decoder.maybe_exhausted():
    raise StreamError("corrupt chunk: data left over after its tokens")
  return tokens


def cross_entropy_bits(tokens: np.ndarray, weights: np.ndarray) -> float:
  """Sum over tokens of -log2((w_token + 1) / 2^24): the ideal size of the chunk in bits."""
  t = np.asarray(tokens).reshape(-1)
  w = np.asarray(weights).reshape(t.shape[0], -1)
  picked = w[np.arange(t.shape[0]), t].astype(np.float64) + 1.0
  return float(FREQ_BITS * t.shape[0] - np.log2(picked).sum())
