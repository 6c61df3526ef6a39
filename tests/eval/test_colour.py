"""Tests of the hue sweep that shows which colours a codec keeps."""

import numpy as np
import pytest

from progvc_jax import colourspace
from progvc_jax.data import pipeline, samples
from progvc_jax.eval import colour


@pytest.fixture(scope="module")
def pictures():
  return [p[:48, :64] for p in samples.sample_photos()[:3]]


def grey(frames):
  y = np.rint(frames.astype(np.float64) @ np.array([0.299, 0.587, 0.114]))
  return np.repeat(y[..., None], 3, -1).astype(np.uint8)


def test_a_perfect_codec_keeps_every_hue(pictures):
  rows = colour.hue_sweep(lambda x: x, pictures, [0, 90, 200])
  assert [r["turn"] for r in rows] == [0.0, 90.0, 200.0]
  for r in rows:
    assert r["psnr"] == r["psnr_y"] == 100.0
    assert r["chroma_error"] == 0.0 and r["chroma_kept"] == pytest.approx(1.0)


def test_a_codec_that_drops_colour_keeps_none_and_its_error_is_the_colour_lost(pictures):
  rows = colour.hue_sweep(grey, pictures, [0, 120])
  for r, turn in zip(rows, (0, 120)):
    assert r["chroma_kept"] < 0.02
    src = [pipeline.recolour(p[None], np.deg2rad(turn), 1.0) for p in pictures]
    assert r["chroma_error"] == pytest.approx(np.mean([colour.chroma(s) for s in src]), rel=0.02)
    assert r["psnr"] < 40
    assert r["psnr_y"] > r["psnr"] + 5, r  # the luma is kept (up to BT.601 against BT.709 weights)


def test_the_turns_move_colour_onto_the_axis_a_codec_loses():
  """A codec that keeps only Cb (blue to yellow) keeps a blue picture whole and loses it turned by 90 degrees."""
  to_ycc, to_rgb = colourspace.RGB_TO_YCBCR.astype(np.float64), colourspace.YCBCR_TO_RGB.astype(np.float64)

  def cb_only(x):
    ycc = x.astype(np.float64) @ to_ycc.T
    ycc[..., 2] = 0.0
    return np.clip(np.rint(ycc @ to_rgb.T), 0, 255).astype(np.uint8)

  blue = np.clip(np.rint(np.array([120.0, 30.0, 0.0]) @ to_rgb.T), 0, 255)  # luma 120, Cb 30, Cr 0
  picture = np.broadcast_to(blue, (8, 8, 3)).astype(np.uint8)
  kept = [r["chroma_kept"] for r in colour.hue_sweep(cb_only, [picture], [0, 90, 180])]
  assert kept[0] == pytest.approx(1.0, abs=0.05) and kept[2] == pytest.approx(1.0, abs=0.05)
  assert kept[1] < 0.05


def test_the_sweep_refuses_a_reconstruction_of_another_shape(pictures):
  with pytest.raises(ValueError, match="reconstruct gave shape"):
    colour.hue_sweep(lambda x: x[:, 1:], pictures, [0])
