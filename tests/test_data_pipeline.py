"""Tests of the grain input pipeline: records, crops, shards, determinism, checkpoints, workers."""

import contextlib

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from progvc_jax.data import pipeline
from progvc_jax.data import samples
from progvc_jax.data import video

CLIP_LEN, STRIDE, CROP = 4, 2, (32, 32)


def moving_clip(t, h, w, phase):
  yy, xx = np.mgrid[0:h, 0:w]
  return np.stack([np.stack([128 + 100 * np.sin(xx / 5 + i / 2 + phase),
                             128 + 100 * np.cos(yy / 4 - i / 3),
                             128 + 90 * np.sin((xx - yy) / 7 + phase)], -1)
                   for i in range(t)]).round().astype(np.uint8)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  """Two y4m videos, one larger and one smaller than the crop, and two photos."""
  folder = tmp_path_factory.mktemp("videos")
  paths = [str(folder / "large.y4m"), str(folder / "small.y4m")]
  video.write_video(paths[0], moving_clip(14, 40, 56, 0.0), 25)  # 6 clips at stride 2
  video.write_video(paths[1], moving_clip(9, 24, 28, 1.0), 25)  # 3 clips, upscaled to the crop
  photos = [moving_clip(1, 60, 90, p)[0] for p in (2.0, 3.0)]
  return paths, photos


def dataset(data, **kwargs):
  paths, photos = data
  args = dict(clip_len=CLIP_LEN, crop=CROP, batch_size=2, seed=0, num_photo_clips=7, stride=STRIDE,
              photos=photos, shard_index=0, shard_count=1, read_threads=0)
  return pipeline.make_dataset(paths, **(args | kwargs))


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def source(data, **kwargs):
  paths, photos = data
  return pipeline.ClipSource(paths, CLIP_LEN, stride=STRIDE, photos=photos, num_photo_clips=7,
                             photo_size=CROP, **kwargs)


def test_a_share_of_photo_clips_keeps_the_camera_still(data):
  plain, mixed = source(data), source(data, still_share=0.5)
  photos = range(plain.num_video_clips, len(plain))
  still = [i for i in photos if all(np.array_equal(f, mixed[i][0]) for f in mixed[i])]
  assert 0 < len(still) < len(photos)
  for i in photos:  # each clip starts where it did, and the moving ones are unchanged
    np.testing.assert_array_equal(mixed[i][0], plain[i][0])
    if i not in still:
      np.testing.assert_array_equal(mixed[i], plain[i])
  with pytest.raises(ValueError, match="still_share must be in"):
    source(data, still_share=1.5)


def luma(x):
  return np.asarray(x, np.float64) @ np.array([0.299, 0.587, 0.114])


def test_recolour_turns_hue_and_scales_chroma_keeping_luma():
  rng = np.random.default_rng(0)
  clip = rng.integers(60, 196, (2, 8, 8, 3)).astype(np.uint8)  # Mid-range: nothing clips at factor 1.
  np.testing.assert_array_equal(pipeline.recolour(clip, 0.0, 1.0), clip)
  turned = pipeline.recolour(clip, 2.0, 1.0)
  assert np.abs(turned.astype(int) - clip).max() > 20
  assert np.abs(luma(turned) - luma(clip)).max() <= 1.0  # Rounding only.
  back = pipeline.recolour(turned, -2.0, 1.0)
  assert np.abs(back.astype(int) - clip).max() <= 2
  grey = pipeline.recolour(clip, 0.7, 0.0)  # No chroma left: every pixel is its own luma.
  assert np.abs(grey.astype(int) - np.rint(luma(clip))[..., None]).max() <= 1
  # Chroma doubles (Cb, Cr about the grey axis) where nothing reaches the cube's faces.
  soft = (128 + (clip.astype(int) - 128) // 4).astype(np.uint8)
  chroma = lambda x: x.astype(np.float64) - luma(x)[..., None]
  np.testing.assert_allclose(chroma(pipeline.recolour(soft, 0.0, 2.0)), 2 * chroma(soft), atol=1.5)


def test_colour_jitter_recolours_a_share_of_clips_the_same_for_every_frame(data):
  plain = np.concatenate(take(dataset(data), 8))
  jittered = np.concatenate(take(dataset(data, colour_share=0.5, colour_max_saturation=1.5), 8))
  again = np.concatenate(take(dataset(data, colour_share=0.5, colour_max_saturation=1.5), 8))
  np.testing.assert_array_equal(jittered, again)
  changed = [not np.array_equal(a, b) for a, b in zip(plain, jittered)]
  assert 0 < sum(changed) < len(changed)  # Some clips recoloured, the rest (and every crop) as they were.
  for a, b, c in zip(plain, jittered, changed):
    if c:  # The same crop recoloured: luma kept wherever no channel reached the cube's faces.
      inside = np.all((b > 0) & (b < 255), axis=-1)
      assert inside.mean() > 0.2
      assert np.abs(luma(b) - luma(a))[inside].max() <= 1.0
  # One draw of hue and factor per clip, applied to all its frames.
  clip = plain[0]
  rng = np.random.default_rng(3)
  _, hue, factor = rng.uniform(), rng.uniform(-np.pi, np.pi), np.exp(rng.uniform(-1, 1) * np.log(1.5))
  out = pipeline.ColourJitter(1.0, 1.5).random_map(clip, np.random.default_rng(3))
  np.testing.assert_array_equal(out, pipeline.recolour(clip, hue, factor))
  every = np.concatenate(take(dataset(data, colour_share=1.0), 8))
  assert all(not np.array_equal(a, b) for a, b in zip(plain, every))
  with pytest.raises(ValueError, match="colour_share must be in"):
    dataset(data, colour_share=1.5)
  with pytest.raises(ValueError, match="colour_max_saturation must be at least 1"):
    dataset(data, colour_share=0.5, colour_max_saturation=0.5)


def test_clip_source_records(data):
  src = source(data)
  large, small = (video.read_frames(p) for p in data[0])
  assert (len(src), src.num_video_clips) == (16, 9)
  assert [src.locate(i) for i in (0, 5, 6, 8)] == [(0, 0), (0, 10), (1, 0), (1, 4)]
  np.testing.assert_array_equal(src[5], large[10:14])
  np.testing.assert_array_equal(src[8], small[4:8])
  np.testing.assert_array_equal(src.read(3, (5, 7, 20, 30)), large[6:10, 5:25, 7:37])
  # Photo records: deterministic per (seed, index), different between indices and seeds.
  assert src[9].shape == (CLIP_LEN, *CROP, 3)
  np.testing.assert_array_equal(src[9], source(data)[9])
  assert not np.array_equal(src[9], src[11])  # Same photo (9 and 11 both take photo 0) ...
  assert not np.array_equal(src[9], source(data, seed=1)[9])  # ... and other motions.
  # Without the cache clips are decoded by seeking, with the same frames.
  uncached = source(data, cache_bytes=0)
  assert src.cache_videos and not uncached.cache_videos
  for i in (0, 4, 7):
    np.testing.assert_array_equal(uncached.read(i, (1, 2, 16, 20)), src.read(i, (1, 2, 16, 20)))
  with pytest.raises(IndexError):
    src.read(16)


def test_random_crop_is_a_window_of_the_clip(data):
  src = source(data)
  crop = pipeline.RandomCropClip(src, CROP)
  clip, full = crop.random_map(2, np.random.default_rng(0)), src[2]
  windows = [(t, l) for t in range(40 - 32 + 1) for l in range(56 - 32 + 1)
             if np.array_equal(full[:, t:t + 32, l:l + 32], clip)]
  assert len(windows) == 1


def test_small_videos_are_scaled_up_to_the_crop(data):
  src = source(data)
  clip = pipeline.RandomCropClip(src, CROP).random_map(7, np.random.default_rng(5))
  assert clip.shape == (CLIP_LEN, *CROP, 3)
  # The same draw over the whole decoded frames: decoding only the needed box changes nothing.
  rng, scale = np.random.default_rng(5), min(24 / 32, 28 / 32)
  top, left = rng.uniform(0, 24 - 32 * scale), rng.uniform(0, 28 - 32 * scale)
  expected = np.rint(samples.resample(src[7], top, left, scale, CROP)).astype(np.uint8)
  np.testing.assert_array_equal(clip, expected)


def test_batches(data):
  batches = take(dataset(data, batch_size=3), 6)  # More than an epoch: 16 records.
  for batch in batches:
    assert batch.shape == (3, CLIP_LEN, *CROP, 3) and batch.dtype == np.uint8
  clips = np.concatenate(batches)
  # Consecutive frames of a clip differ (motion), and the clips of an epoch differ.
  assert np.all(np.abs(np.diff(clips.astype(int), axis=1)).mean(axis=(2, 3, 4)) > 1)
  assert len({c.tobytes() for c in clips[:16]}) == 16


def test_same_seed_same_batches(data):
  first = take(dataset(data), 5)
  for a, b in zip(first, take(dataset(data, read_threads=2), 5)):
    np.testing.assert_array_equal(a, b)
  assert not all(np.array_equal(a, b) for a, b in zip(first, take(dataset(data, seed=1), 5)))


def test_shards_are_disjoint_and_cover_the_records():
  shards = [list(pipeline.record_order(16, seed=4, shard_index=i, shard_count=2, num_epochs=1))
            for i in range(2)]
  assert len(shards[0]) == len(shards[1]) == 8
  assert not set(shards[0]) & set(shards[1])
  assert sorted(shards[0] + shards[1]) == list(range(16))
  two_epochs = list(pipeline.record_order(16, seed=4, num_epochs=2))
  assert sorted(two_epochs[:16]) == sorted(two_epochs[16:]) == list(range(16))
  assert two_epochs[:16] != two_epochs[16:]  # Reshuffled each epoch.


def test_shards_split_the_single_process_stream(data):
  """Shard k's clips (crops included) are the global stream's clips k, k + 2, ..."""
  whole = np.concatenate(take(dataset(data), 8))
  for k in range(2):
    shard = np.concatenate(take(dataset(data, shard_index=k, shard_count=2), 4))
    np.testing.assert_array_equal(shard, whole[k::2])


def test_finite_epochs_give_every_shard_the_same_batches(data):
  counts = [sum(1 for _ in dataset(data, shard_index=k, shard_count=3, num_epochs=1))
            for k in range(3)]
  assert counts == [2, 2, 2]  # 16 records: 15 shared out, 5 a shard, 2 whole batches of 2.


def test_restored_iterator_continues_the_stream(data, tmp_path):
  expected = take(dataset(data), 7)
  iterator = dataset(data)
  take(iterator, 3)
  state = iterator.get_state()
  assert state == {"next_batch": 3}
  restored = dataset(data)
  restored.set_state(state)
  for a, b in zip(take(restored, 4), expected[3:]):
    np.testing.assert_array_equal(a, b)
  # Through Orbax, saved together with a train state, as the trainer does.
  train_state = {"params": jax.numpy.arange(6.0).reshape(2, 3), "step": jax.numpy.int32(5)}
  with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
    manager.save(5, args=ocp.args.Composite(state=ocp.args.StandardSave(train_state),
                                            data=grain.checkpoint.CheckpointSave(iterator)))
    manager.wait_until_finished()
  take(iterator, 1)  # Moving on after the save does not change what was saved.
  fresh = dataset(data)
  with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, train_state)
    restored = manager.restore(5, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), data=grain.checkpoint.CheckpointRestore(fresh)))
  assert int(restored["state"]["step"]) == 5 and fresh.get_state() == {"next_batch": 3}
  for a, b in zip(take(fresh, 4), expected[3:]):
    np.testing.assert_array_equal(a, b)


def test_worker_processes_give_the_same_batches(data):
  expected = take(dataset(data), 6)
  with contextlib.closing(dataset(data, worker_count=2)) as workers:
    for a, b in zip(take(workers, 3), expected):
      np.testing.assert_array_equal(a, b)
    state = workers.get_state()
  restored = dataset(data)  # A state from 2 workers restores in-process, and back.
  restored.set_state(state)
  for a, b in zip(take(restored, 3), expected[3:]):
    np.testing.assert_array_equal(a, b)


def test_default_dataset(data):
  iterator = pipeline.default_dataset(clip_len=2, crop=(32, 48), batch_size=5, seed=0,
                                      num_photo_clips=4, extra_videos=data[0][:1], num_epochs=1,
                                      shard_index=0, shard_count=1)
  batches = list(iterator)
  assert {(b.shape, b.dtype) for b in batches} == {((5, 2, 32, 48, 3), np.dtype(np.uint8))}
  # bikes (249 clips of 2 frames), carphone (119), the extra video (13) and the photos (4).
  assert len(batches) == (249 + 119 + 13 + 4) // 5
