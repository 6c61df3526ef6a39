"""Tests of the TFDS path: clip datasets built from videos, read through grain, trained on."""

import contextlib
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from progvc_jax.data import build
from progvc_jax.data import samples
from progvc_jax.data import tfds_pipeline
from progvc_jax.data import tfds_videos
from progvc_jax.data import video

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIP_LEN, STRIDE = 4, 30
# carphone (120 frames): starts 0, 30, 60, 90; the bikes piece (10 frames): start 0.
EXPECTED_CLIPS = {("carphone.mp4", s) for s in (0, 30, 60, 90)} | {("sub/bikes10.mp4", 0)}


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
  """carphone (176x144), 10 frames of bikes (640x272) in a subfolder, a broken file, a text file."""
  folder = tmp_path_factory.mktemp("videos")
  bikes, carphone = samples.sample_videos()
  shutil.copy(carphone, folder / "carphone.mp4")
  (folder / "sub").mkdir()
  video.write_video(str(folder / "sub" / "bikes10.mp4"), video.read_frames(bikes, count=10), 25)
  with open(carphone, "rb") as f:
    (folder / "broken.mp4").write_bytes(f.read(3000))  # Cut inside the header.
  (folder / "notes.txt").write_text("not a video")
  return str(folder)


@pytest.fixture(scope="module")
def built(videos, tmp_path_factory):
  """The dataset built by the command line: (data_dir, name, its stderr)."""
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  run = subprocess.run([sys.executable, "-m", "progvc_jax.data.build", "--videos", videos,
                        "--data_dir", data_dir, f"--clip_len={CLIP_LEN}", f"--stride={STRIDE}"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  name = f"{tfds_videos.DEFAULT_NAME}/clip{CLIP_LEN}_stride{STRIDE}"
  assert f"{name} in {data_dir}: 5 clips" in run.stdout
  return data_dir, name, run.stderr


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def read_all(data_dir, name):
  return {(r["source"].decode(), int(r["start"])): r
          for r in tfds.data_source(name, data_dir=data_dir, split="train", download=False)}


@pytest.mark.slow
def test_built_clips_are_the_decoded_frames(built, videos):
  data_dir, name, log = built
  records = read_all(data_dir, name)
  assert set(records) == EXPECTED_CLIPS
  for (source, start), record in records.items():
    path = os.path.join(videos, source)
    np.testing.assert_array_equal(np.asarray(record["video"]),
                                  video.read_frames(path, start, CLIP_LEN))
    assert record["fps"] == pytest.approx(video.probe(path).fps, rel=1e-6)
  # Progress per video; the broken file is named in a warning and skipped.
  assert "video 2/3 carphone.mp4: 4 clips" in log and "video 3/3 sub/bikes10.mp4: 1 clips" in log
  assert any("broken video skipped" in line and "broken.mp4" in line for line in log.splitlines())


def test_clips_encode_each_frame_once(videos):
  path = os.path.join(videos, "sub", "bikes10.mp4")
  frames, encoded = video.read_frames(path), []

  def encode(frame):
    encoded.append(frame)
    return frame

  # Overlapping clips (stride < clip_len) share their frames' encodings.
  clips = list(tfds_videos.clips_of(path, 4, 2, encode))
  assert [s for s, _ in clips] == [0, 2, 4, 6] and len(encoded) == 10
  for start, clip in clips:
    np.testing.assert_array_equal(np.stack(clip), frames[start:start + 4])
  # Frames in no clip (stride > clip_len) are not encoded.
  encoded.clear()
  assert [s for s, _ in tfds_videos.clips_of(path, 2, 5, encode)] == [0, 5]
  np.testing.assert_array_equal(np.stack(encoded), frames[[0, 1, 5, 6]])


@pytest.mark.slow
def test_the_readme_command_builds_with_the_default_clip_settings(videos, tmp_path):
  """`python -m progvc_jax.data.build --videos DIR --data_dir DIR`, as the README gives it: clip_len 8
  and stride 8 are the builder's predefined config, which TFDS once refused to take again as a new
  object. A second run reuses the dataset."""
  for _ in range(2):
    run = subprocess.run([sys.executable, "-m", "progvc_jax.data.build", "--videos", videos,
                          "--data_dir", str(tmp_path)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    name = f"{tfds_videos.DEFAULT_NAME}/clip8_stride8"
    assert f"{name} in {tmp_path}: 16 clips" in run.stdout  # carphone: 15 starts, bikes10: 1
  records = read_all(str(tmp_path), name)
  assert set(records) == {("carphone.mp4", s) for s in range(0, 113, 8)} | {("sub/bikes10.mp4", 0)}
  assert len(records[("carphone.mp4", 8)]["video"]) == 8
  # In one process too: the same settings give the same config object.
  assert build.build(videos, str(tmp_path)) == (name, 16)


@pytest.mark.slow
def test_missing_or_empty_folder(tmp_path):
  run = subprocess.run([sys.executable, "-m", "progvc_jax.data.build", "--videos",
                        str(tmp_path / "nothing"), "--data_dir", str(tmp_path / "data")],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert run.returncode != 0
  assert run.stderr.splitlines()[-1] == f"build: --videos {tmp_path / 'nothing'}: no such folder"
  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / "notes.txt").write_text("not a video")
  with pytest.raises(FileNotFoundError, match="no video files"):
    build.build(str(tmp_path / "empty"), str(tmp_path / "data"))
  with pytest.raises(ValueError, match="dataset name 'My-Clips'"):
    tfds_videos.builder_class("My-Clips")


def test_interrupted_build_runs_again_to_completion(videos, tmp_path, monkeypatch):
  clips_of = tfds_videos.clips_of

  def interrupted(*args):
    yield from clips_of(*args)
    raise RuntimeError("interrupted")  # After the first video.

  data_dir, args = str(tmp_path), dict(name="my_clips", clip_len=CLIP_LEN, stride=STRIDE)
  monkeypatch.setattr(tfds_videos, "clips_of", interrupted)
  with pytest.raises(RuntimeError, match="interrupted"):
    build.build(videos, data_dir, **args)
  monkeypatch.setattr(tfds_videos, "clips_of", clips_of)
  config_dir = tmp_path / "my_clips" / f"clip{CLIP_LEN}_stride{STRIDE}"
  assert not (config_dir / "1.0.0").exists()
  # A killed build leaves its incomplete folder (TFDS removes it only on an exception).
  (config_dir / "incomplete.KILLED_1.0.0").mkdir(parents=True)
  (config_dir / "incomplete.KILLED_1.0.0" / "part").write_text("x")
  name, clips = build.build(videos, data_dir, **args)
  assert (name, clips) == (f"my_clips/clip{CLIP_LEN}_stride{STRIDE}", 5)
  assert set(read_all(data_dir, name)) == EXPECTED_CLIPS
  assert sorted(os.listdir(config_dir)) == ["1.0.0"]
  # Built again: reused. Without its dataset_info.json (unfinished): rebuilt.
  assert build.build(videos, data_dir, **args) == (name, 5)
  os.remove(config_dir / "1.0.0" / "dataset_info.json")
  assert build.build(videos, data_dir, **args) == (name, 5)
  assert set(read_all(data_dir, name)) == EXPECTED_CLIPS


@pytest.mark.slow
def test_windows_and_crops_of_built_records(built):
  data_dir, name, _ = built
  source = tfds.data_source(name, data_dir=data_dir, split="train", download=False)
  carphone = next(i for i in range(len(source)) if source[i]["source"] == b"carphone.mp4")
  frames = np.asarray(source[carphone]["video"])
  rng = np.random.default_rng(0)
  # A window of 2 of the 4 frames; the crop is the whole frame, so the window is exact.
  whole = tfds_pipeline.RandomWindowCrop(source, "video", 2, (144, 176))
  starts = set()
  for _ in range(12):
    clip = whole.random_map(carphone, rng)
    starts |= {s for s in range(3) if np.array_equal(clip, frames[s:s + 2])}
  assert starts == {0, 1, 2}
  # Frames smaller than the crop are scaled up to it.
  assert tfds_pipeline.RandomWindowCrop(source, "video", 4, (160, 200)).random_map(
      carphone, rng).shape == (4, 160, 200, 3)
  with pytest.raises(ValueError, match="fewer than clip_len 5"):
    tfds_pipeline.RandomWindowCrop(source, "video", 5, (32, 32)).random_map(carphone, rng)
  # make_tfds_dataset decodes only a window's frames, to the same pixels: carphone's whole records.
  stream = tfds_pipeline.make_tfds_dataset(
      name, data_dir, split="train", clip_len=CLIP_LEN, crop=(144, 176), batch_size=1, seed=0,
      shard_index=0, shard_count=1, worker_count=0, num_epochs=1, read_threads=0)
  clips = {batch[0].tobytes() for batch in stream}
  assert len(clips) == 5 and {np.asarray(source[i]["video"]).tobytes() for i in range(len(source))
                              if source[i]["source"] == b"carphone.mp4"} < clips


@pytest.mark.slow
def test_worker_processes_read_the_built_dataset(built):
  data_dir, name, _ = built
  args = dict(split="train", clip_len=2, crop=(32, 32), batch_size=2, seed=0, shard_index=0,
              shard_count=1, read_threads=0)
  expected = take(tfds_pipeline.make_tfds_dataset(name, data_dir, worker_count=0, **args), 3)
  workers = tfds_pipeline.make_tfds_dataset(name, data_dir, worker_count=1, **args)
  with contextlib.closing(workers):
    for a, b in zip(take(workers, 3), expected):
      np.testing.assert_array_equal(a, b)


class ProgvcTestVideos(tfds.core.GeneratorBasedBuilder):
  """A named dataset for tfds.testing.mock_data, which makes up videos 5 to 49 long and wide."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "video": tfds.features.Video(shape=(None, None, None, 3)),
        "label": tfds.features.ClassLabel(num_classes=3)}))

  def _split_generators(self, dl_manager):
    raise NotImplementedError  # Only ever mocked.

  def _generate_examples(self):
    raise NotImplementedError


def mocked(**kwargs):
  args = dict(split="train", clip_len=3, crop=(32, 32), batch_size=2, seed=0, shard_index=0,
              shard_count=1, worker_count=0, read_threads=0)
  return tfds_pipeline.make_tfds_dataset("progvc_test_videos", None, **(args | kwargs))


def test_mocked_dataset_through_grain():
  with tfds.testing.mock_data(num_examples=10, policy=tfds.testing.MockPolicy.USE_CODE):
    first = take(mocked(), 6)  # More than an epoch.
    assert {(b.shape, b.dtype) for b in first} == {((2, 3, 32, 32, 3), np.dtype(np.uint8))}
    again, other = take(mocked(), 6), take(mocked(seed=1), 6)
    recoloured = take(mocked(colour_share=1.0), 6)
    # Shards of one epoch: positions k, k + 2, ... of the single-process stream.
    whole = np.concatenate(list(mocked(num_epochs=1, batch_size=1)))
    shards = [np.concatenate(list(mocked(num_epochs=1, batch_size=1, shard_index=k, shard_count=2)))
              for k in range(2)]
    with pytest.raises(ValueError, match="no feature 'frames'"):
      mocked(video_key="frames")
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a, b)
  assert not all(np.array_equal(a, b) for a, b in zip(first, other))
  # The colour jitter recolours the same windows and crops (luma kept where nothing clips).
  for a, b in zip(first, recoloured):
    assert not np.array_equal(a, b)
    inside = np.all((b > 0) & (b < 255), axis=-1)
    luma = lambda x: x.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    assert np.abs(luma(a) - luma(b))[inside].max() <= 1.0
  assert len(whole) == 10 and len({c.tobytes() for c in whole}) == 10
  for k in range(2):
    np.testing.assert_array_equal(shards[k], whole[k::2])


@pytest.mark.slow
def test_tokenizer_trains_on_the_built_dataset(built, tmp_path):
  from tests.trainers.test_tokenizer_trainer import small_config
  from progvc_jax.trainers import common
  from progvc_jax.trainers import tokenizer as trainer_lib

  data_dir, name, _ = built
  absent = small_config(**{"data.tfds_name": "progvc_absent", "data.tfds_data_dir": data_dir})
  with pytest.raises(tfds.core.DatasetNotFoundError):  # The input comes from TFDS ...
    common.make_input(absent, 0, 0, 1, 0)
  # ... here from the built dataset, under the tokenizer tests' config (and compiled step).
  config = small_config(**{"data.tfds_name": name, "data.tfds_data_dir": data_dir,
                           "data.clip_len": 1, "data.crop": 32})
  trainer_lib.train_and_evaluate(config, str(tmp_path / "run"), stop_at=2)
  assert os.listdir(tmp_path / "run" / "checkpoints") == ["2"]
