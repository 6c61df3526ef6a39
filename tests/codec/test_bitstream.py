"""Tests of the progvc container: exact round trips, every kind of bad input, truncation and its size."""

import dataclasses
import io
import re
import tracemalloc
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from progvc_jax.codec.bitstream import (FRAMES, I_FRAME, LAYERED, P_FRAME, Chunk, Frame, Header, Reader, StreamError,
                                        Writer, cut_gop, decode_varint, encode_varint, gop_bytes, read_prefix,
                                        read_stream, split_gops, stats, token_checksum, truncate, write_stream)

SCHEDULE_16 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
FINGERPRINT = bytes(range(0xA1, 0xA9))


def _header(schedule: tuple[int, ...] = SCHEDULE_16, **kwargs) -> Header:
  args = dict(width=640, height=480, fps_num=30000, fps_den=1001, frame_count=0, gop=8, tile=schedule[-1],
              downsample=16, schedule=schedule, vocab_size=4096, colour=0, fingerprint=FINGERPRINT)
  return Header(**(args | kwargs))


def _frames(pattern: str, seed: int = 0, sizes: tuple[int, int] = (0, 40)) -> list[Frame]:
  """Frames from a pattern like "I3 P3 P1": kind and scales sent, with random payloads and checksums."""
  rng = np.random.default_rng(seed)
  frames = []
  for item in pattern.split():
    chunks = [Chunk(rng.bytes(int(rng.integers(*sizes))), int(rng.integers(256))) for _ in range(int(item[1:]))]
    frames.append(Frame(I_FRAME if item[0] == "I" else P_FRAME, chunks))
  return frames


def _raw(header: Header, frames: list[Frame]) -> bytes:
  """A stream laid out by hand, without the Writer's checks: for streams the Writer refuses."""
  out = bytearray(header.to_bytes())
  for frame in frames:
    out.append((frame.kind << 7) | frame.scales)
    for c in frame.chunks:
      out += encode_varint(len(c.payload)) + bytes([c.checksum]) + c.payload
  return bytes(out)


def _error(data: bytes) -> str:
  with pytest.raises(StreamError) as e:
    read_stream(data)
  return str(e.value)


class _Pipe(io.RawIOBase):
  """A non-seekable source."""

  def __init__(self, data: bytes):
    self._src = io.BytesIO(data)

  def readable(self) -> bool:
    return True

  def readinto(self, buf) -> int:
    return self._src.readinto(buf)


class _Sink(io.RawIOBase):
  """A non-seekable destination."""

  def __init__(self):
    self.data = bytearray()

  def writable(self) -> bool:
    return True

  def write(self, b) -> int:
    self.data += b
    return len(b)


# Round trips and layout.

@pytest.mark.parametrize("n", [0, 1, 127, 128, 16383, 16384, 2**32, 2**64 - 1])
def test_varint_round_trip(n):
  data = encode_varint(n)
  assert len(data) == max(1, -(-n.bit_length() // 7))
  assert decode_varint(b"x" + data + b"y", 1) == (n, 1 + len(data))


def test_varint_errors():
  assert encode_varint(300) == b"\xac\x02"
  with pytest.raises(StreamError, match="truncated"):
    decode_varint(b"\x80\x80")
  with pytest.raises(StreamError, match="longer than"):
    decode_varint(b"\xff" * 11)
  with pytest.raises(ValueError):
    encode_varint(-1)


@pytest.mark.parametrize("schedule,pattern", [
    (SCHEDULE_16, "I10 P10 P9 P5 P5 I3 P3 P1 I10 P10"),
    ((1,), "I1 P1 P1 I1 I1"),
    ((2, 7, 30), "I3 I1 I2 P2 P1 P1"),
    ((1, 2, 3, 4), "I4 P4 I2 P1"),
])
def test_round_trip(schedule, pattern):
  header = _header(schedule, colour=3, gop=4, frame_count=99)
  frames = _frames(pattern)
  data = write_stream(header, frames)
  header2, frames2 = read_stream(data)
  assert header2 == dataclasses.replace(header, frame_count=len(frames))
  assert frames2 == frames
  assert stats(header2, frames2)["total_bytes"] == len(data)


def test_round_trip_large_and_empty_payloads():
  rng = np.random.default_rng(1)
  frames = [Frame(I_FRAME, [Chunk(b"", 0), Chunk(rng.bytes(20000), 255), Chunk(rng.bytes(16384), 1),
                            Chunk(b"", 7)]),
            Frame(P_FRAME, [Chunk(rng.bytes(100000), 9), Chunk(b"", 2)])]
  header = _header((1, 2, 3, 4))
  buf = io.BytesIO()
  writer = Writer(buf, header)
  for f in frames:
    writer.write(f)
  writer.finish()
  data = buf.getvalue()
  assert read_stream(data) == (dataclasses.replace(header, frame_count=2), frames)
  assert writer.payload_bytes == 136384
  assert writer.container_bytes + writer.payload_bytes == len(data)
  assert writer.container_bytes == len(header.to_bytes()) + 1 + (1 + 1) + (3 + 1) + (3 + 1) + (1 + 1) + 1 + (3 + 1) + 2


def test_exact_layout():
  header = Header(width=640, height=480, fps_num=25, fps_den=1, frame_count=0, gop=1, tile=2, downsample=16,
                  schedule=(1, 2), vocab_size=4096, colour=1, fingerprint=FINGERPRINT)
  body = (b"\x02" + b"\x80\x05" + b"\xe0\x03" + b"\x19" + b"\x01" + b"\x02\x00\x00\x00" + b"\x01" + b"\x02"
          + b"\x10" + b"\x02" + b"\x01\x02" + b"\x80\x20" + b"\x01" + FINGERPRINT)
  head = b"PGVC" + body + (zlib.crc32(body) & 0xFFFF).to_bytes(2, "little")
  frames = [Frame(I_FRAME, [Chunk(b"ab", 7), Chunk(b"", 9)]), Frame(P_FRAME, [Chunk(b"\x00" * 130, 200)])]
  expected = head + b"\x02" + b"\x02\x07ab" + b"\x00\x09" + b"\x81" + b"\x82\x01\xc8" + b"\x00" * 130
  assert write_stream(header, frames) == expected
  assert header.num_scales == 2


def test_token_checksum():
  t = np.arange(600).reshape(20, 30) % 4096
  assert token_checksum(t) == token_checksum(t.astype(np.int64).ravel()) == token_checksum(t.astype(np.uint16))
  assert token_checksum(np.asfortranarray(t)) == token_checksum(t)  # values in row-major order, not memory order
  assert token_checksum(t) == zlib.crc32(t.astype("<u2").tobytes()) & 0xFF
  assert 0 <= token_checksum(np.zeros(0, np.int32)) <= 255
  changed = t.copy()
  changed[3, 4] += 1
  assert token_checksum(changed) != token_checksum(t)
  for bad in (np.array([-1]), np.array([65536]), np.array([1.0])):
    with pytest.raises(ValueError):
      token_checksum(bad)


@pytest.mark.parametrize("change,what", [
    (dict(width=0), "width"), (dict(height=70000), "height"), (dict(fps_den=0), "fps_den"), (dict(gop=0), "gop"),
    (dict(vocab_size=65537), "vocab_size"), (dict(colour=256), "colour"), (dict(frame_count=2**32), "frame_count"),
    (dict(schedule=(1, 3, 3, 16)), "schedule"), (dict(schedule=(0, 16)), "schedule"),
    (dict(schedule=(1, 2, 8), tile=16), "schedule"), (dict(schedule=(), tile=16), "scales"),
    (dict(fingerprint=b"1234567"), "fingerprint"),
])
def test_header_refuses_implausible_values(change, what):
  args = dict(width=640, height=480, fps_num=30, fps_den=1, frame_count=0, gop=8, tile=16, downsample=16,
              schedule=SCHEDULE_16, vocab_size=4096, colour=0, fingerprint=FINGERPRINT)
  with pytest.raises(StreamError, match=f"implausible header.*{what}"):
    Header(**(args | change))


def test_reader_refuses_implausible_header_with_valid_checksum():
  good = _header()
  body = bytes([2, 0]) + good.to_bytes()[7:-2]  # a frame-major (version 2) header with width 0 in place of 640's two varint bytes
  data = b"PGVC" + body + (zlib.crc32(body) & 0xFFFF).to_bytes(2, "little")
  assert "implausible header" in _error(data)


# Bad input.

def _small_stream() -> tuple[Header, list[Frame], bytes]:
  header = _header((1, 2, 4), gop=3)
  frames = _frames("I3 P3 P2 I3 P1", seed=3, sizes=(0, 6))
  return header, frames, write_stream(header, frames)


def test_wrong_magic_and_version():
  _, _, data = _small_stream()
  assert "not a progvc stream" in _error(b"RIFF" + data[4:])
  assert "not a progvc stream" in _error(b"")
  assert "not a progvc stream" in _error(b"\x1a\x45\xdf\xa3 a matroska file")
  msg = _error(data[:4] + b"\x06" + data[5:])
  assert "version 6" in msg and "versions 2 to 5" in msg
  # Version 1 (float probabilities) is refused with the reason, in one line.
  msg = _error(data[:4] + b"\x01" + data[5:])
  assert "version 1 is no longer decoded" in msg and "re-encode" in msg and "\n" not in msg


def test_corrupt_header_byte():
  _, _, data = _small_stream()
  n = len(_header((1, 2, 4)).to_bytes())
  for pos in range(5, n):
    for mask in (0x01, 0x10, 0x80, 0xFF):
      bad = bytearray(data)
      bad[pos] ^= mask
      assert re.search("corrupt header|corrupt or truncated header", _error(bytes(bad))), (pos, mask)


def test_truncated_at_every_cut():
  header, _, data = _small_stream()
  n = len(header.to_bytes())
  for cut in range(len(data)):
    msg = _error(data[:cut])
    if cut < 4:
      assert "not a progvc stream" in msg
    elif cut < n:
      assert "header" in msg, (cut, msg)
    else:
      assert re.search(r"frame \d+ .*truncated|truncated: it ends after \d+ frames", msg), (cut, msg)


def test_truncated_message_names_frame_and_scale():
  header = _header((1, 2, 4))
  frames = [Frame(I_FRAME, [Chunk(b"a" * 10, 1), Chunk(b"b" * 10, 2)]), Frame(P_FRAME, [Chunk(b"c" * 10, 3)])]
  data = write_stream(header, frames)
  assert "frame 1 scale 1" in _error(data[:-3])
  assert "frame 0 scale 2" in _error(data[:-15])
  assert "ends after 1 frames" in _error(data[:-13])


def _length_positions(header: Header, frames: list[Frame]) -> list[int]:
  pos, out = len(header.to_bytes()), []
  for frame in frames:
    pos += 1
    for c in frame.chunks:
      v = encode_varint(len(c.payload))
      out += range(pos, pos + len(v))
      pos += len(v) + 1 + len(c.payload)
  return out


def test_flipped_length_bytes():
  header = _header((1, 2, 4), gop=3)
  frames = _frames("I3 P3 P2 I3 P1 P1", seed=5, sizes=(100, 200))  # lengths of 1 and 2 bytes
  data = write_stream(header, frames)
  positions = _length_positions(header, frames)
  assert len(positions) > 13
  for pos in positions:
    for mask in (0x01, 0x04, 0x40, 0x80):
      bad = bytearray(data)
      bad[pos] ^= mask
      assert re.search(r"frame \d|trailing", _error(bytes(bad))), (pos, mask)


@pytest.mark.parametrize("source", [io.BytesIO, _Pipe])
def test_huge_length_fails_fast(source):
  header = _header((1, 2, 4), frame_count=1)
  data = header.to_bytes() + b"\x01" + encode_varint(2**62) + b"\x05" + b"x" * 100
  tracemalloc.start()
  try:
    with pytest.raises(StreamError, match="frame 0 scale 1: truncated"):
      list(Reader(source(data)))
    _, peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  assert peak < 8 * 2**20  # the claimed 2^62 bytes are read in blocks, never allocated at once


def test_p_frame_first():
  header, frames, data = _small_stream()
  n = len(header.to_bytes())
  bad = bytearray(data)
  bad[n] |= 0x80
  msg = _error(bytes(bad))
  assert "frame 0" in msg and "I-frame" in msg


def test_p_frame_raising_scales():
  header = _header((1, 2, 4), frame_count=3)
  data = _raw(header, _frames("I2 P1 P2"))
  msg = _error(data)
  assert "frame 2" in msg and "rise only at an I-frame" in msg
  read_stream(_raw(header, _frames("I2 P1 I2")))  # rising at an I-frame is fine


@pytest.mark.parametrize("byte,what", [(0x00, "0 scales"), (0x04, "4 scales"), (0x7F, "127 scales")])
def test_invalid_frame_byte(byte, what):
  header = _header((1, 2, 4), frame_count=1)
  msg = _error(header.to_bytes() + bytes([byte]) + b"\x00\x00" * 4)
  assert "frame 0" in msg and what in msg


def test_trailing_garbage_and_frame_count_mismatch():
  header, frames, data = _small_stream()
  assert "trailing data after the 5 frames" in _error(data + b"\x00")
  more = _raw(dataclasses.replace(header, frame_count=6), frames)
  assert "ends after 5 frames, the header says 6" in _error(more)
  fewer = _raw(dataclasses.replace(header, frame_count=4), frames)
  assert "trailing data after the 4 frames" in _error(fewer)


# Writer.

def test_writer_refuses_invalid_frames():
  k3 = _header((1, 2, 4))
  cases = [([Frame(P_FRAME, [Chunk(b"", 0)])], "frame 0.*I-frame"),
           (_frames("I2 P1 P2"), "frame 2.*rise only at an I-frame"),
           (_frames("I1") + [Frame(I_FRAME, [])], "frame 1: 0 scales"),
           (_frames("I4"), "frame 0: 4 scales"),
           ([Frame(2, [Chunk(b"", 0)])], "kind 2"),
           ([Frame(I_FRAME, [Chunk(b"", 0), Chunk(b"", 256)])], "frame 0 scale 2: checksum 256")]
  for frames, message in cases:
    writer = Writer(io.BytesIO(), k3)
    with pytest.raises(StreamError, match=message):
      for f in frames:
        writer.write(f)


def test_writer_patches_count_at_its_start_offset():
  header = _header((1, 2, 4))
  frames = _frames("I3 P2 I1")
  buf = io.BytesIO()
  buf.write(b"prefix")
  writer = Writer(buf, header)
  for f in frames:
    writer.write(f)
  writer.finish()
  assert writer.header.frame_count == 3
  assert buf.getvalue()[:6] == b"prefix"
  assert buf.getvalue()[6:] == write_stream(header, frames)
  with pytest.raises(StreamError, match="after finish"):
    writer.write(frames[0])


def test_writer_non_seekable():
  header = _header((1, 2, 4), frame_count=3)
  frames = _frames("I3 P2 I1")
  sink = _Sink()
  writer = Writer(sink, header)
  for f in frames:
    writer.write(f)
  writer.finish()
  assert bytes(sink.data) == write_stream(header, frames)
  writer = Writer(_Sink(), header)
  writer.write(frames[0])
  with pytest.raises(StreamError, match="1 frames written but the header says 3"):
    writer.finish()


def test_reader_non_seekable():
  header, frames, data = _small_stream()
  reader = Reader(_Pipe(data))
  assert (reader.header, list(reader)) == read_stream(data)


# Truncation.

def _truncated(data: bytes, scales: int, frames: tuple[int, int] | None = None) -> bytes:
  out = io.BytesIO()
  truncate(io.BytesIO(data), out, scales, frames)
  return out.getvalue()


def _cut(frames: list[Frame], scales: int, lo: int = 0, hi: int | None = None) -> list[Frame]:
  hi = len(frames) if hi is None else hi
  return [Frame(f.kind, f.chunks[:scales]) if lo <= i < hi else f for i, f in enumerate(frames)]


PATTERN = "I10 P10 P9 I10 P8 P8 I6 P6 P2"


def test_truncate_all_frames():
  header = _header(gop=3)
  frames = _frames(PATTERN, seed=7)
  data = write_stream(header, frames)
  for scales in (1, 5, 9):
    assert _truncated(data, scales) == write_stream(header, _cut(frames, scales))
  assert _truncated(data, 10) == data
  assert _truncated(data, 50) == data
  _, out = read_stream(_truncated(data, 4))
  assert [f.scales for f in out] == [4, 4, 4, 4, 4, 4, 4, 4, 2]
  assert [f.chunks for f in out] == [f.chunks[:4] for f in frames]


def test_truncate_frame_range_ending_at_i_frame():
  header = _header(gop=3)
  frames = _frames(PATTERN, seed=8)
  data = write_stream(header, frames)
  assert _truncated(data, 3, (0, 3)) == write_stream(header, _cut(frames, 3, 0, 3))
  assert _truncated(data, 2, (3, 6)) == write_stream(header, _cut(frames, 2, 3, 6))
  assert _truncated(data, 1, (4, 9)) == write_stream(header, _cut(frames, 1, 4, 9))  # may start inside a GOP
  assert _truncated(data, 9, (0, 2)) == write_stream(header, _cut(frames, 9, 0, 2))  # frame 2 sends 9: no rise
  sink = _Sink()
  truncate(_Pipe(data), sink, 3, (0, 3))
  assert bytes(sink.data) == write_stream(header, _cut(frames, 3, 0, 3))


def test_truncate_refuses_rise_inside_gop():
  frames = _frames(PATTERN, seed=9)
  data = write_stream(_header(gop=3), frames)
  for scales, rng in ((5, (0, 2)), (8, (0, 1)), (1, (3, 5))):
    with pytest.raises(StreamError, match=r"end the range at an I-frame \(GOP boundary\)") as e:
      _truncated(data, scales, rng)
    assert f"frame {rng[1]} is a P-frame" in str(e.value)


@pytest.mark.parametrize("scales,frames,message", [
    (0, None, "at least 1"), (-2, None, "at least 1"), (3, (5, 99), "not within"), (3, (4, 4), "not within"),
    (3, (-1, 2), "not within"),
])
def test_truncate_refuses_bad_arguments(scales, frames, message):
  data = write_stream(_header(gop=3), _frames(PATTERN))
  with pytest.raises(StreamError, match=message):
    _truncated(data, scales, frames)


def test_truncate_checks_its_source():
  _, _, data = _small_stream()
  with pytest.raises(StreamError, match="truncated"):
    _truncated(data[:-2], 1)


# Size.

def test_container_share_at_0p02_bpp():
  """640x480 at 0.02 bpp: ~768 bytes a frame; the container's own bytes stay under 1% of the stream."""
  rng = np.random.default_rng(11)
  header = _header(gop=8)
  frames = []
  for i in range(240):
    sizes = [90, 650, 1650] if i % 8 == 0 else [60, 475]
    sizes = [s + int(rng.integers(-20, 21)) for s in sizes]
    frames.append(Frame(I_FRAME if i % 8 == 0 else P_FRAME, [Chunk(rng.bytes(s), 0) for s in sizes]))
  data = write_stream(header, frames)
  s = stats(*read_stream(data))
  bpp = 8 * len(data) / (640 * 480 * len(frames))
  assert 0.019 < bpp < 0.021
  assert s["total_bytes"] == len(data)
  assert s["container_share"] < 0.01, s["container_share"]
  assert s["container_bytes"] + s["payload_bytes"] == len(data)
  assert s["header_bytes"] + sum(s["bytes_per_frame"]) == len(data)
  assert s["bytes_per_scale"][:3] == [sum(len(f.chunks[k].payload) for f in frames if f.scales > k) for k in range(3)]
  assert s["bytes_per_scale"][3:] == [0] * 7


# Fuzzing: any mutation of a valid stream is read or refused with StreamError, never anything else.

_FUZZ_STREAMS = [write_stream(_header((1, 2, 4), gop=3), _frames("I3 P3 P2 I3 P1", seed=1, sizes=(0, 20))),
                 write_stream(_header(gop=2), _frames("I10 P4 I2 P2", seed=2, sizes=(100, 300))),
                 write_stream(_header((5,)), _frames("I1", seed=3, sizes=(0, 3))),
                 write_stream(_header((1, 2, 4), gop=3, layout=LAYERED),
                              _frames("I3 P3 P2 I3 P1", seed=1, sizes=(0, 20))),
                 write_stream(_header(gop=2, layout=LAYERED), _frames("I10 P4 I2 P2", seed=2, sizes=(100, 300)))]

_MUTATION = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 2**16), st.integers(1, 255)),
    st.tuples(st.just("delete"), st.integers(0, 2**16), st.integers(1, 20)),
    st.tuples(st.just("insert"), st.integers(0, 2**16), st.binary(min_size=1, max_size=20)),
    st.tuples(st.just("truncate"), st.integers(0, 2**16)),
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(range(len(_FUZZ_STREAMS))), st.lists(_MUTATION, min_size=1, max_size=4))
def test_fuzz_mutated_streams(which, mutations):
  data = bytearray(_FUZZ_STREAMS[which])
  for kind, pos, *arg in mutations:
    pos %= len(data) + 1
    if kind == "flip" and pos < len(data):
      data[pos] ^= arg[0]
    elif kind == "delete":
      del data[pos:pos + arg[0]]
    elif kind == "insert":
      data[pos:pos] = arg[0]
    elif kind == "truncate":
      del data[pos:]
  try:
    header, frames = read_stream(bytes(data))
  except StreamError:
    pass
  else:
    assert stats(header, frames)["total_bytes"] <= len(data)
  try:  # read as a prefix: what arrived, or StreamError
    header, frames, cut = read_prefix(bytes(data))
  except StreamError:
    pass
  else:
    assert len(frames) + (cut.missing if cut else 0) == header.frame_count
    assert all(f.scales >= 1 for f in frames)


# The layered layout: each GOP scale by scale, so that any prefix of the stream reads.

LAYERED_PATTERN = "I4 P4 P3 P3 P1 I2 P2 I4 P4 P4"


def _layered(pattern: str = LAYERED_PATTERN, seed: int = 5, **kwargs) -> tuple[Header, list[Frame], bytes]:
  header = _header((1, 2, 3, 4), layout=LAYERED, **kwargs)
  frames = _frames(pattern, seed=seed, sizes=(0, 30))
  return header, frames, write_stream(header, frames)


@pytest.mark.parametrize("schedule,pattern", [
    (SCHEDULE_16, "I10 P10 P9 P5 P5 I3 P3 P1 I10 P10"), ((1,), "I1 P1 P1 I1 I1"), ((2, 7, 30), "I3 I1 I2 P2 P1 P1"),
])
def test_layered_round_trip(schedule, pattern):
  header = _header(schedule, layout=LAYERED, frame_count=99)
  frames = _frames(pattern)
  data = write_stream(header, frames)
  assert data[4] == 3  # version 3: the header has a layout field
  assert read_stream(data) == (dataclasses.replace(header, frame_count=len(frames)), frames)
  assert stats(header, frames)["total_bytes"] == len(data)
  sink = _Sink()  # a pipe in and out
  truncate(_Pipe(data), sink, scales=len(schedule))
  assert bytes(sink.data) == data


def test_layered_exact_layout():
  header = _header((1, 2), layout=LAYERED, frame_count=3)
  frames = [Frame(I_FRAME, [Chunk(b"ab", 7), Chunk(b"", 9)]), Frame(P_FRAME, [Chunk(b"c", 1)]),
            Frame(I_FRAME, [Chunk(b"\x00" * 130, 200)])]
  index = b"\x02" + b"\x02\x01" + b"\x07\x02"  # 2 layers; 2 and 1 frames; 7 and 2 bytes
  gop0 = index + bytes([zlib.crc32(index) & 0xFF]) + b"\x02\x07ab" + b"\x01\x01c" + b"\x00\x09"
  index = b"\x01" + b"\x01" + b"\x85\x01"  # 1 layer of 1 frame, 133 bytes
  gop1 = index + bytes([zlib.crc32(index) & 0xFF]) + b"\x82\x01\xc8" + b"\x00" * 130
  head = header.to_bytes()
  assert head[4] == 3 and head[-11] == LAYERED  # the layout varint just before the fingerprint
  assert write_stream(header, frames) == head + gop0 + gop1


def _arrived(header: Header, frames: list[Frame], cut: int) -> list[list[Chunk]]:
  """The chunks of each frame whose bytes lie wholly in the first `cut` bytes of the stream."""
  pos = len(header.to_bytes())
  out = [[] for _ in frames]
  if header.layout == FRAMES:
    for i, f in enumerate(frames):
      pos += 1
      for c in f.chunks:
        pos += c.size
        if pos <= cut and len(out[i]) == len([x for x in f.chunks if x is c or out[i].count(x)]) - 1:
          out[i].append(c)
    return out
  start = 0
  for gop in split_gops(frames):
    record = gop_bytes(gop, LAYERED)
    pos += record - sum(c.size for f in gop for c in f.chunks)  # the index
    for k in range(max(f.scales for f in gop)):
      for i, f in enumerate(gop):
        if f.scales > k:
          pos += f.chunks[k].size
          if pos <= cut and len(out[start + i]) == k:
            out[start + i].append(f.chunks[k])
    start += len(gop)
  return out


@pytest.mark.parametrize("layout", [LAYERED, FRAMES])
def test_every_prefix_reads_what_arrived(layout):
  header, frames, _ = _layered()
  header = dataclasses.replace(header, layout=layout, frame_count=len(frames))
  data = write_stream(header, frames)
  n = len(header.to_bytes())
  before = 0
  for cut in range(n, len(data) + 1):
    got_header, got, info = read_prefix(data[:cut])
    assert got_header == header
    expected = [c for c in _arrived(header, frames, cut) if c]
    assert [f.chunks for f in got] == expected, cut
    assert [f.kind for f in got] == [f.kind for f in frames[:len(got)]]
    if cut == len(data):
      assert info is None
      continue
    assert info.offset == cut and info.whole + info.reduced + info.missing == len(frames)
    assert info.whole + info.reduced == len(got)
    assert info.whole == sum(1 for f, g in zip(frames, got) if f.chunks == g.chunks)
    total = sum(f.scales for f in got)
    assert total >= before  # more bytes never read fewer chunks
    before = total
    with pytest.raises(StreamError, match="truncated"):
      read_stream(data[:cut])
  if layout == LAYERED:  # a prefix holds every frame of the GOPs it reaches, coarser
    gop = split_gops(frames)[0]
    layer1 = n + gop_bytes(gop, LAYERED) - sum(c.size for f in gop for c in f.chunks) + sum(f.chunks[0].size for f in gop)
    _, got, info = read_prefix(data[:layer1])
    assert [f.chunks for f in got] == [f.chunks[:1] for f in gop]
    assert (info.whole, info.reduced, info.missing) == (1, 4, 5)  # frame 4 sends one scale


def test_layered_index_corruption_is_an_error():
  header, frames, data = _layered()
  n = len(header.to_bytes())
  index = 1 + 4 + 4 + 1  # L, m_1..m_4, B_1..B_4 (one byte each here), checksum
  for pos in range(n, n + index):
    for mask in (0x01, 0x40, 0xFF):
      bad = bytearray(data)
      bad[pos] ^= mask
      for read in (read_stream, read_prefix):
        with pytest.raises(StreamError, match="GOP 0"):
          read(bytes(bad))


def test_layered_writer_refuses_a_gop_without_an_i_frame():
  header, frames, _ = _layered()
  writer = Writer(io.BytesIO(), header)
  writer.write(frames[0])
  writer.end_gop()
  with pytest.raises(StreamError, match="starts with an I-frame"):
    writer.write(frames[1])


def test_cut_gop_keeps_the_most_chunks_that_fit():
  gop = _frames("I4 P4 P3 P3 P1", seed=6, sizes=(1, 60))
  for layout in (LAYERED, FRAMES):
    smallest = gop_bytes([Frame(f.kind, f.chunks[:1]) for f in gop], layout)
    for budget in range(smallest - 3, gop_bytes(gop, layout) + 3):
      kept, fits = cut_gop(gop, budget, layout)
      size = gop_bytes(kept, layout)
      assert fits == (smallest <= budget) and (size <= budget or not fits)
      scales = [f.scales for f in kept]
      assert min(scales) >= 1 and all(a >= b for a, b in zip(scales, scales[1:])), scales
      assert [f.chunks for f in kept] == [f.chunks[:n] for f, n in zip(gop, scales)]
      # Scale-major: one more chunk (the next frame at this scale, or the first at the next) does not fit.
      k = min(s for s, f in zip(scales, gop) if f.scales > s) if any(f.scales > s for s, f in zip(scales, gop)) else None
      if k is not None and fits:
        i = next(i for i, (s, f) in enumerate(zip(scales, gop)) if s == k and f.scales > k)
        more = [Frame(f.kind, f.chunks[:n + (j == i)]) for j, (f, n) in enumerate(zip(gop, scales))]
        assert gop_bytes(more, layout) > budget


@pytest.mark.parametrize("layout", [LAYERED, FRAMES])
def test_truncate_to_a_byte_budget(layout):
  header = _header((1, 2, 3, 4), gop=3, layout=layout)
  frames = _frames(LAYERED_PATTERN, seed=12, sizes=(5, 60))
  data = write_stream(header, frames)
  smallest = len(header.to_bytes()) + sum(gop_bytes([Frame(f.kind, f.chunks[:1]) for f in g], layout)
                                           for g in split_gops(frames))
  sizes = []
  largest_chunk = max(c.size for f in frames for c in f.chunks)
  for max_bytes in range(smallest, len(data) + 40, 13):
    out = io.BytesIO()
    kept = truncate(io.BytesIO(data), out, max_bytes=max_bytes)
    got_header, got = read_stream(out.getvalue())
    assert len(out.getvalue()) == kept["bytes"] <= max_bytes and kept["gops_over_budget"] == 0
    assert got_header == dataclasses.replace(header, frame_count=len(frames))
    assert [g.chunks for g in got] == [f.chunks[:g.scales] for f, g in zip(frames, got)]
    # What a GOP leaves goes to the next, so only the last GOP's remainder is unused: less than a chunk.
    assert kept["bytes"] == len(data) or max_bytes - kept["bytes"] < largest_chunk + 4, (max_bytes, kept)
    sizes.append(kept["bytes"])
  assert sizes[-1] == len(data)
  with pytest.raises(StreamError, match=f"smallest cut, every frame at one scale, takes {smallest}"):
    truncate(io.BytesIO(data), io.BytesIO(), max_bytes=smallest - 1)


def test_truncate_to_a_bitrate_cuts_each_gop():
  header = _header((1, 2, 3, 4), gop=3, fps_num=3, fps_den=1, layout=LAYERED)  # a 3-frame GOP lasts 1 s
  frames = _frames("I4 P4 P4 I4 P4 P4 I4 P4 P4", seed=13, sizes=(20, 80))
  data = write_stream(header, frames)
  gops = split_gops(frames)
  budget = 300
  out = io.BytesIO()
  kept = truncate(io.BytesIO(data), out, kbps=budget * 8 / 1000)
  _, got = read_stream(out.getvalue())
  for g, cut in zip(gops, split_gops(got)):
    assert gop_bytes(cut, LAYERED) <= budget
    assert cut == cut_gop(g, budget, LAYERED)[0]
  assert kept["gops"] == 3 and kept["gops_over_budget"] == 0
  kept = truncate(io.BytesIO(data), io.BytesIO(), kbps=0.001)
  assert kept["gops_over_budget"] == 3
  for bad in (0, -1, float("inf")):
    with pytest.raises(ValueError, match="kbps"):
      truncate(io.BytesIO(data), io.BytesIO(), kbps=bad)
  with pytest.raises(ValueError, match="one of"):
    truncate(io.BytesIO(data), io.BytesIO(), scales=2, kbps=1.0)


def test_truncate_converts_between_layouts():
  header, frames, data = _layered()
  out = io.BytesIO()
  truncate(io.BytesIO(data), out, scales=4, layout=FRAMES)
  assert out.getvalue() == write_stream(dataclasses.replace(header, layout=FRAMES), frames)
  back = io.BytesIO()
  truncate(io.BytesIO(out.getvalue()), back, scales=4, layout=LAYERED)
  assert back.getvalue() == data


def test_layered_container_costs_no_more_than_frame_major_at_0p02_bpp():
  """640x480 at 0.02 bpp, GOPs of 8: the layered index costs less than the frame-major type bytes."""
  rng = np.random.default_rng(11)
  frames = []
  for i in range(240):
    sizes = [90, 650, 1650] if i % 8 == 0 else [60, 475]
    frames.append(Frame(I_FRAME if i % 8 == 0 else P_FRAME,
                        [Chunk(rng.bytes(s + int(rng.integers(-20, 21))), 0) for s in sizes]))
  layered = stats(_header(gop=8, layout=LAYERED), frames)
  major = stats(_header(gop=8), frames)
  assert layered["payload_bytes"] == major["payload_bytes"]
  assert layered["total_bytes"] <= major["total_bytes"] * 1.005
  assert layered["container_share"] < 0.01


# The completion a stream names (version 4; 5 with a weighted mean).

@pytest.mark.parametrize("layout", [FRAMES, LAYERED])
def test_a_named_completion_round_trips_in_either_layout(layout):
  header, frames = _header((1, 2, 3, 4), layout=layout, frame_count=5), _frames("I4 P4 P2 I3 P1", seed=2)
  named = dataclasses.replace(header, completion=("none", "mean:t=3", "mean:t=0.5"))
  data = write_stream(named, frames)
  assert data[4] == 4
  got, out = read_stream(data)
  assert got == named and out == frames
  assert [got.completion_of(k) for k in (1, 2, 3, 4)] == ["none", "mean:t=3", "mean:t=0.5", "none"]
  # The chunks are those of the stream that names nothing, which is written as before (version 2 or 3).
  plain = write_stream(header, frames)
  assert plain[4] == (2 if layout == FRAMES else 3) and read_stream(plain)[0].completion == ()
  assert data[len(named.to_bytes()):] == plain[len(header.to_bytes()):]
  assert write_stream(dataclasses.replace(header, completion=("none",) * 3), frames) == plain
  # Truncation keeps the header's completion.
  assert read_stream(_truncated(data, 2))[0].completion == named.completion
  # A weighted mean makes it version 5; the chunks are the same again.
  weighted = dataclasses.replace(header, completion=("mean:t=3/w=0.25", "mean:t=3", "none"))
  data5 = write_stream(weighted, frames)
  assert data5[4] == 5 and read_stream(data5) == (weighted, frames)
  assert data5[len(weighted.to_bytes()):] == plain[len(header.to_bytes()):]
  assert read_stream(_truncated(data5, 1))[0].completion_of(1) == "mean:t=3/w=0.25"


def test_completion_exact_layout():
  header = Header(width=640, height=480, fps_num=25, fps_den=1, frame_count=0, gop=1, tile=4, downsample=16,
                  schedule=(1, 2, 4), vocab_size=4096, colour=0, fingerprint=FINGERPRINT, layout=LAYERED,
                  completion=("argmax", "mean:t=3"))
  body = (b"\x04" + b"\x80\x05" + b"\xe0\x03" + b"\x19" + b"\x01" + b"\x00\x00\x00\x00" + b"\x01" + b"\x04"
          + b"\x10" + b"\x03" + b"\x01\x02\x04" + b"\x80\x20" + b"\x00" + b"\x01"
          + b"\x02" + b"\x01" + b"\x02\xac\x02" + FINGERPRINT)  # 2 entries: argmax; mean, 300 hundredths
  assert header.to_bytes() == b"PGVC" + body + (zlib.crc32(body) & 0xFFFF).to_bytes(2, "little")
  weighted = dataclasses.replace(header, completion=("mean:t=3/w=0.25", "mean:w=1"))
  body = b"\x05" + body[1:-len(FINGERPRINT) - 5] + b"\x02" + b"\x03\xac\x02\x19" + b"\x02\x64" + FINGERPRINT
  assert weighted.to_bytes() == b"PGVC" + body + (zlib.crc32(body) & 0xFFFF).to_bytes(2, "little")  # w=1: code 2


@pytest.mark.parametrize("completion,message", [
    (("none",), "1 completions for 3 scales"), (("none", "sample"), "none, argmax, mean:t=T or mean:t=T/w=W"),
    (("none", "mean:t=0"), "mean:t=T"), (("none", "mean:k=2"), "mean:t=T"), (("none", "mean:t=inf"), "mean:t=T"),
    (("none", "mean:t=3/w=0"), "0.01 <= W <= 1"), (("none", "mean:t=3/w=1.5"), "0.01 <= W <= 1"),
    (("none", "mean:t=3/t=2"), "mean:t=T"), (("none", "argmax:w=0.5"), "mean:t=T/w=W"),
])
def test_a_completion_a_stream_cannot_name_is_refused(completion, message):
  with pytest.raises(StreamError, match=re.escape(message)):
    _header((1, 2, 4), completion=completion)
  assert _header((1, 2, 4), completion=("none", "mean:t=2.5")).completion == ("none", "mean:t=2.5")
  assert _header((1, 2, 4), completion=("mean", "mean:t=0.014")).completion == ("mean:t=1", "mean:t=0.01")
  assert _header((1, 2, 4), completion=("mean:w=0.5/t=2", "mean:t=3/w=1")).completion == ("mean:t=2/w=0.5",
                                                                                        "mean:t=3")


def test_a_corrupt_completion_field_is_refused():
  header = _header((1, 2, 4), layout=LAYERED, completion=("argmax", "none"))
  good = header.to_bytes()
  field = good.index(bytes([LAYERED, 2, 1, 0]) + FINGERPRINT)  # layout, 2 entries: argmax, none
  for version, bad, message in ((4, bytes([LAYERED, 1, 1]), "1 completions for 3 scales"),
                                (4, bytes([LAYERED, 2, 1, 7]), "completion code 7"),
                                (4, bytes([LAYERED, 2, 3, 100, 50, 0]), "completion code 3"),  # needs version 5
                                (5, bytes([LAYERED, 2, 3, 100, 0, 0]), "completion 'mean:t=1/w=0'"),
                                (5, bytes([LAYERED, 2, 2, 0, 0]), "completion 'mean:t=0'")):
    body = bytes([version]) + good[5:field] + bad + good[field + 4:-2]
    data = b"PGVC" + body + (zlib.crc32(body) & 0xFFFF).to_bytes(2, "little")
    assert message in _error(data)
  body = b"\x05" + good[5:-2]  # version 5 need not name a weighted mean
  assert read_stream(b"PGVC" + body + (zlib.crc32(body) & 0xFFFF).to_bytes(2, "little"))[0] == header
