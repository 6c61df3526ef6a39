"""The grain input pipeline: shuffled, sharded, checkpointable batches of video clips.

Records are clips of `clip_len` consecutive frames: every start (at a stride)
in every video file, then animated-photo clips. The record stream is a global
shuffle of all records from the seed, reshuffled each epoch; process k of n
takes positions k, k + n, ... of that one stream, so shards are disjoint and
their union is the single-process stream. A clip's random crop comes from the
seed and the clip's position in the global stream, so it is the same whatever
the shard or worker count, and differs from epoch to epoch.

Batches are uint8 (batch_size, clip_len, crop_h, crop_w, 3) numpy arrays,
batch_size per process; the trainer converts them to float [-1, 1] on device,
so the host ships a quarter of the bytes. The iterator is a
grain.DatasetIterator whose state is the number of batches taken; Orbax saves
it next to the train state with `grain.checkpoint.CheckpointSave(iterator)`
(see `make_dataset`).
"""

import bisect
import threading
from typing import Sequence

from absl import flags
import grain
import numpy as np

from progvc_jax import colourspace
from progvc_jax.data import samples
from progvc_jax.data import video

DEFAULT_CACHE_BYTES = 512 * 2**20


class ClipSource:
  """Clip records over video files and animated photos (grain's RandomAccessDataSource protocol).

  Records [0, num_video_clips) are (file, start) pairs in file order, starts
  0, stride, 2 * stride, ... while a whole clip fits; the rest are
  `num_photo_clips` photo clips cycling through `photos`, each animated at
  `photo_size` with a motion drawn from (seed, record index); a share
  `still_share` of them, drawn apart from the motion, keep the camera still.

  Decoded frames: if all the videos decoded fit in `cache_bytes`, each process
  (grain worker) decodes each video once, on first use, and keeps it, which
  suits small sets such as the embedded one, where most clips share a few
  long GOPs. Otherwise nothing is cached (an LRU over a shuffled stream would
  only thrash) and a clip is decoded from the keyframe before it, keeping
  just the crop of each frame.
  """

  def __init__(self, paths: Sequence[str], clip_len: int, *, stride: int = 1,
               photos: Sequence[np.ndarray] = (), num_photo_clips: int = 0,
               photo_size: tuple[int, int] | None = None, seed: int = 0,
               cache_bytes: int = DEFAULT_CACHE_BYTES, still_share: float = 0.0):
    if clip_len < 1 or stride < 1:
      raise ValueError(f"clip_len and stride must be >= 1, got {clip_len}, {stride}")
    if num_photo_clips and (not photos or photo_size is None):
      raise ValueError("photo clips need photos and a photo_size")
    if not 0.0 <= still_share <= 1.0:
      raise ValueError(f"still_share must be in [0, 1], got {still_share}")
    self.still_share = still_share
    self.paths = [str(p) for p in paths]
    self.infos = [video.probe(p) for p in self.paths]
    self.clip_len, self.stride, self.seed = clip_len, stride, seed
    self.photos, self.num_photo_clips = list(photos), num_photo_clips
    self.photo_size = tuple(photo_size) if photo_size else None
    counts = [max(0, (i.num_frames - clip_len) // stride + 1) for i in self.infos]
    self._first = np.cumsum([0] + counts).tolist()  # Record index of each file's first clip.
    self.num_video_clips = self._first[-1]
    if len(self) == 0:
      raise ValueError(f"no clips: no video has {clip_len} frames and num_photo_clips is 0")
    decoded = sum(i.num_frames * i.height * i.width * 3 for i in self.infos)
    self.cache_videos = decoded <= cache_bytes
    self._init_cache()

  def _init_cache(self):
    self._cache = {}
    # One decode per file, however many threads ask for it at once.
    self._locks = [threading.Lock() for _ in self.paths]

  def __getstate__(self):  # Workers start with an empty cache of their own.
    state = self.__dict__.copy()
    del state["_cache"], state["_locks"]
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._init_cache()

  def __len__(self) -> int:
    return self.num_video_clips + self.num_photo_clips

  def __getitem__(self, index: int) -> np.ndarray:
    return self.read(index)

  def locate(self, index: int) -> tuple[int, int]:
    """(file number, start frame) of a video record."""
    if not 0 <= index < self.num_video_clips:
      raise IndexError(f"video record {index} out of range [0, {self.num_video_clips})")
    file = bisect.bisect_right(self._first, index) - 1
    return file, (index - self._first[file]) * self.stride

  def frame_size(self, index: int) -> tuple[int, int]:
    """(height, width) of the frames of record `index`."""
    if index >= self.num_video_clips:
      return self.photo_size
    info = self.infos[self.locate(index)[0]]
    return info.height, info.width

  def read(self, index: int, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """Record `index` as uint8 (clip_len, H, W, 3), or only box = (top, left, height, width)."""
    if not 0 <= index < len(self):
      raise IndexError(f"record {index} out of range [0, {len(self)})")
    top, left, height, width = box or (0, 0, *self.frame_size(index))
    if index >= self.num_video_clips:
      photo = self.photos[(index - self.num_video_clips) % len(self.photos)]
      rng = np.random.default_rng((self.seed, index))
      still = bool(self.still_share) and np.random.default_rng((self.seed, index, 1)).random() < self.still_share
      clip = samples.animate(photo, self.clip_len, self.photo_size, rng, still=still)
      return clip[:, top:top + height, left:left + width]
    file, start = self.locate(index)
    if self.cache_videos:
      return self._decoded(file)[start:start + self.clip_len, top:top + height, left:left + width]
    frames = video.iter_frames(self.paths[file], start, self.clip_len)
    return np.stack([f[top:top + height, left:left + width] for f in frames])

  def _decoded(self, file: int) -> np.ndarray:
    with self._locks[file]:
      if file not in self._cache:
        self._cache[file] = video.read_frames(self.paths[file])
    return self._cache[file]


class RandomCropClip(grain.transforms.RandomMap):
  """Record index -> its clip under one random crop window for all frames.

  Frames smaller than the crop are first scaled up, keeping the aspect ratio,
  until they cover it (bilinear): padding would teach the codec borders that
  real video does not have.
  """

  def __init__(self, source: ClipSource, crop: tuple[int, int]):
    self.source, self.crop = source, tuple(crop)

  def random_map(self, record: int, rng: np.random.Generator) -> np.ndarray:
    (ch, cw), (h, w) = self.crop, self.source.frame_size(record)
    scale = min(1.0, h / ch, w / cw)  # Input pixels per output pixel.
    if scale == 1.0:
      top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
      return self.source.read(record, (top, left, ch, cw))
    top, left = rng.uniform(0, h - ch * scale), rng.uniform(0, w - cw * scale)
    # Decode only the rows and columns that the bilinear taps reach.
    (y0, y1), (x0, x1) = [
        (min(max(int(np.floor(start + scale / 2 - 0.5)), 0), size - 1),
         min(int(np.floor(start + scale * (n - 0.5) - 0.5)) + 2, size))
        for start, n, size in ((top, ch, h), (left, cw, w))]
    clip = self.source.read(record, (y0, x0, y1 - y0, x1 - x0))
    out = samples.resample(clip, top - y0, left - x0, scale, self.crop)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def recolour(clip: np.ndarray, hue: float, saturation: float) -> np.ndarray:
  """A uint8 clip (..., 3) with its hue turned by `hue` radians and its chroma scaled by `saturation`.

  Both act on the colour-difference plane (Cb, Cr) of BT.601 and leave luma as
  it is; colours pushed out of the RGB cube are clipped.
  """
  c, s = np.cos(hue) * saturation, np.sin(hue) * saturation
  turn = np.array([[1, 0, 0], [0, c, -s], [0, s, c]], np.float32)
  m = colourspace.YCBCR_TO_RGB @ turn @ colourspace.RGB_TO_YCBCR
  out = clip.astype(np.float32) @ m.T
  return np.clip(np.rint(out), 0, 255).astype(np.uint8)


class ColourJitter(grain.transforms.RandomMap):
  """A share of clips recoloured, the same way for all their frames: a hue turned anywhere round
  the circle and chroma scaled by a factor in [1 / max_saturation, max_saturation] (log-uniform).

  Colours the training data lack (a few clips and photos hold little saturated
  green or blue) then reach the tokenizer; luma and motion stay as they were.
  """

  def __init__(self, share: float, max_saturation: float):
    if not 0.0 <= share <= 1.0:
      raise ValueError(f"colour_share must be in [0, 1], got {share}")
    if max_saturation < 1.0:
      raise ValueError(f"colour_max_saturation must be at least 1, got {max_saturation}")
    self.share, self.max_saturation = share, max_saturation

  def random_map(self, clip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # Three draws for every clip, so which clips are recoloured does not shift the rest.
    pick, hue = rng.uniform(), rng.uniform(-np.pi, np.pi)
    saturation = float(np.exp(rng.uniform(-1.0, 1.0) * np.log(self.max_saturation)))
    return recolour(clip, hue, saturation) if pick < self.share else clip


def add_colour_jitter(ds: grain.MapDataset, share: float, max_saturation: float,
                      seed: int) -> grain.MapDataset:
  """ds with ColourJitter after its crops; ds itself when share is 0."""
  jitter = ColourJitter(share, max_saturation)  # Checks the arguments either way.
  # Its own stream of draws (seed + 1), so the crops stay those of the seed.
  return ds.random_map(jitter, seed=(seed + 1) % 2**32) if share else ds


def _global_order(num_records: int, seed: int, num_epochs: int | None) -> grain.MapDataset:
  return grain.MapDataset.range(num_records).shuffle(seed).repeat(num_epochs)


def _shard(ds: grain.MapDataset, shard_index: int, shard_count: int,
           num_epochs: int | None) -> grain.MapDataset:
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index {shard_index} not in [0, {shard_count})")
  if num_epochs is not None:  # Equal shares, so no process runs out of data first.
    ds = ds[:len(ds) // shard_count * shard_count]
  return ds[shard_index::shard_count]


def record_order(num_records: int, *, seed: int, shard_index: int = 0, shard_count: int = 1,
                 num_epochs: int | None = None) -> grain.MapDataset:
  """The record indices one shard reads, in order (what make_dataset's clips are cut from)."""
  return _shard(_global_order(num_records, seed, num_epochs), shard_index, shard_count, num_epochs)


class BatchIterator(grain.DatasetIterator):
  """Iterates a MapDataset of batches, in this process or in grain worker processes.

  Its state is the number of batches taken, {"next_batch": n}, so a state
  restores under any worker_count or read_threads (grain's own prefetch
  state records the worker layout). set_state restarts the pipeline at that
  batch; workers start lazily, on the first batch or start_prefetch().
  """

  def __init__(self, batches: grain.MapDataset, read_threads: int, worker_count: int):
    super().__init__()
    self._batches, self._read_threads, self._worker_count = batches, read_threads, worker_count
    self._next_batch, self._iterator = 0, None

  def _running(self) -> grain.DatasetIterator:
    self._assert_not_closed()
    if self._iterator is None:
      ds = self._batches[self._next_batch:].to_iter_dataset(grain.ReadOptions(
          num_threads=self._read_threads, prefetch_buffer_size=max(1, self._read_threads)))
      if self._worker_count:
        # grain reads its absl flags when it starts workers; outside absl.app.run
        # (tests, notebooks) they are unparsed, so let them take their defaults.
        if not flags.FLAGS.is_parsed():
          flags.FLAGS.mark_as_parsed()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=self._worker_count))
      self._iterator = iter(ds)
    return self._iterator

  def __next__(self) -> np.ndarray:
    batch = next(self._running())
    self._next_batch += 1
    return batch

  def get_state(self) -> dict[str, int]:
    return {"next_batch": self._next_batch}

  def set_state(self, state: dict[str, int]) -> None:
    self._stop()
    self._next_batch = int(state["next_batch"])

  def start_prefetch(self) -> None:
    self._running().start_prefetch()

  def _stop(self):
    if self._iterator is not None:
      self._iterator.close()
      self._iterator = None

  def close(self) -> None:
    self._stop()
    super().close()


def make_dataset(paths: Sequence[str], *, clip_len: int, crop: tuple[int, int], batch_size: int,
                 seed: int, num_photo_clips: int = 0, shard_index: int | None = None,
                 shard_count: int | None = None, worker_count: int = 0,
                 num_epochs: int | None = None, stride: int = 1,
                 photos: Sequence[np.ndarray] | None = None,
                 cache_bytes: int = DEFAULT_CACHE_BYTES,
                 read_threads: int = 2, still_share: float = 0.0, colour_share: float = 0.0,
                 colour_max_saturation: float = 1.5) -> BatchIterator:
  """An iterator of uint8 batches (batch_size, clip_len, crop_h, crop_w, 3) of this process's shard.

  Args:
    paths: video files (anything PyAV reads).
    clip_len, stride: clip length in frames and step between clip starts.
    crop: (height, width) of the clips.
    batch_size: clips per batch of this process (global batch / shard_count).
    seed: in [0, 2**32): fixes the shuffle, the crops and the photo motions.
    num_photo_clips: animated-photo records added to the video clips.
    still_share: the share of photo clips whose camera stays still (static
      scenes, which real video has and panning photos lack).
    shard_index, shard_count: this process's shard; default jax.process_index()
      and jax.process_count().
    worker_count: grain worker processes (0: all in this process); the batches
      do not depend on it.
    num_epochs: None repeats forever (reshuffled each epoch); otherwise every
      shard gets the same number of whole batches.
    photos: the photos to animate; default sample_photos() when
      num_photo_clips > 0.
    cache_bytes: per-process budget for decoded videos (see ClipSource).
    read_threads: batches prepared concurrently in each process.
    colour_share, colour_max_saturation: the share of clips recoloured by
      ColourJitter, and its largest chroma factor (0: no recolouring, and
      the same batches as before it existed).

  Checkpointing with the train state, e.g. in an orbax.checkpoint.CheckpointManager:
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(it)))
    manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=grain.checkpoint.CheckpointRestore(it)))
  where `it` is a fresh make_dataset(...) with the same data arguments
  (worker_count and read_threads may differ); it then continues with exactly
  the batches the saved run would have produced next. Each process saves its
  own state (process_<i>-of-<n>.json).
  """
  if shard_index is None or shard_count is None:
    import jax  # pylint: disable=g-import-not-at-top  # Deferred: grain workers never need it.
    shard_index, shard_count = jax.process_index(), jax.process_count()
  if photos is None:
    photos = samples.sample_photos() if num_photo_clips else ()
  source = ClipSource(paths, clip_len, stride=stride, photos=photos,
                      num_photo_clips=num_photo_clips, photo_size=crop, seed=seed,
                      cache_bytes=cache_bytes, still_share=still_share)
  # Crops are drawn before sharding, so they follow the global stream position.
  ds = _global_order(len(source), seed, num_epochs)
  ds = ds.random_map(RandomCropClip(source, crop), seed=seed)
  ds = add_colour_jitter(ds, colour_share, colour_max_saturation, seed)
  ds = _shard(ds, shard_index, shard_count, num_epochs).batch(batch_size, drop_remainder=True)
  return BatchIterator(ds, read_threads, worker_count)


def default_dataset(*, clip_len: int, crop: tuple[int, int], batch_size: int, seed: int,
                    num_photo_clips: int = 256, extra_videos: Sequence[str] = (),
                    **kwargs) -> BatchIterator:
  """make_dataset over the embedded clips (sample_videos), any extra_videos, and animated
  sample_photos; kwargs go to make_dataset."""
  return make_dataset([*samples.sample_videos(), *extra_videos], clip_len=clip_len, crop=crop,
                      batch_size=batch_size, seed=seed, num_photo_clips=num_photo_clips,
                      photos=samples.sample_photos(), **kwargs)
