"""Training batches from a TFDS video dataset prepared as array_record: tfds.data_source and grain.

Any TFDS dataset with a video feature serves: one built by
progvc_jax.data.build, or a public one such as ucf101 prepared in a bucket.
Records are read by random access, in the stream pipeline.make_dataset
makes: a global shuffle of the records from the seed, reshuffled each epoch,
process k of n taking positions k, k + n, ... of it. A record with more
frames than clip_len gives a random window of clip_len frames, cropped at
random (pipeline.RandomCropClip, which also scales up frames smaller than the
crop); window and crop come from the seed and the record's position in the
global stream, so they do not depend on the shard or worker count.

A video feature stored as encoded images (tfds.features.Video) is read
undecoded and only the window's frames are decoded, so a short clip from a
long video costs a few image decodes.
"""

from typing import Sequence

import grain
import numpy as np
import tensorflow_datasets as tfds

from progvc_jax.data import pipeline


class _KeepFramesEncoded(tfds.decode.SkipDecoding):
  """SkipDecoding for NumPy readers (tfds.data_source), which pass a Video's frames as a batch."""

  def decode_batch_example_np(self, serialized_example):
    return serialized_example


class _Frames:
  """Decoded frames (T, H, W, 3) seen as a RandomCropClip source: the record is the array itself."""

  @staticmethod
  def frame_size(frames: np.ndarray) -> tuple[int, int]:
    return frames.shape[1:3]

  @staticmethod
  def read(frames: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    top, left, height, width = box
    return frames[:, top:top + height, left:left + width]


class RandomWindowCrop(grain.transforms.RandomMap):
  """Record index -> uint8 (clip_len, crop_h, crop_w, 3): a random window of its frames, cropped."""

  def __init__(self, source: Sequence[dict], video_key: str, clip_len: int, crop: tuple[int, int],
               frame_feature: tfds.features.Image | None = None):
    """frame_feature: the Image feature that decodes a frame, if the source gives encoded frames."""
    self.source, self.video_key, self.clip_len = source, video_key, clip_len
    self.frame_feature = frame_feature
    self._crop = pipeline.RandomCropClip(_Frames(), crop)

  def random_map(self, index: int, rng: np.random.Generator) -> np.ndarray:
    frames = self.source[index][self.video_key]
    if len(frames) < self.clip_len:
      raise ValueError(f"record {index} has {len(frames)} frames, fewer than clip_len "
                       f"{self.clip_len}")
    start = int(rng.integers(0, len(frames) - self.clip_len + 1))
    window = frames[start:start + self.clip_len]
    if self.frame_feature is not None:
      window = [self.frame_feature.decode_example_np(f) for f in window]
    return self._crop.random_map(np.asarray(window, np.uint8), rng)


def make_tfds_dataset(name: str, data_dir: str | None, *, split: str, clip_len: int,
                      crop: tuple[int, int], batch_size: int, seed: int, shard_index: int,
                      shard_count: int, worker_count: int, num_epochs: int | None = None,
                      video_key: str = "video", read_threads: int = 2, colour_share: float = 0.0,
                      colour_max_saturation: float = 1.5) -> pipeline.BatchIterator:
  """An iterator of uint8 batches (batch_size, clip_len, crop_h, crop_w, 3) of this process's shard.

  Args:
    name: the TFDS dataset, "name" or "name/config" (e.g. "progvc_videos/clip8_stride8").
    data_dir: where it was prepared (a local folder or a bucket); empty or
      None: TFDS's default. Nothing is downloaded or generated here.
    split: e.g. "train" or "train[:90%]".
    video_key: the feature holding the frames, uint8 (T, H, W, 3) with T >= clip_len.
    The rest as pipeline.make_dataset; the iterator checkpoints the same way.
  """
  builder = tfds.builder(name, data_dir=data_dir or None)
  features = builder.info.features
  if video_key not in features:
    raise ValueError(f"dataset {name} has no feature {video_key!r}; it has {sorted(features)}")
  feature = features[video_key]
  encoded = isinstance(feature, tfds.features.Video)
  source = builder.as_data_source(
      split=split, decoders={video_key: _KeepFramesEncoded()} if encoded else None)
  if len(source) == 0:
    raise ValueError(f"dataset {name} split {split!r} has no records")
  # Windows and crops are drawn before sharding, so they follow the global stream position.
  ds = pipeline._global_order(len(source), seed, num_epochs)  # pylint: disable=protected-access
  ds = ds.random_map(RandomWindowCrop(source, video_key, clip_len, crop,
                                      feature.feature if encoded else None), seed=seed)
  ds = pipeline.add_colour_jitter(ds, colour_share, colour_max_saturation, seed)
  ds = pipeline._shard(ds, shard_index, shard_count, num_epochs)  # pylint: disable=protected-access
  return pipeline.BatchIterator(ds.batch(batch_size, drop_remainder=True), read_threads,
                                worker_count)
