"""Tests of video file I/O: round trips per format, BT.709 colour, seeking, bad files."""

import os

import av
import numpy as np
import pytest

from progvc_jax.data import samples
from progvc_jax.data import video

KR, KB = 0.2126, 0.0722  # BT.709 luma weights of R and B


def ycbcr_limited(rgb, kr=KR, kb=KB):
  """Limited-range Y'CbCr (unrounded) of RGB in [0, 255]; BT.709 unless told the weights."""
  r, g, b = (np.asarray(rgb, np.float64) / 255).T
  y = kr * r + (1 - kr - kb) * g + kb * b
  return 16 + 219 * y, 128 + 224 * (b - y) / (2 - 2 * kb), 128 + 224 * (r - y) / (2 - 2 * kr)


def rgb_from_ycbcr(ycbcr, kr=KR, kb=KB):
  """The inverse of ycbcr_limited, clipped to [0, 255]."""
  y, u, v = ((np.asarray(ycbcr, np.float64) - [16, 128, 128]) / [219, 224, 224]).T
  r, b = y + 2 * (1 - kr) * v, y + 2 * (1 - kb) * u
  return 255 * np.clip(np.stack([r, (y - kr * r - kb * b) / (1 - kr - kb), b], -1), 0, 1)


def smooth_clip(t=12, h=48, w=64):
  yy, xx = np.mgrid[0:h, 0:w]
  return np.stack([np.stack([128 + 90 * np.sin(xx / 23 + i / 4), 128 + 90 * np.cos(yy / 17 - i / 5),
                             128 + 80 * np.sin((xx + yy) / 31 + i / 6)], -1)
                   for i in range(t)]).round().astype(np.uint8)


def psnr(a, b):
  return 10 * np.log10(255 ** 2 / np.mean((a.astype(np.float64) - b) ** 2))


def parse_y4m(path):
  """Header and the (Y, U, V) planes of every frame of a 4:2:0 y4m."""
  data = open(path, "rb").read()
  header, rest = data.split(b"\n", 1)
  fields = header.split()
  w, h = (int(next(f[1:] for f in fields if f.startswith(p))) for p in (b"W", b"H"))
  cw, chh = (w + 1) // 2, (h + 1) // 2
  frames = []
  while rest:
    assert rest.startswith(b"FRAME\n")
    rest = rest[6:]
    y = np.frombuffer(rest[:w * h], np.uint8).reshape(h, w)
    u = np.frombuffer(rest[w * h:w * h + cw * chh], np.uint8).reshape(chh, cw)
    v = np.frombuffer(rest[w * h + cw * chh:w * h + 2 * cw * chh], np.uint8).reshape(chh, cw)
    frames.append((y, u, v))
    rest = rest[w * h + 2 * cw * chh:]
  return header.decode(), frames


@pytest.mark.parametrize("ext, min_psnr", [("y4m", 48), ("mp4", 40), ("mkv", 40), ("avi", 38)])
def test_round_trip(tmp_path, ext, min_psnr):
  clip = smooth_clip()
  path = str(tmp_path / f"clip.{ext}")
  video.write_video(path, iter(clip), fps=30000 / 1001)
  info = video.probe(path)
  assert (info.width, info.height, info.num_frames, info.pix_fmt) == (64, 48, 12, "yuv420p")
  assert info.fps == pytest.approx(30000 / 1001)
  back = video.read_frames(path)
  assert back.shape == clip.shape and back.dtype == np.uint8
  assert psnr(back, clip) > min_psnr
  if ext == "y4m":  # Only 4:2:0 chroma subsampling and 8-bit rounding stand between.
    assert np.abs(back.astype(int) - clip).max() <= 6
  # Reading from a later frame gives the same frames as reading through.
  np.testing.assert_array_equal(video.read_frames(path, start=7, count=3), back[7:10])
  assert [f.shape for f in video.iter_frames(path, start=10)] == [(48, 64, 3)] * 2


def test_y4m_holds_the_bt709_values(tmp_path):
  colours = np.array([[128, 128, 128], [255, 0, 0], [0, 255, 0], [0, 0, 255], [200, 100, 50]])
  path = str(tmp_path / "colours.y4m")
  video.write_video(path, [np.tile(c, (4, 6, 1)).astype(np.uint8) for c in colours], 25)
  header, frames = parse_y4m(path)
  assert "C420jpeg" in header and "XCOLORRANGE=LIMITED" in header
  for (y, u, v), expected in zip(frames, np.stack(ycbcr_limited(colours), -1)):
    got = np.array([y.mean(), u.mean(), v.mean()])
    assert np.all(np.abs(got - expected) <= 0.5 + 1e-9), (got, expected)  # Correctly rounded.
  # Grey (128) has Y = 126 in BT.709 limited range; red has Y = 63 (BT.601 would give 82).
  assert frames[0][0][0, 0] == 126 and frames[1][0][0, 0] == 63


@pytest.mark.parametrize("ext", ["mp4", "mkv"])
def test_compressed_files_are_tagged_bt709(tmp_path, ext):
  path = str(tmp_path / f"tagged.{ext}")
  video.write_video(path, smooth_clip(t=2), 25)
  with av.open(path) as container:
    ctx = container.streams.video[0].codec_context
    assert (ctx.colorspace, ctx.color_primaries, ctx.color_trc, ctx.color_range) == (1, 1, 1, 1)
  if ext == "mkv":  # Matroska spells out chroma siting: ChromaSitingHorz/Vert = 2, "half".
    assert b"\x55\xb7\x81\x02\x55\xb8\x81\x02" in open(path, "rb").read()


def test_reads_yuv_as_bt709_limited(tmp_path):
  """A hand-written y4m of known Y'CbCr decodes to the RGB that the BT.709 inverse gives."""
  ycbcr = [(126, 128, 128), (63, 102, 240), (173, 42, 26), (32, 240, 118), (235, 128, 128),
           (16, 128, 128)]
  path = tmp_path / "known.y4m"
  with open(path, "wb") as f:
    f.write(b"YUV4MPEG2 W4 H2 F25:1 Ip A1:1 C420jpeg\n")
    for y, u, v in ycbcr:
      f.write(b"FRAME\n" + bytes([y]) * 8 + bytes([u]) * 2 + bytes([v]) * 2)
  rgb = video.read_frames(str(path)).astype(np.float64)
  np.testing.assert_allclose(rgb[:, 0, 0], rgb_from_ycbcr(ycbcr), atol=1.5)
  assert np.all(rgb == rgb[:, :1, :1])  # Flat frames stay flat.


def test_honours_a_bt601_tag(tmp_path):
  """A stream tagged BT.601 is read with the BT.601 matrix, not BT.709."""
  rgb = np.array([200, 100, 50])
  ycbcr = np.rint(ycbcr_limited(rgb, kr=0.299, kb=0.114)).astype(np.uint8)
  path = str(tmp_path / "bt601.mkv")
  with av.open(path, "w") as container:
    stream = container.add_stream("libx264", rate=25, options={"qp": "0"})  # Lossless
    stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
    stream.codec_context.colorspace = 6  # AVCOL_SPC_SMPTE170M, i.e. BT.601
    stream.codec_context.color_range = 1
    frame = av.VideoFrame(16, 16, "yuv420p")
    for plane, value in zip(frame.planes, ycbcr):
      plane.update(bytes([value]) * plane.buffer_size)
    frame.pts = 0
    container.mux(stream.encode(frame))
    container.mux(stream.encode(None))
  got = video.read_frames(path)[0, 8, 8]
  np.testing.assert_allclose(got, rgb, atol=2)
  assert np.abs(got - rgb_from_ycbcr(ycbcr)).max() > 6  # What reading it as BT.709 would give.


@pytest.mark.parametrize("ext", ["y4m", "avi", "mp4"])
def test_odd_sizes(tmp_path, ext):
  clip = smooth_clip(t=3, h=33, w=47)
  path = str(tmp_path / f"odd.{ext}")
  video.write_video(path, clip, 25)
  back = video.read_frames(path)
  if ext == "mp4":  # 4:2:0 H.264 needs even sizes: one edge-replicated row and column are added.
    assert back.shape == (3, 34, 48, 3)
    assert psnr(back[:, :33, :47], clip) > 38
    np.testing.assert_allclose(back[:, 33].astype(float), back[:, 32], atol=8)
  else:  # Exact size; chroma planes are rounded up.
    assert back.shape == (3, 33, 47, 3)
    assert psnr(back, clip) > (45 if ext == "y4m" else 38)


@pytest.fixture(scope="module")
def sample_bikes():
  path = samples.sample_videos()[0]
  return path, video.read_frames(path)


def test_sample_clip_seeks_across_keyframes(sample_bikes):
  path, frames = sample_bikes
  # bikes.mp4 has keyframes at 0, 30, 76, 137, 187, 242 and B-frames.
  for start in (29, 30, 100, 200, 246):
    np.testing.assert_array_equal(video.read_frames(path, start, 4), frames[start:start + 4])


def test_bad_inputs_raise_video_error(tmp_path):
  text = tmp_path / "notes.mp4"
  text.write_text("not a video\n" * 20)
  empty = tmp_path / "empty.mp4"
  empty.write_bytes(b"")
  header_only = tmp_path / "header_only.y4m"
  header_only.write_bytes(b"YUV4MPEG2 W16 H16 F25:1 Ip A1:1 C420jpeg\n")
  audio = tmp_path / "audio.mkv"
  with av.open(str(audio), "w") as container:
    stream = container.add_stream("pcm_s16le", rate=8000)
    frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
    frame.sample_rate = 8000
    container.mux(stream.encode(frame))
    container.mux(stream.encode(None))
  cases = {tmp_path / "missing.mp4": "no such file", tmp_path: "not a file",
           text: "not a video", empty: "not a video", header_only: "no frames",
           audio: "no video stream"}
  for path, problem in cases.items():
    for read in (video.probe, video.read_frames):
      with pytest.raises(video.VideoError, match=problem) as e:
        read(str(path))
      assert str(path) in str(e.value)


def test_reading_past_the_end_raises(tmp_path):
  path = str(tmp_path / "short.y4m")
  video.write_video(path, smooth_clip(t=5, h=8, w=8), 25)
  with pytest.raises(video.VideoError, match="ends after frame 4"):
    video.read_frames(path, start=3, count=3)
  with pytest.raises(video.VideoError, match="no frames from frame 5 on"):
    video.read_frames(path, start=5)


def test_write_is_atomic(tmp_path):
  path = tmp_path / "out.mp4"
  video.write_video(str(path), smooth_clip(t=2, h=16, w=16), 25)
  before = path.read_bytes()

  def failing():
    yield from smooth_clip(t=3, h=16, w=16)
    raise RuntimeError("renderer crashed")

  with pytest.raises(RuntimeError, match="renderer crashed"):
    video.write_video(str(path), failing(), 25)
  with pytest.raises(ValueError, match="frame 1: expected uint8"):
    video.write_video(str(path), [np.zeros((16, 16, 3), np.uint8), np.zeros((8, 8, 3), np.uint8)],
                      25)
  with pytest.raises(ValueError, match="no frames"):
    video.write_video(str(tmp_path / "none.y4m"), [], 25)
  assert path.read_bytes() == before  # The old file is untouched ...
  assert sorted(os.listdir(tmp_path)) == ["out.mp4"]  # ... and no temporary file is left.
  with pytest.raises(ValueError, match="use .y4m, .mp4, .mkv or .avi"):
    video.write_video(str(tmp_path / "out.gif"), smooth_clip(t=1), 25)
