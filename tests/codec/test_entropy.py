"""Tests of chunk range coding: exact round trips under integer frequencies, size against the rate,
bytes that depend on the integers alone, and corruption handling."""

import constriction
import numpy as np
import pytest

from progvc_jax.codec.bitstream import StreamError, token_checksum
from progvc_jax.codec.entropy import FREQ_BITS, cross_entropy_bits, decode_chunk, encode_chunk
from progvc_jax.models import integer_reference


def _table() -> np.ndarray:
  return np.floor(2.0 ** (14 - np.arange(256) / 256) + 0.5).astype(np.int64)


def _weights(rng: np.random.Generator, m: int, v: int, kind: str) -> np.ndarray:
  """Integer rows (M, V) from integer logits in 1/256 bit, through the format's own `frequencies`."""
  if kind == "skewed":
    z = -1.3 * np.log2(np.arange(1, v + 1))[None] * 256 + rng.normal(0, 400, (m, v))
  elif kind == "peaked":  # one symbol at nearly 1, the rest at the floor of 1/2^24
    z = np.zeros((m, v))
    z[np.arange(m), rng.integers(0, v, m)] = 40 * 256
  else:  # flat
    z = rng.integers(-3, 3, (m, v))
  return integer_reference.frequencies(np.round(z).astype(np.int64), _table())


def _sample(rng: np.random.Generator, w: np.ndarray) -> np.ndarray:
  cdf = np.cumsum(w + 1, axis=1)
  u = rng.integers(0, 1 << FREQ_BITS, (w.shape[0], 1))
  return (cdf <= u).sum(axis=1)


@pytest.mark.parametrize("kind", ["skewed", "peaked", "flat"])
@pytest.mark.parametrize("v", [2, 1024, 4096])
@pytest.mark.parametrize("m", [1, 5, 1000])
def test_round_trip(m, v, kind):
  rng = np.random.default_rng([m, v, len(kind)])
  w = _weights(rng, m, v, kind)
  assert (w >= 0).all() and (w.sum(1) == (1 << FREQ_BITS) - v).all()
  tokens = _sample(rng, w)
  unlikely = rng.random(m) < 0.2  # also symbols the model finds nearly impossible (frequency 1)
  tokens[unlikely] = rng.integers(0, v, unlikely.sum())
  payload = encode_chunk(tokens, w)
  assert not payload.endswith(b"\0")
  decoded = decode_chunk(payload, w)
  assert decoded.dtype == np.int32 and decoded.shape == (m,)
  np.testing.assert_array_equal(decoded, tokens)


def test_stripped_zero_bytes_round_trip():
  rng = np.random.default_rng(3)
  stripped = 0
  for _ in range(3000):
    m, v = int(rng.integers(1, 40)), int(rng.choice([2, 3, 16]))
    w = _weights(rng, m, v, "flat")
    tokens = _sample(rng, w)
    payload = encode_chunk(tokens, w)
    stripped += len(payload) % 4 != 0
    np.testing.assert_array_equal(decode_chunk(payload, w), tokens)
  assert stripped >= 5  # payloads the decoder had to pad back to whole words


def test_empty_payloads():
  certain = np.tile(np.array([[(1 << FREQ_BITS) - 2, 0]]), (50, 1))
  assert encode_chunk(np.zeros(50, np.int64), certain) == b""
  np.testing.assert_array_equal(decode_chunk(b"", certain), np.zeros(50))
  none = np.zeros((0, 7), np.int32)
  assert encode_chunk(np.zeros(0, np.int32), none) == b""
  assert decode_chunk(b"", none).shape == (0,)


def test_size_matches_the_integer_rate():
  rng = np.random.default_rng(4)
  w = _weights(rng, 20000, 512, "skewed")
  tokens = _sample(rng, w)
  payload = encode_chunk(tokens, w)
  rate = cross_entropy_bits(tokens, w) / 8
  assert rate - 1 <= len(payload) <= 1.001 * rate + 8, (len(payload), rate)
  np.testing.assert_array_equal(decode_chunk(payload, w), tokens)


def test_cross_entropy_bits():
  w = np.array([[(1 << 23) - 1, (1 << 22) - 1, (1 << 22) - 1]])
  assert cross_entropy_bits(np.array([0]), w) == pytest.approx(1)
  assert cross_entropy_bits(np.array([1, 2]), np.repeat(w, 2, 0)) == pytest.approx(4)
  assert cross_entropy_bits(np.array([1]), np.array([[(1 << 24) - 2, 0]])) == pytest.approx(24)


def test_bytes_depend_only_on_the_integers():
  """constriction's leaky quantization of a row of integer weights below 2^24 rounds nothing: the same
  bytes whether it computes in float32 or float64, and whether it builds the row's CDF lazily or eagerly."""
  rng = np.random.default_rng(11)
  w = np.concatenate([_weights(rng, 300, 1024, kind) for kind in ("skewed", "peaked", "flat")])
  tokens = _sample(rng, w)
  payload = encode_chunk(tokens, w)
  family = constriction.stream.model.Categorical(perfect=False)
  for dtype in (np.float32, np.float64):
    enc = constriction.stream.queue.RangeEncoder()
    enc.encode(tokens.astype(np.int32), family, np.ascontiguousarray(w, dtype))
    assert enc.get_compressed().astype("<u4").tobytes().rstrip(b"\0") == payload
  eager = constriction.stream.queue.RangeEncoder()
  for t, row in zip(tokens[:200], w[:200]):
    eager.encode(int(t), constriction.stream.model.Categorical(row.astype(np.float64), lazy=False, perfect=False))
  lazy = encode_chunk(tokens[:200], w[:200])
  assert eager.get_compressed().astype("<u4").tobytes().rstrip(b"\0") == lazy


def _chunk(seed: int, m: int = 1000, v: int = 256):
  rng = np.random.default_rng(seed)
  w = _weights(rng, m, v, "skewed")
  tokens = _sample(rng, w)
  return tokens, w, encode_chunk(tokens, w)


def test_flipped_payload_is_detected():
  tokens, w, payload = _chunk(5)
  rng = np.random.default_rng(6)
  caught = 0
  for pos in range(len(payload)):
    bad = bytearray(payload)
    bad[pos] ^= int(rng.integers(1, 256))
    try:
      decoded = decode_chunk(bytes(bad), w)
    except StreamError:
      caught += 1
      continue
    assert not np.array_equal(decoded, tokens), pos
    caught += token_checksum(decoded) != token_checksum(tokens)
  assert caught >= 0.97 * len(payload)


def test_other_frequencies_give_other_tokens():
  tokens, w, payload = _chunk(7)
  try:
    decoded = decode_chunk(payload, np.roll(w, 1, axis=1))
  except StreamError:
    return
  assert np.mean(decoded != tokens) > 0.5


def test_extra_words_are_refused():
  tokens, w, payload = _chunk(8)
  with pytest.raises(StreamError, match="left over"):
    decode_chunk(payload + bytes(range(1, 9)), w)
  with pytest.raises(StreamError, match="corrupt chunk"):
    decode_chunk(payload, w[:10])


def test_deterministic_and_input_layout_independent():
  tokens, w, payload = _chunk(9, m=300, v=64)
  assert encode_chunk(tokens, w) == payload
  assert encode_chunk(tokens.astype(np.int32), w.astype(np.int32)) == payload
  assert encode_chunk(tokens, w.astype(np.float32)) == payload  # the codec's rows: float32 holding the integers
  fortran = np.asfortranarray(w)
  assert encode_chunk(list(tokens), fortran) == payload
  np.testing.assert_array_equal(decode_chunk(bytearray(payload), fortran), tokens)


def test_bad_arguments():
  w = np.full((4, 8), ((1 << FREQ_BITS) - 8) // 8)
  with pytest.raises(ValueError, match=r"\(3, V\)"):
    encode_chunk(np.zeros(3, np.int32), w)
  with pytest.raises(ValueError, match="0..7"):
    encode_chunk(np.array([0, 1, 8, 2]), w)
  with pytest.raises(ValueError, match="1-D"):
    encode_chunk(np.zeros((2, 2), np.int32), w)
  with pytest.raises(ValueError, match="integers"):
    encode_chunk(np.zeros(4, np.int32), w.astype(np.float64))
  off = w.copy()
  off[2, 3] += 1
  with pytest.raises(ValueError, match="sum to"):
    encode_chunk(np.zeros(4, np.int32), off)
  neg = w.copy()
  neg[1, :2] += [-w[1, 0] - 1, w[1, 0] + 1]
  with pytest.raises(ValueError, match=">= 0"):
    encode_chunk(np.zeros(4, np.int32), neg)
