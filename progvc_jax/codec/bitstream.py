"""The progvc container: header, frames of range-coded chunks, and chunk-dropping truncation.

Layout (version 2; varint = unsigned LEB128, u32 = 4 bytes little-endian):
  b"PGVC" | version u8 | width, height, fps_num, fps_den varints | frame_count u32 |
  gop, tile, downsample, K, schedule p_1..p_K, vocab_size, colour varints | fingerprint 8 bytes |
  header checksum 2 bytes LE (low 16 bits of crc32 of everything after the magic)
then frame_count frames, each
  (kind << 7) | scales_sent  (kind 0 = I, 1 = P; 1 <= scales_sent <= K)
  per sent scale: payload length varint | token checksum u8 | payload.
frame_count is fixed-width so that a writer can patch it once the frames are known.
There is nothing else: at 0.02 bpp a 640x480 frame is ~770 bytes, and every
container byte counts there.

The number of scales may go down at any frame but up only at an I-frame: a
P-frame's context at scale k is the previous frame's scale k, so it cannot
use scales its predecessor did not send. Writer, Reader and truncate enforce it.
"""

import dataclasses
import io
import zlib
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterator

import numpy as np

MAGIC = b"PGVC"
VERSION = 2
# Version 1 streams were coded with float32 probabilities, which decode only
# where floats round alike; version 2 codes with the integer path's frequencies.
_OLD_VERSIONS = {1: "its probabilities were float32, which decode only on a machine that rounds exactly like "
                    "the encoder's; re-encode the video with this progvc"}
I_FRAME, P_FRAME = 0, 1
MAX_SCALES = 127  # the frame byte's low 7 bits
FINGERPRINT_BYTES = 8
_MAX_VARINT_BYTES = 10  # 64-bit values; longer runs of continuation bits are corruption
_READ_BLOCK = 1 << 20  # a corrupt length on an unsized source is read in blocks, never allocated at once


class StreamError(ValueError):
  """A progvc stream that is corrupt, truncated, inconsistent or not a progvc stream at all."""


def encode_varint(n: int) -> bytes:
  """n >= 0 as unsigned LEB128."""
  if n < 0:
    raise ValueError(f"varint must be non-negative, got {n}")
  out = bytearray()
  while n >= 0x80:
    out.append((n & 0x7F) | 0x80)
    n >>= 7
  out.append(n)
  return bytes(out)


def _read_varint(next_byte: Callable[[], int], where: str) -> int:
  value = 0
  for i in range(_MAX_VARINT_BYTES):
    b = next_byte()
    value |= (b & 0x7F) << (7 * i)
    if b < 0x80:
      return value
  raise StreamError(f"{where}: varint longer than {_MAX_VARINT_BYTES} bytes")


def decode_varint(data: bytes, pos: int = 0) -> tuple[int, int]:
  """Reads an unsigned LEB128 at data[pos:]; returns (value, position after it)."""
  start = pos

  def next_byte() -> int:
    nonlocal pos
    if pos >= len(data):
      raise StreamError(f"varint at byte {start}: truncated")
    pos += 1
    return data[pos - 1]

  value = _read_varint(next_byte, f"varint at byte {start}")
  return value, pos


def token_checksum(tokens: np.ndarray) -> int:
  """8-bit checksum of token values (row-major, any integer dtype or shape)."""
  t = np.asarray(tokens)
  if t.size:
    if not np.issubdtype(t.dtype, np.integer):
      raise ValueError(f"tokens must be integers, got {t.dtype}")
    if t.min() < 0 or t.max() > 0xFFFF:
      raise ValueError(f"tokens must be in 0..65535, got {t.min()}..{t.max()}")
  return zlib.crc32(t.ravel().astype("<u2").tobytes()) & 0xFF


@dataclass(frozen=True)
class Header:
  """What a decoder needs before the first frame; every field is checked on construction."""
  width: int
  height: int
  fps_num: int
  fps_den: int
  frame_count: int
  gop: int
  tile: int
  downsample: int
  schedule: tuple[int, ...]
  vocab_size: int
  colour: int
  fingerprint: bytes

  def __post_init__(self):
    object.__setattr__(self, "schedule", tuple(int(p) for p in self.schedule))
    object.__setattr__(self, "fingerprint", bytes(self.fingerprint))
    # Bounds are generous but finite, so a crafted header cannot ask for absurd allocations.
    limits = {"width": (1, 1 << 16), "height": (1, 1 << 16), "fps_num": (1, 1 << 32), "fps_den": (1, 1 << 32),
              "frame_count": (0, (1 << 32) - 1), "gop": (1, (1 << 32) - 1), "tile": (1, 1 << 12),
              "downsample": (1, 1 << 10), "vocab_size": (2, 1 << 16), "colour": (0, 255)}
    for name, (lo, hi) in limits.items():
      value = getattr(self, name)
      if not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
        raise StreamError(f"implausible header: {name} {value!r} not in {lo}..{hi}")
      object.__setattr__(self, name, int(value))
    s = self.schedule
    if not 1 <= len(s) <= MAX_SCALES:
      raise StreamError(f"implausible header: {len(s)} scales, expected 1..{MAX_SCALES}")
    if s[0] < 1 or any(a >= b for a, b in zip(s, s[1:])) or s[-1] != self.tile:
      raise StreamError(f"implausible header: scale schedule {list(s)} must rise strictly from >= 1 to the tile "
                        f"{self.tile}")
    if len(self.fingerprint) != FINGERPRINT_BYTES:
      raise StreamError(f"implausible header: fingerprint of {len(self.fingerprint)} bytes, "
                        f"expected {FINGERPRINT_BYTES}")

  @property
  def num_scales(self) -> int:
    return len(self.schedule)

  def to_bytes(self) -> bytes:
    body = bytearray([VERSION])
    for v in (self.width, self.height, self.fps_num, self.fps_den):
      body += encode_varint(v)
    body += self.frame_count.to_bytes(4, "little")
    for v in (self.gop, self.tile, self.downsample, self.num_scales, *self.schedule, self.vocab_size, self.colour):
      body += encode_varint(v)
    body += self.fingerprint
    return MAGIC + bytes(body) + (zlib.crc32(body) & 0xFFFF).to_bytes(2, "little")


@dataclass
class Chunk:
  """One scale of one frame: the range-coded tokens and the checksum of their values."""
  payload: bytes
  checksum: int


@dataclass
class Frame:
  """One frame: I_FRAME or P_FRAME, and the chunks of its first `scales` scales."""
  kind: int
  chunks: list[Chunk]

  @property
  def scales(self) -> int:
    return len(self.chunks)


def _check_frame(index: int, kind: int, scales: int, prev_scales: int | None, num_scales: int) -> None:
  """The sequence rules shared by Writer and Reader; prev_scales is None before the first frame."""
  if kind not in (I_FRAME, P_FRAME):
    raise StreamError(f"frame {index}: kind {kind} is neither I (0) nor P (1)")
  if not 1 <= scales <= num_scales:
    raise StreamError(f"frame {index}: {scales} scales sent, the stream has 1..{num_scales}")
  if kind == P_FRAME:
    if prev_scales is None:
      raise StreamError(f"frame {index}: the first frame is a P-frame, it must be an I-frame")
    if scales > prev_scales:
      raise StreamError(f"frame {index}: P-frame sends {scales} scales after a frame with {prev_scales}; "
                        "the scale count may rise only at an I-frame")


def frame_container_bytes(frame: Frame, scales: int | None = None) -> int:
  """The container's own bytes of a frame (cut to its first `scales` chunks): type byte, lengths, checksums."""
  return 1 + sum(len(encode_varint(len(c.payload))) + 1 for c in frame.chunks[:scales])


def frame_bytes(frame: Frame, scales: int | None = None) -> int:
  """All bytes a frame (cut to its first `scales` chunks) takes in the stream."""
  return frame_container_bytes(frame, scales) + sum(len(c.payload) for c in frame.chunks[:scales])


class Writer:
  """Writes a stream to a binary file object: the header at once, then `write` per frame, then `finish`.

  A seekable file gets the real frame count patched into the header by `finish`;
  otherwise the header's frame_count must already be right.
  """

  def __init__(self, f: BinaryIO, header: Header):
    self.f, self.header = f, header
    self._start = f.tell() if f.seekable() else None
    head = header.to_bytes()
    f.write(head)
    self.container_bytes, self.payload_bytes = len(head), 0
    self.frames = 0
    self._prev_scales: int | None = None
    self._finished = False

  def write(self, frame: Frame) -> None:
    if self._finished:
      raise StreamError("write after finish")
    _check_frame(self.frames, frame.kind, frame.scales, self._prev_scales, self.header.num_scales)
    out = bytearray([(frame.kind << 7) | frame.scales])
    for k, chunk in enumerate(frame.chunks):
      if not 0 <= chunk.checksum <= 0xFF:
        raise StreamError(f"frame {self.frames} scale {k + 1}: checksum {chunk.checksum} not in 0..255")
      out += encode_varint(len(chunk.payload))
      out.append(chunk.checksum)
      out += chunk.payload
    self.f.write(out)
    self.container_bytes += frame_container_bytes(frame)
    self.payload_bytes += sum(len(c.payload) for c in frame.chunks)
    self.frames += 1
    self._prev_scales = frame.scales

  def finish(self) -> None:
    """Makes the header's frame count true (patching it when the file is seekable); does not close f."""
    if self._finished:
      return
    if self.frames != self.header.frame_count:
      if self._start is None:
        raise StreamError(f"{self.frames} frames written but the header says {self.header.frame_count}, "
                          "and the output cannot be patched (not seekable)")
      self.header = dataclasses.replace(self.header, frame_count=self.frames)
      end = self.f.tell()
      self.f.seek(self._start)
      self.f.write(self.header.to_bytes())  # same length: frame_count is fixed-width
      self.f.seek(end)
    self._finished = True


class Reader:
  """Reads and checks the header of a binary file object; iterating yields its frames, each checked.

  Never reads a length before knowing the bytes are there (seekable sources)
  or reads it in bounded blocks (others), so a corrupt length cannot exhaust memory.
  """

  def __init__(self, f: BinaryIO):
    self.f = f
    self._left: int | None = None
    if f.seekable():
      pos = f.tell()
      self._left = f.seek(0, io.SEEK_END) - pos
      f.seek(pos)
    self._where, self._body = "header", None
    magic = self._read(len(MAGIC), allow_short=True)
    if not magic:
      raise StreamError("not a progvc stream (empty)")
    if magic != MAGIC:
      raise StreamError(f"not a progvc stream (starts with {magic[:4]!r}, expected {MAGIC!r})")
    self._body = bytearray()  # the header's bytes after the magic, for its checksum
    version = self._byte()
    if version in _OLD_VERSIONS:
      raise StreamError(f"progvc stream version {version} is no longer decoded (this progvc reads version "
                        f"{VERSION}): {_OLD_VERSIONS[version]}")
    if version != VERSION:
      raise StreamError(f"unsupported progvc stream version {version} (this progvc reads version {VERSION})")
    self.header = self._read_header()
    self._body = None

  def _read(self, n: int, allow_short: bool = False) -> bytes:
    if self._left is not None:
      if n > self._left and not allow_short:
        raise StreamError(f"{self._where}: truncated ({n} bytes needed, {self._left} left)")
      data = self.f.read(n)
    else:
      parts, got = [], 0
      while got < n:
        part = self.f.read(min(n - got, _READ_BLOCK))
        if not part:
          break
        parts.append(part)
        got += len(part)
      data = b"".join(parts)
    if len(data) < n and not allow_short:
      raise StreamError(f"{self._where}: truncated ({n} bytes needed, {len(data)} left)")
    if self._left is not None:
      self._left -= len(data)
    if self._body is not None:
      self._body += data
    return data

  def _byte(self) -> int:
    return self._read(1)[0]

  def _varint(self) -> int:
    return _read_varint(self._byte, self._where)

  def _read_header(self) -> Header:
    self._where = "corrupt or truncated header"
    width, height, fps_num, fps_den = (self._varint() for _ in range(4))
    frame_count = int.from_bytes(self._read(4), "little")
    gop, tile, downsample, k = (self._varint() for _ in range(4))
    if not 1 <= k <= MAX_SCALES:
      raise StreamError(f"corrupt header: {k} scales, at most {MAX_SCALES} possible")
    schedule = tuple(self._varint() for _ in range(k))
    vocab_size, colour = self._varint(), self._varint()
    fingerprint = self._read(FINGERPRINT_BYTES)
    body = bytes(self._body)
    self._body = None
    stored = int.from_bytes(self._read(2), "little")
    if stored != zlib.crc32(body) & 0xFFFF:
      raise StreamError("corrupt header (checksum mismatch)")
    return Header(width=width, height=height, fps_num=fps_num, fps_den=fps_den, frame_count=frame_count, gop=gop,
                  tile=tile, downsample=downsample, schedule=schedule, vocab_size=vocab_size, colour=colour,
                  fingerprint=fingerprint)

  def __iter__(self) -> Iterator[Frame]:
    count, k = self.header.frame_count, self.header.num_scales
    prev_scales = None
    for i in range(count):
      self._where = f"frame {i}"
      head = self._read(1, allow_short=True)
      if not head:
        raise StreamError(f"stream truncated: it ends after {i} frames, the header says {count}")
      b = head[0]
      _check_frame(i, b >> 7, b & 0x7F, prev_scales, k)
      chunks = []
      for s in range(b & 0x7F):
        self._where = f"frame {i} scale {s + 1}"
        length = self._varint()
        checksum = self._byte()
        chunks.append(Chunk(self._read(length), checksum))
      prev_scales = len(chunks)
      yield Frame(b >> 7, chunks)
    if self._read(1, allow_short=True):
      raise StreamError(f"trailing data after the {count} frames the header announces "
                        "(wrong frame count, or garbage appended)")


def read_stream(data: bytes) -> tuple[Header, list[Frame]]:
  reader = Reader(io.BytesIO(data))
  return reader.header, list(reader)


def write_stream(header: Header, frames: list[Frame]) -> bytes:
  """The stream of `frames`; the header's frame_count is set to len(frames)."""
  buf = io.BytesIO()
  writer = Writer(buf, header)
  for frame in frames:
    writer.write(frame)
  writer.finish()
  return buf.getvalue()


def truncate(src: BinaryIO, dst: BinaryIO, scales: int, frames: tuple[int, int] | None = None) -> None:
  """Copies src to dst keeping at most `scales` chunks per frame (of frames [a, b) only, if given).

  Nothing is decoded. A cut is refused when the frame after the range is a
  P-frame sending more scales than the cut leaves before it; whatever was
  written to dst by then is not a valid stream (its frame count is short).
  """
  if scales < 1:
    raise StreamError(f"cannot keep {scales} scales: at least 1 is needed")
  reader = Reader(src)
  count = reader.header.frame_count
  a, b = (0, count) if frames is None else frames
  if frames is not None and not 0 <= a < b <= count:
    raise StreamError(f"frame range {a}:{b} is not within the stream's {count} frames (B excluded, A < B)")
  writer = Writer(dst, reader.header)
  prev = None
  for i, frame in enumerate(reader):
    if a <= i < b:
      frame = Frame(frame.kind, frame.chunks[:scales])
    elif i == b and frame.kind == P_FRAME and frame.scales > prev.scales:
      raise StreamError(f"cannot cut frames {a}:{b}: frame {b} is a P-frame with {frame.scales} scales but the cut "
                        f"leaves {prev.scales} in frame {b - 1}; end the range at an I-frame (GOP boundary)")
    writer.write(frame)
    prev = frame
  writer.finish()


def stats(header: Header, frames: list[Frame]) -> dict:
  """Sizes of a stream: total, container's own bytes and share, per frame (all bytes) and per scale (payloads)."""
  per_frame = [frame_bytes(f) for f in frames]
  per_scale = [0] * header.num_scales
  for f in frames:
    for k, c in enumerate(f.chunks):
      per_scale[k] += len(c.payload)
  header_bytes = len(header.to_bytes())
  total = header_bytes + sum(per_frame)
  container = total - sum(per_scale)
  return {"total_bytes": total, "header_bytes": header_bytes, "container_bytes": container,
          "container_share": container / total, "payload_bytes": total - container,
          "bytes_per_frame": per_frame, "bytes_per_scale": per_scale}
