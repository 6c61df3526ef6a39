"""Tests of chunk range coding: exact round trips, size against the model's rate, and corruption handling."""

import numpy as np
import pytest

from progvc_jax.codec.bitstream import StreamError, token_checksum
from progvc_jax.codec.entropy import cross_entropy_bits, decode_chunk, encode_chunk


def _sample(rng: np.random.Generator, p: np.ndarray) -> np.ndarray:
  cdf = np.cumsum(p.astype(np.float64), axis=1)
  u = rng.random((p.shape[0], 1)) * cdf[:, -1:]
  return np.minimum((cdf <= u).sum(axis=1), p.shape[1] - 1)


def _probs(rng: np.random.Generator, m: int, v: int, kind: str) -> np.ndarray:
  if kind == "dirichlet":
    p = rng.dirichlet(np.full(v, 0.1), size=m)
  elif kind == "peaked":  # one symbol at ~1, the rest at 1e-30
    p = np.full((m, v), 1e-30)
    p[np.arange(m), rng.integers(0, v, m)] = 1.0
  else:  # exact zeros, which the leaky model family still codes
    p = rng.random((m, v)) * (rng.random((m, v)) < 0.5)
    p[:, rng.integers(0, v)] += 0.1
  return p.astype(np.float32)


@pytest.mark.parametrize("kind", ["dirichlet", "peaked", "zeros"])
@pytest.mark.parametrize("v", [2, 1024, 4096])
@pytest.mark.parametrize("m", [1, 5, 1000])
def test_round_trip(m, v, kind):
  rng = np.random.default_rng([m, v, len(kind)])
  p = _probs(rng, m, v, kind)
  tokens = _sample(rng, p)
  unlikely = rng.random(m) < 0.2  # also symbols the model finds (nearly) impossible
  tokens[unlikely] = rng.integers(0, v, unlikely.sum())
  payload = encode_chunk(tokens, p)
  assert not payload.endswith(b"\0")
  decoded = decode_chunk(payload, p)
  assert decoded.dtype == np.int32 and decoded.shape == (m,)
  np.testing.assert_array_equal(decoded, tokens)


def test_stripped_zero_bytes_round_trip():
  rng = np.random.default_rng(3)
  stripped = 0
  for _ in range(1000):
    m, v = int(rng.integers(1, 40)), int(rng.choice([2, 3, 16]))
    p = rng.dirichlet(np.full(v, 0.2), size=m).astype(np.float32)
    tokens = _sample(rng, p)
    payload = encode_chunk(tokens, p)
    stripped += len(payload) % 4 != 0
    np.testing.assert_array_equal(decode_chunk(payload, p), tokens)
  assert stripped >= 5  # payloads the decoder had to pad back to whole words


def test_empty_payloads():
  certain = np.tile(np.array([[1.0, 0.0]], np.float32), (50, 1))
  assert encode_chunk(np.zeros(50, np.int64), certain) == b""
  np.testing.assert_array_equal(decode_chunk(b"", certain), np.zeros(50))
  none = np.zeros((0, 7), np.float32)
  assert encode_chunk(np.zeros(0, np.int32), none) == b""
  assert decode_chunk(b"", none).shape == (0,)


def test_last_symbol_with_tiny_probability():
  """Rows whose float32 sum is not exactly 1, coding their last symbol at (nearly) zero probability."""
  rng = np.random.default_rng(12)
  rows = [np.array([[0.1, 0.0]]), np.array([[0.824, 0.0, 1e-8]]), np.array([[3.0, 1.0, 0.0, 0.0]])]
  for v in (2, 5, 40, 4096):
    logits = rng.normal(0, 10, (20, v))
    logits[:, -1] = -200
    soft = np.exp(logits - logits.max(axis=1, keepdims=True))
    rows += [soft / soft.sum(axis=1, keepdims=True) * s for s in (0.999999, 1.000001, 0.99)]
  for p in rows:
    p = p.astype(np.float32)
    tokens = np.full(p.shape[0], p.shape[1] - 1)
    tokens[::3] = 0
    payload = encode_chunk(tokens, p)
    np.testing.assert_array_equal(decode_chunk(payload, p), tokens)


def test_size_matches_cross_entropy():
  rng = np.random.default_rng(4)
  m, v = 20000, 512
  logits = -1.3 * np.log(np.arange(1, v + 1))[None] + rng.normal(0, 1, (m, v))  # skewed, varying per token
  p = np.exp(logits - logits.max(axis=1, keepdims=True))
  p = (p / p.sum(axis=1, keepdims=True)).astype(np.float32)
  tokens = _sample(rng, p)
  payload = encode_chunk(tokens, p)
  rate = cross_entropy_bits(tokens, p) / 8
  assert 0.99 * rate - 8 <= len(payload) <= 1.01 * rate + 8, (len(payload), rate)
  np.testing.assert_array_equal(decode_chunk(payload, p), tokens)


def test_cross_entropy_bits():
  p = np.array([[0.5, 0.25, 0.25], [0.5, 0.25, 0.25], [2.0, 1.0, 1.0]], np.float32)
  assert cross_entropy_bits(np.array([0, 1, 2]), p) == pytest.approx(1 + 2 + 2)
  assert cross_entropy_bits(np.array([1]), np.array([[1.0, 0.0]], np.float32)) == np.inf


def _chunk(seed: int, m: int = 1000, v: int = 256):
  rng = np.random.default_rng(seed)
  p = rng.dirichlet(np.full(v, 0.05), size=m).astype(np.float32)
  tokens = _sample(rng, p)
  return tokens, p, encode_chunk(tokens, p)


def test_flipped_payload_is_detected():
  tokens, p, payload = _chunk(5)
  rng = np.random.default_rng(6)
  caught = 0
  for pos in range(len(payload)):
    bad = bytearray(payload)
    bad[pos] ^= int(rng.integers(1, 256))
    try:
      decoded = decode_chunk(bytes(bad), p)
    except StreamError:
      caught += 1
      continue
    assert not np.array_equal(decoded, tokens), pos
    caught += token_checksum(decoded) != token_checksum(tokens)
  assert caught >= 0.97 * len(payload)


def test_other_probabilities_give_other_tokens():
  tokens, p, payload = _chunk(7)
  q = np.roll(p, 1, axis=1)
  try:
    decoded = decode_chunk(payload, q)
  except StreamError:
    return
  assert np.mean(decoded != tokens) > 0.5


def test_extra_words_are_refused():
  tokens, p, payload = _chunk(8)
  with pytest.raises(StreamError, match="left over"):
    decode_chunk(payload + bytes(range(1, 9)), p)
  with pytest.raises(StreamError, match="corrupt chunk"):
    decode_chunk(payload, p[:10])


def test_deterministic_and_input_layout_independent():
  tokens, p, payload = _chunk(9, m=300, v=64)
  assert encode_chunk(tokens, p) == payload
  assert encode_chunk(tokens.astype(np.int32), p.astype(np.float64)) == payload
  fortran = np.asfortranarray(p)
  assert encode_chunk(list(tokens), fortran) == payload
  np.testing.assert_array_equal(decode_chunk(bytearray(payload), fortran), tokens)


def test_bad_arguments():
  p = np.full((4, 8), 0.125, np.float32)
  with pytest.raises(ValueError, match="probabilities"):
    encode_chunk(np.zeros(3, np.int32), p)
  with pytest.raises(ValueError, match="probabilities"):
    decode_chunk(b"", p[0])
  with pytest.raises(ValueError, match="0..7"):
    encode_chunk(np.array([0, 1, 8, 2]), p)
  with pytest.raises(ValueError, match="1-D"):
    encode_chunk(np.zeros((2, 2), np.int32), p)
