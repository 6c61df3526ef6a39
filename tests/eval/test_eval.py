"""Tests of progvc_jax.eval: BD deltas, metrics against ffmpeg's own, anchors, plots."""

import os
import random
import sys

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from progvc_jax import losses
from progvc_jax.data import samples, video
from progvc_jax.eval import anchors, bd, ffmpeg, metrics, plots

NUM_FRAMES = 10
FPS = 30000 / 1001


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
  """10 frames of the 176x144 carphone sample."""
  path = next(p for p in samples.sample_videos() if "carphone" in os.path.basename(p))
  return video.read_frames(path, count=NUM_FRAMES)


@pytest.fixture(scope="module")
def x264(clip, tmp_path_factory) -> dict[int, anchors.Anchor]:
  workdir = str(tmp_path_factory.mktemp("x264"))
  return {crf: anchors.encode_anchor("x264", clip, FPS, crf, workdir) for crf in (22, 35, 45)}


# Bjontegaard deltas.

RATES = [0.02, 0.05, 0.11, 0.24, 0.5]
PSNRS = [27.1, 29.8, 32.2, 34.9, 37.0]


def test_bd_rate_of_scaled_rates():
  assert bd.bd_rate(RATES, PSNRS, [0.8 * r for r in RATES], PSNRS) == pytest.approx(-20, abs=0.1)
  assert bd.bd_rate([0.8 * r for r in RATES], PSNRS, RATES, PSNRS) == pytest.approx(25, abs=0.1)


def test_bd_quality_of_shifted_quality():
  assert bd.bd_quality(RATES, PSNRS, RATES, [q + 1 for q in PSNRS]) == pytest.approx(1, abs=1e-9)


def test_bd_of_identical_curves_is_zero():
  assert bd.bd_rate(RATES, PSNRS, RATES, PSNRS) == pytest.approx(0, abs=1e-9)
  assert bd.bd_quality(RATES, PSNRS, RATES, PSNRS) == pytest.approx(0, abs=1e-9)


def test_bd_by_hand():
  # Two points per curve: PCHIP is the straight line between them.
  # Quality over log-rate: b - a falls linearly from 2 dB to 0, mean 1 dB.
  assert bd.bd_quality([100, 400], [30, 40], [100, 400], [32, 40]) == pytest.approx(1.0, abs=1e-9)
  # Log-rate over quality on the common 32..40 dB: a is ln100 + ln4 (q - 30) / 10,
  # b is ln100 + ln4 (q - 32) / 8; their mean gap is -0.1 ln4, a rate factor of 4 ** -0.1.
  assert bd.bd_rate([100, 400], [30, 40], [100, 400], [32, 40]) == pytest.approx(
      (4 ** -0.1 - 1) * 100, abs=1e-9)


def test_bd_ignores_order_and_keeps_the_best_of_duplicates():
  points = list(zip(RATES, PSNRS))
  random.Random(0).shuffle(points)
  # A rate measured again at a worse quality: BD-quality keeps the better one.
  rates, psnrs = zip(*points, (RATES[2], PSNRS[2] - 0.5))
  assert bd.bd_quality(RATES, PSNRS, rates, psnrs) == pytest.approx(0, abs=1e-9)
  # A quality reached again at a higher rate: BD-rate keeps the lower one.
  rates, psnrs = zip(*points, (RATES[3] * 1.3, PSNRS[3]))
  assert bd.bd_rate(RATES, PSNRS, rates, psnrs) == pytest.approx(0, abs=1e-9)


@pytest.mark.parametrize("fn", [bd.bd_rate, bd.bd_quality])
def test_bd_rejects_bad_curves(fn):
  with pytest.raises(ValueError, match="at least 2 points"):
    fn([0.1], [30], RATES, PSNRS)
  with pytest.raises(ValueError, match="do not overlap"):
    fn([0.01, 0.02], [20, 21], [1, 2], [40, 41])
  with pytest.raises(ValueError, match="positive"):
    fn([0, 0.1], [30, 31], RATES, PSNRS)
  with pytest.raises(ValueError, match="one length"):
    fn([0.1, 0.2], [30], RATES, PSNRS)


# Metrics.


def _ffmpeg_stats(ref: np.ndarray, dist: np.ndarray, pix_fmt: str, graph: str, field: str, tmp) -> np.ndarray:
  """Per-frame `field` of ffmpeg's psnr filter on raw frames, in the filter's output order."""
  size = f"{ref.shape[2]}x{ref.shape[1]}"
  ref.tofile(tmp / "ref.raw")
  dist.tofile(tmp / "dist.raw")
  raw = ["-f", "rawvideo", "-pix_fmt", pix_fmt, "-s", size, "-i"]
  ffmpeg.run([*raw, "dist.raw", *raw, "ref.raw", "-lavfi", graph + "psnr=stats_file=psnr.log",
              "-f", "null", "-"], "psnr filter", cwd=str(tmp))
  lines = (tmp / "psnr.log").read_text().splitlines()
  return np.array([float(dict(kv.split(":") for kv in line.split())[field]) for line in lines])


def test_psnr_equals_ffmpeg_psnr_filter(clip, x264, tmp_path):
  decoded = x264[35].frames_decoded
  # RGB: the filter's mse_avg is the mean of the three planes' MSEs, which is ours.
  mse = _ffmpeg_stats(clip, decoded, "rgb24", "[0][1]", "mse_avg", tmp_path)
  expected = 10 * np.log10(255 ** 2 / mse)
  np.testing.assert_allclose(metrics.psnr_rgb_frames(clip, decoded), expected, atol=0.01)
  assert metrics.psnr_rgb(clip, decoded) == pytest.approx(expected.mean(), abs=0.01)
  # Luma: ffmpeg weights 16-bit RGB (8-bit values times 257, so its peak 65535 is
  # 257 * 255) into BT.709 Y, which it computes independently of us.
  mix = "colorchannelmixer=rr=0.2126:rg=0.7152:rb=0.0722,extractplanes=r"
  mse = _ffmpeg_stats(clip.astype(np.uint16) * 257, decoded.astype(np.uint16) * 257, "rgb48le",
                      f"[0]{mix}[d];[1]{mix}[r];[d][r]", "mse_y", tmp_path)
  expected = 10 * np.log10(65535 ** 2 / mse)
  np.testing.assert_allclose(metrics.psnr_y_frames(clip, decoded), expected, atol=0.01)
  assert metrics.psnr_y(clip, decoded) == pytest.approx(expected.mean(), abs=0.01)
  assert 25 < metrics.psnr_y(clip, decoded) < 40


def test_psnr_of_identical_frames_is_capped(clip):
  assert metrics.psnr_rgb(clip[:2], clip[:2]) == metrics.MAX_PSNR
  assert metrics.psnr_y(clip[:2], clip[:2]) == metrics.MAX_PSNR


def test_ms_ssim(clip, x264, monkeypatch):
  # 144 rows hold four of the five scales.
  weights = metrics.ms_ssim_weights(144, 176)
  assert len(weights) == 4 and sum(weights) == pytest.approx(1)
  assert len(metrics.ms_ssim_weights(161, 161)) == 5
  assert metrics.ms_ssim(clip[:3], clip[:3]) == pytest.approx(1, abs=1e-5)
  per_frame = metrics.ms_ssim_frames(clip, x264[45].frames_decoded)
  assert per_frame.shape == (NUM_FRAMES,)
  assert metrics.ms_ssim(clip, x264[22].frames_decoded) > per_frame.mean() > 0.5
  # Batches of 4 frames, the last padded, give the same scores.
  monkeypatch.setattr(metrics, "_BATCH_PIXELS", 4 * 144 * 176)
  np.testing.assert_allclose(metrics.ms_ssim_frames(clip, x264[45].frames_decoded), per_frame, atol=1e-6)
  with pytest.raises(ValueError, match="at least 11 pixels"):
    metrics.ms_ssim(clip[:1, :10, :10], clip[:1, :10, :10])


def test_vmaf(clip, x264, tmp_path):
  rng = np.random.default_rng(0)
  near = np.clip(clip.astype(np.int16) + rng.integers(-1, 2, clip.shape), 0, 255).astype(np.uint8)
  high = metrics.vmaf(clip, near)
  low = metrics.vmaf(clip, x264[45].frames_decoded)
  assert high > 95
  assert low < high - 30
  # Files and arrays give the same scores.
  video.write_video(str(tmp_path / "ref.y4m"), clip, FPS)
  video.write_video(str(tmp_path / "dist.y4m"), x264[45].frames_decoded, FPS)
  scores = metrics.vmaf_frames(str(tmp_path / "ref.y4m"), str(tmp_path / "dist.y4m"))
  assert scores.shape == (NUM_FRAMES,) and scores.mean() == pytest.approx(low, abs=1e-6)
  with pytest.raises(ValueError, match="same frames"):
    metrics.vmaf(clip, clip[:5])


def _sharpened(clip: np.ndarray) -> np.ndarray:
  """An unsharp mask of weight 1: more contrast at edges, nothing removed."""
  blur = ndimage.gaussian_filter(clip.astype(np.float64), (0, 1, 1, 0))
  return np.clip(clip + (clip - blur), 0, 255).astype(np.uint8)


def test_vmaf_neg_does_not_reward_sharpening(clip, x264):
  sharp = _sharpened(clip)
  both = metrics.vmaf_models_frames(clip, sharp)
  # VMAF scores the sharpened clip at its ceiling, as good as the source; NEG takes points off.
  assert both[metrics.VMAF_MODEL].mean() > 99
  assert both[metrics.VMAF_NEG_MODEL].mean() < both[metrics.VMAF_MODEL].mean() - 8
  # One run with both models gives each model's own scores, frame by frame.
  np.testing.assert_allclose(both[metrics.VMAF_NEG_MODEL], metrics.vmaf_frames(clip, sharp, metrics.VMAF_NEG_MODEL),
                             atol=1e-6)
  # On coding loss NEG still ranks like VMAF.
  assert metrics.vmaf(clip, x264[22].frames_decoded, metrics.VMAF_NEG_MODEL) > \
      metrics.vmaf(clip, x264[45].frames_decoded, metrics.VMAF_NEG_MODEL) + 20
  with pytest.raises(ValueError, match="at least one model"):
    metrics.vmaf_models_frames(clip, sharp, ())


def test_ssimulacra2(clip, x264):
  assert metrics.ssimulacra2(clip[:2], clip[:2]) == pytest.approx(100)
  per_frame = metrics.ssimulacra2_frames(clip, x264[45].frames_decoded)
  assert per_frame.shape == (NUM_FRAMES,)
  # Frames scored in threads score as each does alone (one frame: no thread).
  alone = [metrics.ssimulacra2_frames(clip[i:i + 1], x264[45].frames_decoded[i:i + 1])[0] for i in (0, 5, 9)]
  np.testing.assert_array_equal(per_frame[[0, 5, 9]], alone)
  # The ladder ranks in order (measured: 64, 40 and 4 on these 10 frames, 33, 27 and 22 dB PSNR).
  scores = [metrics.ssimulacra2(clip, x264[q].frames_decoded) for q in (22, 35)]
  assert scores[0] > 55 and scores[0] > scores[1] + 15 > per_frame.mean() + 30
  assert per_frame.mean() < 15
  # Sharpening is a change, not an improvement.
  assert metrics.ssimulacra2(clip, _sharpened(clip)) < 90


needs_cvvdp = pytest.mark.skipif(not metrics.cvvdp_available(),
                                 reason="ColorVideoVDP needs the perceptual extra (pip install '.[perceptual]')")


@needs_cvvdp
def test_cvvdp_scores_in_jod(clip, x264):
  assert metrics.cvvdp(clip[:4], clip[:4], FPS) == pytest.approx(10, abs=1e-4)
  jod = [metrics.cvvdp(clip, x264[q].frames_decoded, FPS) for q in (22, 35, 45)]
  assert 10 > jod[0] > jod[1] > jod[2] > 3
  # A video metric: one damaged frame costs less than the same damage on every frame.
  rng = np.random.default_rng(0)
  noise = rng.normal(0, 12, clip.shape)
  every = np.clip(clip + noise, 0, 255).astype(np.uint8)
  one = clip.copy()
  one[NUM_FRAMES // 2] = every[NUM_FRAMES // 2]
  assert metrics.cvvdp(clip, one, FPS) > metrics.cvvdp(clip, every, FPS) + 0.5
  with pytest.raises(ValueError, match="frame rate"):
    metrics.cvvdp(clip, clip, 0)


def test_cvvdp_without_the_extra_says_how_to_install_it(clip, monkeypatch):
  metrics._cvvdp_module.cache_clear()
  metrics._cvvdp_metric.cache_clear()
  monkeypatch.setitem(sys.modules, "pycvvdp", None)  # import pycvvdp now raises ImportError
  try:
    assert not metrics.cvvdp_available()
    with pytest.raises(metrics.MissingExtraError, match=r"progvc\[perceptual\]"):
      metrics.cvvdp(clip[:2], clip[:2], FPS)
  finally:
    metrics._cvvdp_module.cache_clear()
    metrics._cvvdp_metric.cache_clear()


def test_lpips_with_a_weights_file(tmp_path):
  rng = np.random.default_rng(0)
  weights = {k: rng.normal(0, 0.1, s).astype(np.float32) for k, s in losses.lpips_weight_shapes().items()}
  for k in weights:
    if k.startswith("lin"):
      weights[k] = np.abs(weights[k])
  np.savez(tmp_path / "lpips.npz", **weights)
  x = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
  assert metrics.lpips(x, x, str(tmp_path / "lpips.npz")) == pytest.approx(0, abs=1e-6)
  assert metrics.lpips(x, 255 - x, str(tmp_path / "lpips.npz")) > 0
  with pytest.raises(ValueError, match="weights file"):
    metrics.lpips(x, x, "")


@pytest.mark.parametrize("fn", [metrics.psnr_rgb, metrics.psnr_y, metrics.ms_ssim, metrics.ssimulacra2])
def test_metrics_reject_bad_inputs(clip, fn):
  with pytest.raises(ValueError, match="one shape"):
    fn(clip, clip[:5])
  with pytest.raises(ValueError, match="uint8"):
    fn(clip.astype(np.float32), clip)
  with pytest.raises(ValueError, match="uint8"):
    fn(clip[0], clip[0])
  with pytest.raises(ValueError, match="no frames"):
    fn(clip[:0], clip[:0])


def test_bits_per_pixel():
  assert metrics.bits_per_pixel(1000, 100, 80, 10) == pytest.approx(0.1)
  with pytest.raises(ValueError):
    metrics.bits_per_pixel(1000, 0, 80, 10)


# Anchors.


@pytest.mark.parametrize("codec", ["x264", "x265"])
def test_anchor_rate_falls_with_crf(codec, clip, tmp_path):
  hi, lo = (anchors.encode_anchor(codec, clip, FPS, crf, str(tmp_path)) for crf in (27, 42))
  for anchor in (hi, lo):
    assert anchor.frames_decoded.shape == clip.shape
    assert os.path.getsize(anchor.path) == anchor.bytes
    # The encoder's settings message is not counted as video.
    assert b"options:" not in open(anchor.path, "rb").read()
  bpp = [metrics.bits_per_pixel(a.bytes, 176, 144, NUM_FRAMES) for a in (hi, lo)]
  assert bpp[0] > bpp[1] > 0
  assert metrics.psnr_rgb(clip, hi.frames_decoded) > metrics.psnr_rgb(clip, lo.frames_decoded)
  # Only the streams are left behind.
  assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(a.path) for a in (hi, lo))


@pytest.mark.parametrize("codec", ["svtav1", "vvc"])
def test_optional_anchors_round_trip(codec, clip, tmp_path):
  if codec not in anchors.available_codecs():
    pytest.skip(f"this ffmpeg has no {codec} encoder")
  anchor = anchors.encode_anchor(codec, clip[:5], FPS, anchors.crf_ladder(codec)[2], str(tmp_path))
  assert anchor.frames_decoded.shape == clip[:5].shape and anchor.bytes > 0
  assert metrics.psnr_rgb(clip[:5], anchor.frames_decoded) > 25


def test_anchor_errors(clip, tmp_path):
  with pytest.raises(ValueError, match="unknown anchor codec"):
    anchors.encode_anchor("mpeg2", clip, FPS, 30, str(tmp_path))
  with pytest.raises(ValueError, match="0..51"):
    anchors.encode_anchor("x264", clip, FPS, 60, str(tmp_path))
  with pytest.raises(ValueError, match="even"):
    anchors.encode_anchor("x264", clip[:, :143], FPS, 30, str(tmp_path))


# ffmpeg.


def test_ffmpeg_errors(monkeypatch, tmp_path):
  assert {"libx264", "libx265", "libvmaf", "psnr"} <= ffmpeg.capabilities()
  with pytest.raises(ffmpeg.FFmpegError, match="no libnothing") as e:
    ffmpeg.require("libnothing")
  assert ffmpeg.executable() in str(e.value)
  with pytest.raises(ffmpeg.FFmpegError, match="^probing: ffmpeg exited") as e:
    ffmpeg.run(["-i", str(tmp_path / "missing.y4m"), "-f", "null", "-"], "probing")
  assert "\n" not in str(e.value)
  monkeypatch.setenv(ffmpeg.ENV_VAR, str(tmp_path / "nothing"))
  with pytest.raises(ffmpeg.FFmpegError, match="not an executable"):
    ffmpeg.capabilities()


# Plots.


def test_rd_plot(tmp_path):
  path = tmp_path / "rd.png"
  plots.rd_plot({"x264": (RATES, PSNRS), "progvc": ([0.01, 0.03, 0.3], [28, 31, 36])}, "PSNR (dB)", str(path),
                size=(640, 480))
  with Image.open(path) as img:
    assert img.format == "PNG" and img.size == (640, 480)
    # Not blank: lines, markers and text.
    assert len(np.unique(np.asarray(img.convert("L")))) > 10
  with pytest.raises(ValueError, match="equal"):
    plots.rd_plot({"x264": ([0.1, 0.2], [30])}, "PSNR", str(path))
  with pytest.raises(ValueError, match="at least one"):
    plots.rd_plot({}, "PSNR", str(path))


def test_frame_strip(tmp_path):
  rng = np.random.default_rng(0)
  a = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
  b = rng.integers(0, 256, (20, 50, 3), dtype=np.uint8)
  path = tmp_path / "strip.png"
  plots.frame_strip([("source", a), ("x264 CRF 35, a label longer than its frame", b)], str(path))
  with Image.open(path) as img:
    strip = np.asarray(img.convert("RGB"))
  assert strip.shape == (plots.LABEL_HEIGHT + 30, 40 + plots.GAP + 50, 3)
  np.testing.assert_array_equal(strip[plots.LABEL_HEIGHT:, :40], a)
  np.testing.assert_array_equal(strip[plots.LABEL_HEIGHT:plots.LABEL_HEIGHT + 20, 40 + plots.GAP:], b)
  assert (strip[:plots.LABEL_HEIGHT, :40] < 128).any()  # the label is drawn
  with pytest.raises(ValueError, match="uint8"):
    plots.frame_strip([("bad", a.astype(np.float32))], str(path))
  with pytest.raises(ValueError, match="at least one"):
    plots.frame_strip([], str(path))


def test_completion_settings_parse_and_the_best_is_ahead_everywhere():
  from progvc_jax.eval import completion
  assert completion.parse_setting("none") == {"complete": "none"}
  assert completion.parse_setting("sample:t=0.7/k=8/p=0.9") == {"complete": "sample", "temperature": 0.7,
                                                                "top_k": 8, "top_p": 0.9}
  assert completion.parse_setting("mean:t=0.5") == {"complete": "mean", "temperature": 0.5}
  assert completion.parse_setting("mean:t=3/w=0.25") == {"complete": "mean", "temperature": 3.0, "weight": 0.25}
  for bad, message in (("greedy", "must be one of"), ("argmax:t=0.5", "only sample"), ("sample:q=1", "t=, k=, p= or w="),
                       ("mean:k=4", "mean takes t= and w= only"), ("sample:w=0.5", "sample takes t=, k= and p=")):
    with pytest.raises(ValueError, match=message):
      completion.parse_setting(bad)
  # a gains more on average but falls behind none once; b is ahead everywhere.
  table = {"clip": {"K=1": {"none": {"m": 1.0}, "a": {"m": 3.0}, "b": {"m": 1.5}},
                    "K=2": {"none": {"m": 2.0}, "a": {"m": 1.9}, "b": {"m": 2.1}}}}
  best, means = completion.best_setting(table, "m")
  assert best == "b" and means == pytest.approx({"a": 0.95, "b": 0.3})
  table["clip"]["K=2"]["b"]["m"] = 2.0  # a tie is not ahead
  assert completion.best_setting(table, "m")[0] is None
