"""Video files in and out through PyAV: frames are uint8 RGB arrays (H, W, 3).

Colour. Files hold Y'CbCr; frames hold RGB. Both directions use PyAV's
swscale (`VideoFrame.reformat`) with the matrix and range passed explicitly,
because swscale would otherwise take untagged video as BT.601, and with
ACCURATE_RND and full chroma interpolation, because the default fast path is
off by up to 2 levels on saturated colours.
- Reading: the stream's own matrix tag is honoured where it names one (BT.601,
  SMPTE 240M, FCC, BT.2020); untagged or BT.709-tagged video is read as
  BT.709. Limited range unless the stream says full (a JPEG range tag or a
  yuvj pixel format).
- Writing: always YUV 4:2:0, BT.709, limited range, with the matrix, range,
  primaries, transfer and chroma siting tagged in the stream where the
  container or codec can carry them. Chroma is sited at the centre of each
  2x2 block (what swscale produces from RGB) and the file says so
  (C420jpeg in y4m, chroma_loc_info in H.264), so readers rebuild it at the
  right place.

Formats written: .y4m (raw yuv420p in a yuv4mpegpipe container: the lossless
choice for evaluation, any size), .mp4/.mkv (libx264 at CRF 18 when PyAV's
FFmpeg has it, else MPEG-4 part 2) and .avi (MPEG-4 part 2). 4:2:0 H.264
cannot code odd sizes, so there odd frames get one edge-replicated row or
column (a warning says so); y4m and MPEG-4 keep the exact size.

Frame indices are presentation order from 0. Reading from a frame other than
the first seeks to the keyframe at or before it and decodes forward, mapping
timestamps to indices at the stream's frame rate (exact for constant-rate
video, which is what codecs and datasets use).
"""

import contextlib
import dataclasses
import fractions
import itertools
import os
import sys
import tempfile
import uuid
from typing import Iterable, Iterator

from absl import logging
import av
from av.video.reformatter import Colorspace, Interpolation
import numpy as np

# swscale flags of every conversion: bilinear chroma, exact rounding.
_SWS_FLAGS = (Interpolation.BILINEAR | Interpolation.ACCURATE_RND
              | Interpolation.FULL_CHR_H_INT | Interpolation.FULL_CHR_H_INP)
# AVColorSpace tags (libavutil/pixfmt.h) to swscale matrices; others are BT.709.
_MATRIX_OF_TAG = {
    4: Colorspace.FCC, 5: Colorspace.ITU601, 6: Colorspace.ITU601,
    7: Colorspace.SMPTE240M, 9: Colorspace.BT2020, 10: Colorspace.BT2020,
}
_AVCOL_BT709 = 1  # AVColorSpace, AVColorPrimaries and AVColorTransferCharacteristic
_AVCOL_RANGE_MPEG = 1
_AVCOL_RANGE_JPEG = 2
_FF_QP2LAMBDA = 118


class VideoError(Exception):
  """A file that cannot be read as video; the message names the file."""


@dataclasses.dataclass(frozen=True)
class VideoInfo:
  width: int
  height: int
  fps: float
  num_frames: int
  pix_fmt: str


def _open(path: str):
  path = os.fspath(path)
  if not os.path.exists(path):
    raise VideoError(f"{path}: no such file")
  if not os.path.isfile(path):
    raise VideoError(f"{path}: not a file")
  try:
    container = av.open(path)
  except av.FFmpegError as e:
    raise VideoError(f"{path}: not a video file ({e.strerror})") from None
  if not container.streams.video:
    container.close()
    raise VideoError(f"{path}: no video stream")
  return container


def _rate(stream) -> fractions.Fraction | None:
  return stream.average_rate or stream.guessed_rate or None


def _to_rgb(frame: av.VideoFrame) -> np.ndarray:
  if frame.format.name == "rgb24":
    return frame.to_ndarray()
  matrix = _MATRIX_OF_TAG.get(frame.colorspace, Colorspace.ITU709)
  full = frame.color_range == _AVCOL_RANGE_JPEG or frame.format.name.startswith("yuvj")
  return frame.to_ndarray(
      format="rgb24", src_colorspace=matrix, dst_colorspace=matrix,
      src_color_range="JPEG" if full else "MPEG", dst_color_range="JPEG",
      interpolation=_SWS_FLAGS)


def _decode(path: str, container, stream) -> Iterator[av.VideoFrame]:
  try:
    yield from container.decode(stream)
  except av.FFmpegError as e:
    raise VideoError(f"{path}: undecodable video data ({e.strerror})") from None


def probe(path: str) -> VideoInfo:
  """Size, rate, frame count and pixel format; counts by decoding if the container does not say."""
  with _open(path) as container:
    stream = container.streams.video[0]
    num_frames = stream.frames or sum(1 for _ in _decode(path, container, stream))
    if num_frames == 0:
      raise VideoError(f"{path}: video has no frames")
    rate = _rate(stream)
    return VideoInfo(width=stream.codec_context.width, height=stream.codec_context.height,
                     fps=float(rate) if rate else 0.0, num_frames=num_frames,
                     pix_fmt=stream.codec_context.pix_fmt or "")


def _frames_from(path: str, container, stream, start: int) -> Iterator[av.VideoFrame]:
  """Decoded frames from index `start` on, seeking to the keyframe at or before it."""
  rate, origin = _rate(stream), stream.start_time or 0
  if start > 0 and rate and stream.time_base:
    ticks_per_frame = 1 / (rate * stream.time_base)
    # Half a frame early, so a timestamp the container rounded down still lands before.
    target = origin + int((start - 0.5) * ticks_per_frame)
    try:
      container.seek(max(target, origin), stream=stream, backward=True)
    except av.FFmpegError:
      pass  # Not seekable: decode from the top below.
    else:
      frames = _decode(path, container, stream)
      first = next(frames, None)
      if first is not None and first.pts is not None and (
          round((first.pts - origin) / ticks_per_frame) <= start):
        for frame in itertools.chain([first], frames):
          if frame.pts is None:
            raise VideoError(f"{path}: frame without a timestamp after seeking")
          if round((frame.pts - origin) / ticks_per_frame) >= start:
            yield frame
        return
      # Landed after `start` (or lost timestamps): decode from the top instead.
      container.seek(origin, stream=stream, backward=True)
  for i, frame in enumerate(_decode(path, container, stream)):
    if i >= start:
      yield frame


def iter_frames(path: str, start: int = 0, count: int | None = None) -> Iterator[np.ndarray]:
  """Frames `start`, start+1, ... (all to the end if count is None) as uint8 RGB (H, W, 3).

  Streams: one decoded frame is held at a time. Raises VideoError if the file
  cannot be read or has fewer frames than asked for.
  """
  if start < 0 or (count is not None and count < 0):
    raise ValueError(f"start and count must be >= 0, got start={start}, count={count}")
  if count == 0:
    return
  with _open(path) as container:
    stream = container.streams.video[0]
    produced = 0
    for frame in _frames_from(path, container, stream, start):
      yield _to_rgb(frame)
      produced += 1
      if produced == count:
        return
  if produced == 0:
    raise VideoError(f"{path}: no frames" + (f" from frame {start} on" if start else ""))
  if count is not None:
    raise VideoError(f"{path}: asked for frames {start}..{start + count - 1}, "
                     f"the video ends after frame {start + produced - 1}")


def is_url(path: str) -> bool:
  """Whether path names a file in storage such as gs://, which tf.io.gfile reads and PyAV does not."""
  return "://" in path


@contextlib.contextmanager
def local_copy(path: str) -> Iterator[str]:
  """A local path of the video at path: path itself, or for a URL (is_url) a temporary copy, removed on
  exit. VideoErrors raised inside name path, not the copy."""
  if not is_url(path):
    yield path
    return
  import tensorflow as tf  # Deferred: only URLs need it.
  fd, local = tempfile.mkstemp(suffix=os.path.splitext(path)[1])
  os.close(fd)
  try:
    try:
      tf.io.gfile.copy(path, local, overwrite=True)
    except tf.errors.OpError as e:
      raise VideoError(f"{path}: cannot be read ({e.message})") from None
    try:
      yield local
    except VideoError as e:
      raise VideoError(str(e).replace(local, path)) from None
  finally:
    os.remove(local)


def read_frames(path: str, start: int = 0, count: int | None = None) -> np.ndarray:
  """Frames as one uint8 array (T, H, W, 3); see iter_frames."""
  return np.stack(list(iter_frames(path, start, count)))


def _encoder_for(ext: str) -> tuple[str, str]:
  """(container format, codec) that writes files ending in ext."""
  if ext == ".y4m":
    return "yuv4mpegpipe", "rawvideo"
  if ext == ".avi":
    return "avi", "mpeg4"
  if ext in (".mp4", ".mkv"):
    try:
      av.Codec("libx264", "w")
      codec = "libx264"
    except av.FFmpegError:
      codec = "mpeg4"
    return ("mp4" if ext == ".mp4" else "matroska"), codec
  raise ValueError(f"cannot write {ext!r} video: use .y4m, .mp4, .mkv or .avi")


def _add_stream(container, codec: str, rate: fractions.Fraction, width: int, height: int):
  options = {"chroma_sample_location": "center"}
  if codec == "libx264":
    options["crf"] = "18"  # Visually transparent: these files hold decoded results.
  stream = container.add_stream(codec, rate=rate, options=options)
  stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
  ctx = stream.codec_context
  ctx.colorspace = ctx.color_primaries = ctx.color_trc = _AVCOL_BT709
  ctx.color_range = _AVCOL_RANGE_MPEG
  if codec == "mpeg4":
    ctx.qscale = True
    ctx.global_quality = 2 * _FF_QP2LAMBDA  # ffmpeg's -q:v 2, its best practical quality
  return stream


class _Flushed:
  """A binary stream (standard output) that each write reaches at once, for frames read while written."""

  def __init__(self, f):
    self.f = f

  def write(self, data) -> int:
    n = self.f.write(data)
    self.f.flush()
    return n


def write_video(path: str, frames: Iterable[np.ndarray], fps: float | fractions.Fraction) -> None:
  """Writes uint8 RGB frames (H, W, 3) as YUV 4:2:0 BT.709 limited range.

  The format follows the extension (.y4m, .mp4, .mkv, .avi). The file is
  written to a temporary name in the same folder and renamed when complete,
  so `path` never holds a partial video. path "-" writes Y4M to standard
  output, each frame as soon as it comes (for a player reading a pipe).
  """
  path = os.fspath(path)
  if path == "-":
    _write(_Flushed(sys.stdout.buffer), "-", "yuv4mpegpipe", "rawvideo", frames, fps, {"flush_packets": "1"})
    return
  fmt, codec = _encoder_for(os.path.splitext(path)[1].lower())
  folder, name = os.path.split(os.path.abspath(path))
  tmp = os.path.join(folder, f".{name}.{uuid.uuid4().hex[:8]}.partial")
  try:
    _write(tmp, path, fmt, codec, frames, fps)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def _write(target, path: str, fmt: str, codec: str, frames: Iterable[np.ndarray], fps, options=None) -> None:
  rate = fractions.Fraction(fps)
  if not isinstance(fps, fractions.Fraction):
    rate = rate.limit_denominator(1001)  # 29.97002997... -> 30000/1001
  if rate <= 0:
    raise ValueError(f"fps must be positive, got {fps}")
  with av.open(target, "w", format=fmt, options=options or {}) as container:
    stream, shape, pad = None, None, (0, 0)
    for i, rgb in enumerate(frames):
      rgb = np.asarray(rgb)
      if shape is None:
        shape = rgb.shape
        if rgb.ndim != 3 or shape[2] != 3 or min(shape[:2]) < 1:
          raise ValueError(f"frames must be (H, W, 3), got {shape}")
        if codec == "libx264":
          pad = (shape[0] % 2, shape[1] % 2)
          if any(pad):
            logging.warning("%s: %s cannot code the odd size %dx%d in 4:2:0; writing "
                            "%dx%d, the last row/column repeated (use .y4m for exact sizes)",
                            path, codec, shape[1], shape[0], shape[1] + pad[1], shape[0] + pad[0])
        stream = _add_stream(container, codec, rate, shape[1] + pad[1], shape[0] + pad[0])
      if rgb.shape != shape or rgb.dtype != np.uint8:
        raise ValueError(f"frame {i}: expected uint8 {shape}, got {rgb.dtype} {rgb.shape}")
      if any(pad):
        rgb = np.pad(rgb, ((0, pad[0]), (0, pad[1]), (0, 0)), mode="edge")
      frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24").reformat(
          format="yuv420p", src_colorspace=Colorspace.ITU709, dst_colorspace=Colorspace.ITU709,
          src_color_range="JPEG", dst_color_range="MPEG", interpolation=_SWS_FLAGS)
      frame.pts = i
      container.mux(stream.encode(frame))
    if stream is None:
      raise ValueError(f"{path}: no frames to write")
    container.mux(stream.encode(None))
