"""Anchor codecs through ffmpeg: x264, x265, SVT-AV1 and VVenC on the frames that progvc codes.

A frame's path: source RGB -> write_video's BT.709 limited-range 4:2:0 y4m
-> encoder -> decoder -> 4:2:0 y4m -> read_frames' BT.709 RGB. The streams
are tagged BT.709, limited range and (where the format can say so) centred
chroma, as the source y4m is, so decoded frames come back through the same
conversion that made the source. VVenC codes 10-bit only: its input is the
8-bit samples shifted up, and its output is rounded back to 8 bits rather
than dithered (ffmpeg's default), which would add noise.

Rate: the encoders write elementary streams (.264, .265, .obu, .266) with no
container, and x264's and x265's SEI message with their version and
settings (about 0.7 and 2.3 kB) is left out, so Anchor.bytes counts coded
video only. VVC is written raw on purpose: from Matroska, ffmpeg decodes it
with frames missing.
"""

import dataclasses
import os
import tempfile

import numpy as np

from progvc_jax.data import video
from progvc_jax.eval import ffmpeg


@dataclasses.dataclass(frozen=True)
class _Codec:
  encoder: str
  muxer: str
  ext: str
  quality_option: str  # CRF, or QP where the encoder has no CRF
  quality_range: tuple[int, int]
  ladder: tuple[int, ...]
  options: tuple[str, ...]


_CODECS = {
    "x264": _Codec("libx264", "h264", ".264", "-crf", (0, 51), (22, 27, 32, 37, 42, 47),
                   ("-preset", "medium", "-chroma_sample_location", "center",
                    # SEI units: x264 writes only its version/settings message.
                    "-bsf:v", "filter_units=remove_types=6")),
    "x265": _Codec("libx265", "hevc", ".265", "-crf", (0, 51), (22, 27, 32, 37, 42, 47),
                   # ffmpeg does not pass the chroma siting to x265; chromaloc=1 is centred.
                   ("-preset", "medium", "-x265-params", "log-level=error:info=0:chromaloc=1")),
    # AV1 cannot signal centred chroma; untagged, it is read back as centred.
    "svtav1": _Codec("libsvtav1", "obu", ".obu", "-crf", (1, 63), (23, 31, 39, 47, 55, 63),
                     ("-preset", "6")),  # mid-way in SVT-AV1's -1 (slowest) .. 13 (fastest)
    "vvc": _Codec("libvvenc", "vvc", ".266", "-qp", (0, 63), (22, 27, 32, 37, 42, 47),
                  ("-preset", "medium", "-pix_fmt", "yuv420p10le", "-chroma_sample_location", "center")),
}
CODECS = tuple(_CODECS)
_BT709_TAGS = ("-colorspace", "bt709", "-color_primaries", "bt709", "-color_trc", "bt709",
               "-color_range", "tv")


@dataclasses.dataclass(frozen=True)
class Anchor:
  path: str  # the elementary stream
  bytes: int  # its size
  frames_decoded: np.ndarray  # uint8 RGB (T, H, W, 3), the same frames as the source


def _codec(codec: str) -> _Codec:
  if codec not in _CODECS:
    raise ValueError(f"unknown anchor codec {codec!r}; choose from {', '.join(CODECS)}")
  return _CODECS[codec]


def available_codecs() -> tuple[str, ...]:
  """The anchor codecs whose encoder the ffmpeg binary has."""
  have = ffmpeg.capabilities()
  return tuple(name for name, spec in _CODECS.items() if spec.encoder in have)


def crf_ladder(codec: str) -> tuple[int, ...]:
  """Default rate points, best quality first: CRF values (QP for vvc)."""
  return _codec(codec).ladder


def encode_anchor(codec: str, src_frames: np.ndarray, fps: float, quality: int, workdir: str) -> Anchor:
  """Codes src_frames with `codec` at `quality` (CRF, or QP for vvc) and decodes the result.

  The stream is left in workdir as <codec>_q<quality>.<ext>; the y4m
  temporaries are removed. Frames must be uint8 RGB (T, H, W, 3) of even
  height and width (4:2:0 coding).
  """
  spec = _codec(codec)
  lo, hi = spec.quality_range
  if not lo <= quality <= hi:
    raise ValueError(f"{codec} {spec.quality_option[1:]} must be in {lo}..{hi}, got {quality}")
  src_frames = np.asarray(src_frames)
  if src_frames.dtype != np.uint8 or src_frames.ndim != 4 or src_frames.shape[-1] != 3 or not len(src_frames):
    raise ValueError(f"src_frames must be uint8 RGB (T, H, W, 3), got {src_frames.dtype} {src_frames.shape}")
  if src_frames.shape[1] % 2 or src_frames.shape[2] % 2:
    raise ValueError(f"anchors code 4:2:0 and need an even frame size, got "
                     f"{src_frames.shape[2]}x{src_frames.shape[1]}")
  ffmpeg.require(spec.encoder)
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, f"{codec}_q{quality}{spec.ext}")
  what = f"{codec} at {spec.quality_option[1:]} {quality}"
  with tempfile.TemporaryDirectory(prefix=".anchor-", dir=workdir) as tmp:
    src, stream, decoded = (os.path.join(tmp, name) for name in ("src.y4m", "stream" + spec.ext, "decoded.y4m"))
    video.write_video(src, src_frames, fps)
    ffmpeg.run(["-i", src, "-c:v", spec.encoder, spec.quality_option, str(quality), *spec.options,
                *_BT709_TAGS, "-f", spec.muxer, stream], f"encoding {what}")
    # passthrough: every decoded frame once, whatever the raw stream's timestamps.
    ffmpeg.run(["-i", stream, "-fps_mode", "passthrough", "-pix_fmt", "yuv420p", "-sws_dither", "none",
                "-f", "yuv4mpegpipe", decoded], f"decoding {what}")
    frames = video.read_frames(decoded)
    if frames.shape != src_frames.shape:
      raise ffmpeg.FFmpegError(f"{what}: decoded {frames.shape}, expected the source's {src_frames.shape}")
    os.replace(stream, path)  # only a verified stream reaches workdir
  return Anchor(path=path, bytes=os.path.getsize(path), frames_decoded=frames)
