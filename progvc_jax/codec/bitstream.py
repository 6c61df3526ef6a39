"""The progvc container: header, then the frames' range-coded chunks in one of two layouts.

Header (varint = unsigned LEB128, u32 = 4 bytes little-endian):
  b"PGVC" | version u8 | width, height, fps_num, fps_den varints | frame_count u32 |
  gop, tile, downsample, K, schedule p_1..p_K, vocab_size, colour varints | [layout varint, version >= 3] |
  [completion: C varint (0 or K - 1), then C entries, version >= 4] | fingerprint 8 bytes |
  header checksum 2 bytes LE (low 16 bits of crc32 of everything after the magic)
A chunk is one scale of one frame: payload length varint | token checksum u8 | payload.

Version 2 is the frame-major layout (FRAMES): frame after frame, each
  (kind << 7) | scales_sent  (kind 0 = I, 1 = P; 1 <= scales_sent <= K), then its chunks, scale 1 first.
Version 3 adds the layout field; LAYERED (1) groups the frames into GOPs, each
starting at an I-frame (the others are P-frames), and sends scale 1 of every
frame of the GOP, then scale 2 of every frame, and so on:
  L varint (layers, 1..K) | m_1..m_L varints (frames sending scale k) | B_1..B_L varints (layer bytes) |
  index checksum u8 (low 8 bits of crc32 of the index from L on) | layer 1 | ... | layer L
where layer k holds the chunks of scale k of the GOP's first m_k frames
(m_1 = the GOP's frame count >= m_2 >= ... >= m_L >= 1), in frame order. So
any byte prefix of a layered stream holds every GOP before it whole and the
last one at the scales that arrived: the whole video, coarser (`Reader` with
partial=True reads such a prefix). Frame-major is for low latency: a frame is
whole as soon as its bytes arrive, a layered GOP only once all of it has.
Version 4 (either layout) adds the completion the encoder chose: entry k says how a decoder
that follows the stream fills the scales of a frame that arrived with k of
its K scales: 0 = none, 1 = argmax, 2 = mean followed by its temperature in
hundredths (varint). A stream whose completion is `none` at every k is
written as version 2 or 3, byte for byte what progvc wrote before.
Version 5 adds entry code 3 = mean with a weight below 1 (the share of the
expected residual the pixels get): its temperature, then the weight, both in
hundredths (varints). A stream that names no such entry is written as version 4.

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
VERSION = 5  # the newest this progvc writes: with a weighted mean completion (else 4, 3, or 2: Header.version)
FRAMES, LAYERED = 0, 1
LAYOUTS = {"frames": FRAMES, "layered": LAYERED}
LAYOUT_NAMES = {v: k for k, v in LAYOUTS.items()}
_READ_VERSIONS = (2, 3, 4, 5)
# The completions a stream can name (a decoder's `complete="stream"` follows them): `sample` is not among
# them, since its frames depend on the decoder's seed. Their codes in the header: the index here, and 3 for
# `mean` with a weight below 1 (version 5).
STREAM_COMPLETIONS = ("none", "argmax", "mean")
_WEIGHTED_MEAN = 3
_MAX_TEMPERATURE_HUNDREDTHS = 10_000
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
  layout: int = FRAMES
  # completion[k - 1]: how a frame that arrived with k scales is completed (`canonical_completion` strings:
  # "none", "argmax", "mean:t=T", "mean:t=T/w=W"); () for none at every k.
  completion: tuple[str, ...] = ()

  def __post_init__(self):
    object.__setattr__(self, "schedule", tuple(int(p) for p in self.schedule))
    completion = tuple(canonical_completion(c) for c in self.completion)
    if completion and len(completion) != len(self.schedule) - 1:
      raise StreamError(f"implausible header: {len(completion)} completions for {len(self.schedule)} scales, "
                        f"expected {len(self.schedule) - 1} (one per scale count below the maximum) or none")
    object.__setattr__(self, "completion", () if all(c == "none" for c in completion) else completion)
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
    if self.layout not in LAYOUT_NAMES:
      raise StreamError(f"unknown layout {self.layout!r}: this progvc knows {sorted(LAYOUT_NAMES)} "
                        f"({', '.join(LAYOUTS)})")

  @property
  def num_scales(self) -> int:
    return len(self.schedule)

  def completion_of(self, scales: int) -> str:
    """The completion this stream names for a frame that arrived with `scales` scales ("none" at all scales)."""
    return self.completion[scales - 1] if self.completion and scales < self.num_scales else "none"

  @property
  def version(self) -> int:
    """5 with a weighted mean completion, 4 with another; else 2 for the frame-major layout (what progvc wrote
    before layouts), 3 otherwise."""
    if any(_completion_fields(c)[2] < 100 for c in self.completion):
      return 5
    return 4 if self.completion else 2 if self.layout == FRAMES else 3

  def to_bytes(self) -> bytes:
    body = bytearray([self.version])
    for v in (self.width, self.height, self.fps_num, self.fps_den):
      body += encode_varint(v)
    body += self.frame_count.to_bytes(4, "little")
    for v in (self.gop, self.tile, self.downsample, self.num_scales, *self.schedule, self.vocab_size, self.colour):
      body += encode_varint(v)
    if self.version >= 3:
      body += encode_varint(self.layout)
    if self.version >= 4:
      body += encode_varint(len(self.completion))
      for c in self.completion:
        body += _completion_bytes(c)
    body += self.fingerprint
    return MAGIC + bytes(body) + (zlib.crc32(body) & 0xFFFF).to_bytes(2, "little")


def _completion_fields(setting: str) -> tuple[str, int, int]:
  """A completion a stream can name -> (mode, temperature, weight), both in hundredths (100 where they do
  not apply); a StreamError otherwise."""
  mode, _, rest = str(setting).partition(":")
  if mode in ("none", "argmax") and not rest:
    return mode, 100, 100
  if mode == "mean":
    items = [item.partition("=") for item in rest.split("/")] if rest else []
    values = {"t": 100, "w": 100}
    for key, _, value in items:
      try:
        number = float(value)
      except ValueError:
        number = float("nan")
      values[key] = round(number * 100) if number == number and abs(number) < float("inf") else -1
    t, w = values["t"], values["w"]
    keys = [key for key, _, _ in items]
    if (set(keys) <= {"t", "w"} and len(set(keys)) == len(keys) and 1 <= t <= _MAX_TEMPERATURE_HUNDREDTHS
        and 1 <= w <= 100):
      return mode, t, w
  raise StreamError(f"a stream's completion must be none, argmax, mean:t=T or mean:t=T/w=W with 0.01 <= T <= "
                    f"{_MAX_TEMPERATURE_HUNDREDTHS // 100} and 0.01 <= W <= 1, got {setting!r}")


def canonical_completion(setting: str) -> str:
  """"none", "argmax", "mean:t=T" or "mean:t=T/w=W" (0.01 <= T <= 100, 0.01 <= W < 1, both kept to hundredths;
  T defaults to 1, W to 1, which is left out) in one spelling; a StreamError otherwise."""
  mode, t, w = _completion_fields(setting)
  if mode != "mean":
    return mode
  return f"mean:t={t / 100:g}" + (f"/w={w / 100:g}" if w < 100 else "")


def completion_parts(setting: str) -> tuple[str, float, float]:
  """A completion a stream can name -> (mode, temperature, weight): "mean:t=3/w=0.5" -> ("mean", 3.0, 0.5),
  "none" -> ("none", 1.0, 1.0)."""
  mode, t, w = _completion_fields(setting)
  return mode, t / 100, w / 100


def _completion_bytes(setting: str) -> bytes:
  mode, t, w = _completion_fields(setting)
  if mode != "mean":
    return encode_varint(STREAM_COMPLETIONS.index(mode))
  if w < 100:
    return encode_varint(_WEIGHTED_MEAN) + encode_varint(t) + encode_varint(w)
  return encode_varint(STREAM_COMPLETIONS.index("mean")) + encode_varint(t)


@dataclass
class Chunk:
  """One scale of one frame: the range-coded tokens and the checksum of their values."""
  payload: bytes
  checksum: int

  def to_bytes(self) -> bytes:
    return encode_varint(len(self.payload)) + bytes([self.checksum]) + self.payload

  @property
  def size(self) -> int:
    """Its bytes in the stream: length, checksum and payload."""
    return len(encode_varint(len(self.payload))) + 1 + len(self.payload)


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
  """The frame-major layout's own bytes of a frame (cut to its first `scales` chunks): type byte, lengths,
  checksums."""
  return 1 + sum(c.size - len(c.payload) for c in frame.chunks[:scales])


def frame_bytes(frame: Frame, scales: int | None = None) -> int:
  """All bytes a frame (cut to its first `scales` chunks) takes in a frame-major stream."""
  return 1 + sum(c.size for c in frame.chunks[:scales])


def split_gops(frames: list[Frame]) -> list[list[Frame]]:
  """The frames in runs from each I-frame to the next (a leading run of P-frames, as a frame
  range can start with, is a run of its own)."""
  gops: list[list[Frame]] = []
  for frame in frames:
    if frame.kind == I_FRAME or not gops:
      gops.append([])
    gops[-1].append(frame)
  return gops


def _layer_counts(gop: list[Frame]) -> list[int]:
  """m_k for k = 1..L: how many of a GOP's frames send scale k (the first m_k, as counts do not rise in a GOP)."""
  return [sum(1 for f in gop if f.scales > k) for k in range(max(f.scales for f in gop))]


def gop_record(gop: list[Frame]) -> bytes:
  """A GOP (an I-frame and the P-frames after it) in the layered layout: its index, then its layers."""
  counts = _layer_counts(gop)
  layers = [b"".join(f.chunks[k].to_bytes() for f in gop[:m]) for k, m in enumerate(counts)]
  index = encode_varint(len(counts)) + b"".join(map(encode_varint, counts))
  index += b"".join(encode_varint(len(layer)) for layer in layers)
  return index + bytes([zlib.crc32(index) & 0xFF]) + b"".join(layers)


def gop_bytes(gop: list[Frame], layout: int) -> int:
  """All bytes a GOP takes in a stream of the given layout."""
  if layout == LAYERED:
    return len(gop_record(gop))
  return sum(frame_bytes(f) for f in gop)


def cut_gop(gop: list[Frame], budget: float, layout: int) -> tuple[list[Frame], bool]:
  """A GOP cut to the most chunks, taken scale-major (scale 1 of every frame, then scale 2 of every
  frame, ...), whose bytes in `layout` are at most `budget`; at least scale 1 of every frame.

  Scale-major is the layered layout's order, so the cut keeps the first j frames at k scales and the
  rest at k - 1, which the temporal rule allows. Returns (frames, whether they fit the budget).
  """
  order = [i for k in range(max(f.scales for f in gop)) for i, f in enumerate(gop) if f.scales > k]

  def cut(t):
    kept = [0] * len(gop)
    for i in order[:t]:
      kept[i] += 1
    return [Frame(f.kind, f.chunks[:n]) for f, n in zip(gop, kept)]

  lo, hi = len(gop), len(order)  # every frame's scale 1 .. every chunk
  if gop_bytes(cut(lo), layout) > budget:
    return cut(lo), False
  while lo < hi:  # sizes grow with the number of chunks kept
    mid = (lo + hi + 1) // 2
    if gop_bytes(cut(mid), layout) <= budget:
      lo = mid
    else:
      hi = mid - 1
  return cut(lo), True


class Writer:
  """Writes a stream to a binary file object: the header at once, then `write` per frame, then `finish`.

  The layout is the header's. A layered stream holds one GOP (its chunks) until
  the next I-frame or `finish`. A seekable file gets the real frame count
  patched into the header by `finish`; otherwise the header's frame_count must
  already be right.
  """

  def __init__(self, f: BinaryIO, header: Header):
    self.f, self.header = f, header
    self._start = f.tell() if f.seekable() else None
    head = header.to_bytes()
    f.write(head)
    self.container_bytes, self.payload_bytes = len(head), 0
    self.frames = 0  # frames given to `write`
    self.held: list[Frame] = []  # the layered layout's GOP not yet written
    self._prev_scales: int | None = None
    self._finished = False

  def write(self, frame: Frame) -> None:
    if self._finished:
      raise StreamError("write after finish")
    _check_frame(self.frames, frame.kind, frame.scales, self._prev_scales, self.header.num_scales)
    for k, chunk in enumerate(frame.chunks):
      if not 0 <= chunk.checksum <= 0xFF:
        raise StreamError(f"frame {self.frames} scale {k + 1}: checksum {chunk.checksum} not in 0..255")
    if self.header.layout == LAYERED:
      if frame.kind == I_FRAME:
        self._flush()
      elif not self.held:
        raise StreamError(f"frame {self.frames}: a P-frame after end_gop; a layered GOP starts with an I-frame")
      self.held.append(frame)
    else:
      self._put(bytes([(frame.kind << 7) | frame.scales]) + b"".join(c.to_bytes() for c in frame.chunks), [frame])
    self.frames += 1
    self._prev_scales = frame.scales

  def _put(self, data: bytes, frames: list[Frame]) -> None:
    self.f.write(data)
    payload = sum(len(c.payload) for f in frames for c in f.chunks)
    self.payload_bytes += payload
    self.container_bytes += len(data) - payload

  def _flush(self) -> None:
    if self.held:
      self._put(gop_record(self.held), self.held)
      self.held = []

  def end_gop(self) -> None:
    """Writes the layered GOP held now (the next frame written must be an I-frame); the
    frame-major layout holds nothing."""
    self._flush()

  def finish(self) -> None:
    """Writes what is held, and makes the header's frame count true (patching it when the file is
    seekable); does not close f."""
    if self._finished:
      return
    self._flush()
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


@dataclass(frozen=True)
class Cut:
  """Where a stream read with partial=True ended early, and what of its frames arrived."""
  offset: int  # bytes that arrived
  whole: int  # frames that arrived with every scale the stream sent
  reduced: int  # frames that arrived with fewer scales than were sent (at least one)
  missing: int  # frames with no scale at all

  def describe(self) -> str:
    return (f"the stream ends early, after {self.offset} bytes: {self.whole} frames arrived whole, {self.reduced} "
            f"with fewer scales than were sent, {self.missing} not at all")


class _Short(Exception):
  """Raised inside Reader when a partial stream ends (never leaves Reader)."""


class Reader:
  """Reads and checks the header of a binary file object; iterating yields its frames, each checked.

  Never reads a length before knowing the bytes are there (seekable sources)
  or reads it in bounded blocks (others), so a corrupt length cannot exhaust memory.

  partial=True reads a prefix of a stream (a cut download): iteration yields
  the frames of which at least scale 1 arrived, each with the chunks that
  arrived whole, and then stops; `cut` then says what arrived. The header
  must be whole, and what arrived must be well formed (corruption is still a
  StreamError). A layered prefix gives every frame up to the GOP it ends
  in, a frame-major one the frames before its end.
  """

  def __init__(self, f: BinaryIO, partial: bool = False):
    self.f, self.partial = f, partial
    self.cut: Cut | None = None
    self.offset = 0  # bytes read so far
    self._left: int | None = None
    self._in_frames = False
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
      raise StreamError(f"progvc stream version {version} is no longer decoded (this progvc reads versions "
                        f"{_READ_VERSIONS[0]} to {VERSION}): {_OLD_VERSIONS[version]}")
    if version not in _READ_VERSIONS:
      raise StreamError(f"unsupported progvc stream version {version} (this progvc reads versions "
                        f"{_READ_VERSIONS[0]} to {VERSION})")
    self.header = self._read_header(version)
    self._body = None
    self._in_frames = True

  def _read(self, n: int, allow_short: bool = False) -> bytes:
    if self._left is not None:
      if n > self._left and not allow_short:
        self._short(n, self._left)
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
    if self._left is not None:
      self._left -= len(data)
    self.offset += len(data)
    if len(data) < n and not allow_short:
      self._short(n, len(data))
    if self._body is not None:
      self._body += data
    return data

  def _short(self, needed: int, left: int):
    if self.partial and self._in_frames:
      raise _Short()
    raise StreamError(f"{self._where}: truncated ({needed} bytes needed, {left} left)")

  def _byte(self) -> int:
    return self._read(1)[0]

  def _varint(self) -> int:
    return _read_varint(self._byte, self._where)

  def _read_header(self, version: int) -> Header:
    self._where = "corrupt or truncated header"
    width, height, fps_num, fps_den = (self._varint() for _ in range(4))
    frame_count = int.from_bytes(self._read(4), "little")
    gop, tile, downsample, k = (self._varint() for _ in range(4))
    if not 1 <= k <= MAX_SCALES:
      raise StreamError(f"corrupt header: {k} scales, at most {MAX_SCALES} possible")
    schedule = tuple(self._varint() for _ in range(k))
    vocab_size, colour = self._varint(), self._varint()
    layout = FRAMES if version == 2 else self._varint()
    completion = []
    if version >= 4:
      count = self._varint()
      if count not in (0, k - 1):
        raise StreamError(f"corrupt header: {count} completions for {k} scales")
      codes = len(STREAM_COMPLETIONS) + (version >= 5)
      for _ in range(count):
        code = self._varint()
        if code >= codes:
          raise StreamError(f"corrupt header: completion code {code}")
        if code == _WEIGHTED_MEAN:
          entry = f"mean:t={self._varint() / 100:g}/w={self._varint() / 100:g}"
        else:
          mode = STREAM_COMPLETIONS[code]
          entry = f"mean:t={self._varint() / 100:g}" if mode == "mean" else mode
        try:
          completion.append(canonical_completion(entry))
        except StreamError:
          raise StreamError(f"corrupt header: completion {entry!r}") from None
    fingerprint = self._read(FINGERPRINT_BYTES)
    body = bytes(self._body)
    self._body = None
    stored = int.from_bytes(self._read(2), "little")
    if stored != zlib.crc32(body) & 0xFFFF:
      raise StreamError("corrupt header (checksum mismatch)")
    return Header(width=width, height=height, fps_num=fps_num, fps_den=fps_den, frame_count=frame_count, gop=gop,
                  tile=tile, downsample=downsample, schedule=schedule, vocab_size=vocab_size, colour=colour,
                  fingerprint=fingerprint, layout=layout, completion=tuple(completion))

  def __iter__(self) -> Iterator[Frame]:
    frames = self._layered() if self.header.layout == LAYERED else self._frame_major()
    yield from frames
    if self.cut is None and self._read(1, allow_short=True):
      raise StreamError(f"trailing data after the {self.header.frame_count} frames the header announces "
                        "(wrong frame count, or garbage appended)")

  def _ended(self, whole: int, reduced: int) -> None:
    arrived = self.offset + (self._left or 0)  # a seekable source's short read does not read its last bytes
    self.cut = Cut(arrived, whole, reduced, self.header.frame_count - whole - reduced)

  def _first_byte(self, done: int) -> bytes | None:
    """The first byte of the next frame (or GOP) after `done` frames; None where a partial stream ends."""
    head = self._read(1, allow_short=True)
    if head:
      return head
    if self.partial:
      self._ended(done, 0)
      return None
    raise StreamError(f"stream truncated: it ends after {done} frames, the header says {self.header.frame_count}")

  def _frame_major(self) -> Iterator[Frame]:
    count, k = self.header.frame_count, self.header.num_scales
    prev_scales = None
    for i in range(count):
      self._where = f"frame {i}"
      head = self._first_byte(i)
      if head is None:
        return
      b = head[0]
      _check_frame(i, b >> 7, b & 0x7F, prev_scales, k)
      chunks = []
      try:
        for s in range(b & 0x7F):
          self._where = f"frame {i} scale {s + 1}"
          length = self._varint()
          checksum = self._byte()
          chunks.append(Chunk(self._read(length), checksum))
      except _Short:
        self._ended(i, 1 if chunks else 0)
        if chunks:
          yield Frame(b >> 7, chunks)
        return
      prev_scales = len(chunks)
      yield Frame(b >> 7, chunks)

  def _layered(self) -> Iterator[Frame]:
    count, k_max = self.header.frame_count, self.header.num_scales
    done, g = 0, 0
    while done < count:
      self._where = f"GOP {g} (frames from {done}) index"
      first = self._first_byte(done)
      if first is None:
        return
      gop: list[Frame] = []
      counts: list[int] = []
      try:
        pending = [first[0]]
        self._body = bytearray(first)  # the index, for its checksum
        layers = _read_varint(lambda: pending.pop() if pending else self._byte(), self._where)
        if not 1 <= layers <= k_max:
          raise StreamError(f"{self._where}: {layers} layers, the stream has 1..{k_max} scales")
        counts = [self._varint() for _ in range(layers)]
        sizes = [self._varint() for _ in range(layers)]
        index = bytes(self._body)
        self._body = None
        if self._byte() != zlib.crc32(index) & 0xFF:
          raise StreamError(f"{self._where}: corrupt (checksum mismatch)")
        if not (counts[-1] >= 1 and counts[0] <= count - done and all(a >= b for a, b in zip(counts, counts[1:]))):
          raise StreamError(f"{self._where}: frames per layer {counts} must fall from at most the "
                            f"{count - done} frames left to at least 1")
        gop = [Frame(I_FRAME if i == 0 else P_FRAME, []) for i in range(counts[0])]
        for k, (m, size) in enumerate(zip(counts, sizes)):
          self._where = f"GOP {g} (frames from {done}) scale {k + 1}"
          data = self._read(size, allow_short=self.partial)
          chunks = _parse_layer(data, m, self._where, whole=len(data) == size)
          for frame, chunk in zip(gop, chunks):
            frame.chunks.append(chunk)
          if len(chunks) < m:
            raise _Short()
      except _Short:
        self._body = None
        arrived = [f for f in gop if f.chunks]
        whole = sum(1 for i, f in enumerate(arrived) if f.scales == sum(1 for m in counts if i < m))
        self._ended(done + whole, len(arrived) - whole)
        yield from arrived
        return
      yield from gop
      done += len(gop)
      g += 1


def _parse_layer(data: bytes, frames: int, where: str, whole: bool) -> list[Chunk]:
  """The chunks of one layer's bytes: `frames` of them filling it exactly, or (whole=False: the
  stream ends inside the layer) those that arrived whole."""
  chunks, pos = [], 0
  while len(chunks) < frames:
    try:
      length, at = decode_varint(data, pos)
    except StreamError:
      if whole:
        raise StreamError(f"{where}: corrupt (a chunk length runs past the layer)") from None
      break
    if at + 1 + length > len(data):
      if whole:
        raise StreamError(f"{where}: corrupt (chunk {len(chunks)} runs past the layer's {len(data)} bytes)")
      break
    chunks.append(Chunk(data[at + 1:at + 1 + length], data[at]))
    pos = at + 1 + length
  if whole and pos != len(data):
    raise StreamError(f"{where}: corrupt ({len(data) - pos} bytes left over after its {frames} chunks)")
  return chunks


def read_stream(data: bytes) -> tuple[Header, list[Frame]]:
  reader = Reader(io.BytesIO(data))
  return reader.header, list(reader)


def read_prefix(data: bytes) -> tuple[Header, list[Frame], Cut | None]:
  """A stream or a prefix of one (Reader with partial=True): header, the frames that arrived, the cut."""
  reader = Reader(io.BytesIO(data), partial=True)
  frames = list(reader)
  return reader.header, frames, reader.cut


def write_stream(header: Header, frames: list[Frame]) -> bytes:
  """The stream of `frames` in the header's layout; the header's frame_count is set to len(frames)."""
  buf = io.BytesIO()
  writer = Writer(buf, header)
  for frame in frames:
    writer.write(frame)
  writer.finish()
  return buf.getvalue()


def truncate(src: BinaryIO, dst: BinaryIO, scales: int | None = None, frames: tuple[int, int] | None = None, *,
             max_bytes: int | None = None, kbps: float | None = None, layout: int | None = None) -> dict:
  """Copies src to dst with fewer chunks, without decoding; returns what it kept.

  One of: `scales` (at most that many chunks per frame, of frames [a, b) only
  if given), `max_bytes` (the whole output at most that many bytes) or `kbps`
  (each GOP at most that rate). Under a byte budget each GOP keeps the most
  chunks in scale-major order that fit (`cut_gop`): its share of max_bytes by
  frame count plus what earlier GOPs left, or its duration at kbps. A GOP
  that does not fit at one scale keeps one (under max_bytes the cut is then
  refused). layout: write in this layout (default: the source's).

  A `scales` cut is refused when the frame after the range is a P-frame
  sending more scales than the cut leaves before it; whatever was written to
  dst by then is not a valid stream.
  Returns dict(bytes, gops, gops_over_budget).
  """
  if sum(x is not None for x in (scales, max_bytes, kbps)) != 1:
    raise ValueError("give one of scales, max_bytes or kbps")
  if frames is not None and scales is None:
    raise ValueError("a frame range goes with scales only")
  if scales is not None and scales < 1:
    raise StreamError(f"cannot keep {scales} scales: at least 1 is needed")
  if max_bytes is not None and max_bytes < 1:
    raise ValueError(f"max_bytes must be at least 1, got {max_bytes}")
  if kbps is not None and not 0 < kbps < float("inf"):
    raise ValueError(f"kbps must be a positive number, got {kbps}")
  reader = Reader(src)
  header = reader.header
  if layout is not None:
    header = dataclasses.replace(header, layout=layout)
  count = header.frame_count
  writer = Writer(dst, header)
  if scales is not None:
    a, b = (0, count) if frames is None else frames
    if frames is not None and not 0 <= a < b <= count:
      raise StreamError(f"frame range {a}:{b} is not within the stream's {count} frames (B excluded, A < B)")
    prev = None
    for i, frame in enumerate(reader):
      if a <= i < b:
        frame = Frame(frame.kind, frame.chunks[:scales])
      elif i == b and frame.kind == P_FRAME and frame.scales > prev.scales:
        raise StreamError(f"cannot cut frames {a}:{b}: frame {b} is a P-frame with {frame.scales} scales but the "
                          f"cut leaves {prev.scales} in frame {b - 1}; end the range at an I-frame (GOP boundary)")
      writer.write(frame)
      prev = frame
    writer.finish()
    return {"bytes": writer.container_bytes + writer.payload_bytes, "gops": None, "gops_over_budget": 0}
  gops = split_gops(list(reader))  # a budget is shared out over the GOPs: the stream is read first
  smallest = [gop_bytes([Frame(f.kind, f.chunks[:1]) for f in gop], header.layout) for gop in gops]
  head = len(header.to_bytes())
  if max_bytes is not None and head + sum(smallest) > max_bytes:
    raise StreamError(f"{max_bytes} bytes cannot hold this stream: its smallest cut, every frame at one scale, "
                      f"takes {head + sum(smallest)}")
  # Under max_bytes each GOP gets its smallest cut plus a share of the rest by frame count, and what a
  # GOP leaves of its share goes to the next; under kbps each GOP gets its duration's bytes.
  extra = 0 if max_bytes is None else max_bytes - head - sum(smallest)
  over, given, done = 0, 0.0, 0
  for gop, least in zip(gops, smallest):
    if max_bytes is not None:
      done += len(gop)
      budget = least + extra * done / header.frame_count - given
    else:
      budget = kbps * 1000 / 8 * len(gop) * header.fps_den / header.fps_num
    kept, fits = cut_gop(gop, budget, header.layout)
    given += gop_bytes(kept, header.layout) - least
    over += not fits
    for frame in kept:
      writer.write(frame)
  writer.finish()
  return {"bytes": writer.container_bytes + writer.payload_bytes, "gops": len(gops), "gops_over_budget": over}


def stats(header: Header, frames: list[Frame]) -> dict:
  """Sizes of a stream in its header's layout: total, the container's own bytes and share, per frame (its
  chunks, and its type byte in the frame-major layout) and per scale (payloads)."""
  per_frame = [sum(c.size for c in f.chunks) + (header.layout == FRAMES) for f in frames]
  per_scale = [0] * header.num_scales
  for f in frames:
    for k, c in enumerate(f.chunks):
      per_scale[k] += len(c.payload)
  header_bytes = len(header.to_bytes())
  total = header_bytes + (sum(per_frame) if header.layout == FRAMES else
                          sum(gop_bytes(g, LAYERED) for g in split_gops(frames)))
  container = total - sum(per_scale)
  return {"total_bytes": total, "header_bytes": header_bytes, "container_bytes": container,
          "container_share": container / total, "payload_bytes": total - container,
          "bytes_per_frame": per_frame, "bytes_per_scale": per_scale}
