"""A TFDS builder that turns a folder of video files into a dataset of fixed-length clips.

Each record is one clip of `clip_len` consecutive frames, with clip starts
every `stride` frames of every video while a whole clip fits:
  video   uint8 (clip_len, H, W, 3), the frames as PyAV decodes them
  fps     float32, the video's frame rate (0 if the file does not say)
  source  the video's path relative to the folder (posix separators)
  start   int64, the clip's first frame in that video
Videos keep their own size, so records of different videos differ in H and W.

Frames are stored as PNG images (tfds.features.Video with encoding_format
"png"): lossless, so training sees exactly the decoded frames, yet smaller
than raw pixels (a Tensor feature); JPEG would be smaller still but would add
its own artefacts to the frames a codec learns to reproduce. Encoded frames
also let a reader decode only the frames it uses (see tfds_pipeline).

The folder is TFDS's manual directory (DownloadConfig(manual_dir=...)), a
local path or a URL such as gs://... (each video is then copied to a local
temporary file to decode); files ending in VIDEO_EXTENSIONS are read,
subfolders included. Videos are decoded
one at a time, streamed, one clip in memory at a time (TFDS's writer buffers
encoded clips up to its limit, then spills to disk). A file that cannot be
opened or decoded is logged as a warning and skipped; if decoding fails
partway through, the clips before the failure are kept. With beam=True the
same records are made on Apache Beam, one element per video (beam_clips.py).
"""

import collections
import dataclasses
import functools
import os
import re
from typing import Any, Callable, Iterator

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from progvc_jax.data import video

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mkv", ".webm", ".mov", ".avi", ".y4m", ".mpg", ".mpeg",
                    ".ts", ".flv", ".wmv", ".3gp", ".ogv")
DEFAULT_NAME = "progvc_videos"


def find_videos(folder: str) -> list[str]:
  """Video files under `folder` (a local path or a URL such as gs://...), relative to it, in a sorted
  (reproducible) order."""
  walk = os.walk
  if video.is_url(folder):
    import tensorflow as tf  # Deferred: only URLs need it.
    walk = tf.io.gfile.walk
  found = []
  for root, dirs, files in walk(folder):
    dirs[:] = [d for d in dirs if not d.startswith(".")]
    found += [os.path.relpath(os.path.join(root, f), folder) for f in files
              if not f.startswith(".") and os.path.splitext(f)[1].lower() in VIDEO_EXTENSIONS]
  return sorted(p.replace(os.sep, "/") for p in found)


@dataclasses.dataclass(eq=False)
class VideoClipsConfig(tfds.core.BuilderConfig):
  """Clip length and the step between clip starts, both in frames."""
  clip_len: int = 8
  stride: int = 8


@functools.cache
def clips_config(clip_len: int, stride: int) -> VideoClipsConfig:
  """The config of clip_len and stride: one object per pair, since TFDS refuses a config that has a
  predefined config's name (BUILDER_CONFIGS) but is another object."""
  if clip_len < 1 or stride < 1:
    raise ValueError(f"clip_len and stride must be >= 1, got {clip_len}, {stride}")
  return VideoClipsConfig(name=f"clip{clip_len}_stride{stride}", clip_len=clip_len, stride=stride,
                          description=f"clips of {clip_len} frames starting every {stride} frames")


class VideoClips(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Clips of the videos in the manual directory; see the module docstring.

  Not registered with TFDS: `builder_class(name)` names it, and readers load
  the prepared files by name (tfds.data_source), without this code.
  """

  name = DEFAULT_NAME
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Clips of PNG frames with fps, source and start."}
  BUILDER_CONFIGS = [clips_config(8, 8)]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f"Put the video files ({', '.join(VIDEO_EXTENSIONS)}) in one folder, subfolders "
      "allowed, and pass it as the manual directory.")

  def __init__(self, *, beam: bool = False, **kwargs):
    """beam: cut the clips in an Apache Beam pipeline (beam_clips.py), run on the runner that
    download_and_prepare's DownloadConfig names; without it, in this process."""
    self.beam = beam
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="Fixed-length clips of a folder of videos, frames as lossless PNG.",
        features=tfds.features.FeaturesDict({
            "video": tfds.features.Video(shape=(self.builder_config.clip_len, None, None, 3),
                                         encoding_format="png"),
            "fps": tfds.features.Scalar(np.float32),
            "source": tfds.features.Text(),
            "start": tfds.features.Scalar(np.int64),
        }))

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    return {"train": self._generate_examples(os.fspath(dl_manager.manual_dir))}

  def _generate_examples(self, folder: str):
    """The (key, example) of every clip: a generator, or with beam a Beam PTransform."""
    config = self.builder_config
    png = self.info.features["video"].feature.encode_example  # The feature's own frame encoder.
    paths = find_videos(folder)
    if self.beam:
      from progvc_jax.data import beam_clips
      return beam_clips.ClipsOfVideos(folder, paths, config.clip_len, config.stride, png)
    return self._examples_in_process(folder, paths, png)

  def _examples_in_process(self, folder: str, paths: list[str], png) -> Iterator[tuple[str, dict]]:
    config = self.builder_config
    for n, rel in enumerate(paths, 1):
      clips = 0
      try:
        for key, example in video_examples(folder, rel, config.clip_len, config.stride, png):
          yield key, example
          clips += 1
      except video.VideoError as e:
        logging.warning("broken video skipped (%d clips kept): %s", clips, e)
      logging.info("video %d/%d %s: %d clips", n, len(paths), rel, clips)

  def _process_pipeline_result(self, pipeline_result) -> None:
    from progvc_jax.data import beam_clips
    beam_clips.report(pipeline_result)


def video_examples(folder: str, rel: str, clip_len: int, stride: int,
                   encode: Callable[[np.ndarray], Any]) -> Iterator[tuple[str, dict]]:
  """(key, example) of each clip of the video folder/rel; raises video.VideoError, after the clips
  before the failure, where the file does not open or decode."""
  with video.local_copy(os.path.join(folder, rel)) as path:
    info = video.probe(path)
    for start, frames in clips_of(path, clip_len, stride, encode):
      yield f"{rel}@{start}", {"video": frames, "fps": info.fps, "source": rel, "start": start}


def clips_of(path: str, clip_len: int, stride: int,
             encode: Callable[[np.ndarray], Any] = np.asarray) -> Iterator[tuple[int, list]]:
  """(start, [encode(frame) of its clip_len frames]) for starts 0, stride, ... while a clip fits.

  Decodes the video once, front to back, holding at most clip_len frames.
  Each frame is encoded once, however many clips share it (stride <
  clip_len), and not at all if no clip has it (stride > clip_len): encoding
  costs far more than decoding.
  """
  window = collections.deque(maxlen=clip_len)
  for i, frame in enumerate(video.iter_frames(path)):
    window.append(encode(frame) if i % stride < clip_len else None)
    start = i - clip_len + 1
    if start >= 0 and start % stride == 0:
      yield start, list(window)


def builder_class(name: str = DEFAULT_NAME) -> type[VideoClips]:
  """VideoClips under the dataset name `name` (lower case letters, digits and _)."""
  if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
    raise ValueError(f"dataset name {name!r}: use lower case letters, digits and _, "
                     "starting with a letter")
  if name == VideoClips.name:
    return VideoClips
  return type(VideoClips.__name__, (VideoClips,), {"name": name}, skip_registration=True)
