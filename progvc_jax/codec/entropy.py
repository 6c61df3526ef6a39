"""Range coding of one chunk: a scale's tokens under per-token float32 probability rows.

The model family is always Categorical(perfect=False): its fast leaky
quantization is a pure function of the float32 row, so the decoder must be
handed bit-identical rows (DESIGN.md section 4).

Every row gets one extra zero column that no token uses. constriction gives
a row's last symbol whatever is left below 2^24 after the others, and float
rounding can leave nothing when its probability is tiny and the row's sum is
not exactly 1 (as with float32 softmax rows): encoding it then panics. With
the extra column last, each real symbol's interval is bounded by the next
cumulative, so it is never empty and ends within 2^24; the unused symbol
costs about 2^-24 of probability per token.
"""

import constriction
import numpy as np

from progvc_jax.codec.bitstream import StreamError

_FAMILY = constriction.stream.model.Categorical(perfect=False)


def _rows(probs: np.ndarray, m: int) -> np.ndarray:
  """probs (m, V) as a C-contiguous float32 (m, V + 1) array whose last column is 0."""
  p = np.asarray(probs)
  if p.ndim != 2 or p.shape[0] != m or p.shape[1] < 1:
    raise ValueError(f"probabilities must be ({m}, V) with V >= 1, got {p.shape}")
  rows = np.zeros((m, p.shape[1] + 1), np.float32)
  rows[:, :-1] = p
  return rows


def encode_chunk(tokens: np.ndarray, probs: np.ndarray) -> bytes:
  """Range-codes tokens (M,) under probs (M, V); trailing zero bytes are dropped (the decoder restores them)."""
  t = np.asarray(tokens)
  if t.ndim != 1 or (t.size and not np.issubdtype(t.dtype, np.integer)):
    raise ValueError(f"tokens must be a 1-D integer array, got {t.dtype} {t.shape}")
  p = _rows(probs, t.shape[0])
  v = p.shape[1] - 1
  if t.size and (t.min() < 0 or t.max() >= v):
    raise ValueError(f"tokens must be in 0..{v - 1}, got {t.min()}..{t.max()}")
  encoder = constriction.stream.queue.RangeEncoder()
  encoder.encode(t.astype(np.int32), _FAMILY, p)
  return encoder.get_compressed().astype("<u4").tobytes().rstrip(b"\0")


def decode_chunk(payload: bytes, probs: np.ndarray) -> np.ndarray:
  """The (M,) int32 tokens of a payload, M = len(probs); StreamError if the payload cannot be theirs."""
  p = _rows(probs, len(probs))
  data = bytes(payload)
  words = np.frombuffer(data + b"\0" * (-len(data) % 4), dtype="<u4").astype(np.uint32)
  decoder = constriction.stream.queue.RangeDecoder(words)
  try:
    tokens = decoder.decode(_FAMILY, p)
  except (KeyboardInterrupt, SystemExit):
    raise
  except BaseException as e:  # invalid data raises assorted types, a Rust panic even a BaseException
    raise StreamError(f"corrupt chunk: the range decoder failed ({type(e).__name__}: {e})") from None
  tokens = np.asarray(tokens, dtype=np.int32)
  if tokens.size and tokens.max() >= p.shape[1] - 1:
    raise StreamError("corrupt chunk: it decodes to the unused extra symbol")
  # A valid payload is used up exactly; leftover words mean corruption or other probabilities.
  if not decoder.maybe_exhausted():
    raise StreamError("corrupt chunk: data left over after its tokens")
  return tokens


def cross_entropy_bits(tokens: np.ndarray, probs: np.ndarray) -> float:
  """Sum over tokens of -log2 p(token) under the (row-normalized) probabilities: the model's rate."""
  t = np.asarray(tokens).reshape(-1)
  p = np.asarray(probs).reshape(t.shape[0], -1)
  picked = p[np.arange(t.shape[0]), t].astype(np.float64) / p.sum(axis=1, dtype=np.float64)
  with np.errstate(divide="ignore"):
    return float(-np.log2(picked).sum())
