"""Prepares a TFDS dataset of clips from a folder of videos:
`python -m progvc_jax.data.build --videos DIR --data_dir DIR [--name progvc_videos]
[--clip_len 8] [--stride 8] [--runner RUNNER BEAM_FLAGS...]`.

Writes array_record files, which training reads with random access
(`--config.data.tfds_name=NAME/CONFIG --config.data.tfds_data_dir=DIR`; the
last line printed says which). Progress is logged per video. Run the same
command again after an interruption: a finished dataset is reused, and what
an interrupted build left (TFDS's incomplete.* folders, or a dataset folder
without its dataset_info.json) is removed before building again. Only one
build of a dataset config may run at a time.

With --runner the build is an Apache Beam pipeline on that runner (`pip
install "progvc[beam]"`), one element per video (beam_clips.py), with the
same records; the flags after build's own are Beam's pipeline options, e.g.
`--runner DirectRunner --direct_num_workers 2` on this machine, or
`--runner DataflowRunner --project P --region R --temp_location gs://...`
(see beam_options.py). Without --runner it runs in this process.
"""

import os
import sys

from absl import app, flags, logging
from etils import epath
import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow_datasets.core import constants

from progvc_jax import beam_options
from progvc_jax.data import tfds_videos
from progvc_jax.data import video

flags.DEFINE_string("videos", None, "Folder of video files (subfolders included); a path or a URL "
                    "(gs://...).", required=True)
flags.DEFINE_string("data_dir", None, "TFDS data directory to write the dataset to.", required=True)
flags.DEFINE_string("name", tfds_videos.DEFAULT_NAME, "Dataset name.")
flags.DEFINE_integer("clip_len", 8, "Frames per clip.")
flags.DEFINE_integer("stride", 8, "Frames between the starts of consecutive clips.")
flags.DEFINE_string("runner", None, "Build on Apache Beam with this runner (DirectRunner, DataflowRunner, "
                    "...); Beam's other pipeline options follow build's flags. Default: in this process.")
FLAGS = flags.FLAGS


def build(videos: str, data_dir: str, *, name: str = tfds_videos.DEFAULT_NAME, clip_len: int = 8,
          stride: int = 8, pipeline_options=None) -> tuple[str, int]:
  """Builds (or reuses) the dataset; returns its name for tfds ("NAME/CONFIG") and its clip count.

  pipeline_options: Beam's PipelineOptions (beam_options.pipeline_options) to
  build on Beam with, its runner included; None builds in this process.
  Raises FileNotFoundError for a missing folder or one without video files,
  ValueError for a bad name, clip_len or stride.
  """
  if not (tf.io.gfile.isdir(videos) if video.is_url(videos) else os.path.isdir(videos)):
    raise FileNotFoundError(f"--videos {videos}: no such folder")
  if not tfds_videos.find_videos(videos):
    raise FileNotFoundError(f"--videos {videos}: no video files "
                            f"({' '.join(tfds_videos.VIDEO_EXTENSIONS)}) in it or its subfolders")
  config = tfds_videos.clips_config(clip_len, stride)
  builder = tfds_videos.builder_class(name)(data_dir=data_dir, config=config,
                                            beam=pipeline_options is not None)
  _remove_unfinished(builder.data_path)
  builder.download_and_prepare(
      file_format="array_record",
      download_config=tfds.download.DownloadConfig(manual_dir=videos, try_download_gcs=False,
                                                   beam_options=pipeline_options))
  return f"{name}/{config.name}", builder.info.splits["train"].num_examples


def _remove_unfinished(data_path: epath.Path) -> None:
  """Removes what an interrupted build of the dataset at data_path left behind.

  TFDS writes into incomplete.<random>_<version> and renames it when done,
  so a killed build leaves that folder; a dataset folder missing its
  dataset_info.json was not finished either (TFDS would reuse it as is).
  """
  stale = list(data_path.parent.glob(f"{constants.INCOMPLETE_PREFIX}*_{data_path.name}"))
  if data_path.exists() and not (data_path / "dataset_info.json").exists():
    stale.append(data_path)
  for path in stale:
    logging.warning("removing %s, left by an interrupted build", path)
    path.rmtree()


def main(argv):
  try:
    options = None
    if FLAGS.runner:
      options = beam_options.pipeline_options(FLAGS.runner, argv[1:])
    elif len(argv) > 1:
      raise ValueError(f"unexpected arguments {' '.join(argv[1:])} (Beam's options need --runner)")
    name, clips = build(FLAGS.videos, FLAGS.data_dir, name=FLAGS.name, clip_len=FLAGS.clip_len,
                        stride=FLAGS.stride, pipeline_options=options)
  except (FileNotFoundError, ValueError, beam_options.BeamMissing) as e:
    sys.exit(f"build: {e}")
  print(f"{name} in {FLAGS.data_dir}: {clips} clips; train on it with "
        f"--config.data.tfds_name={name} --config.data.tfds_data_dir={FLAGS.data_dir}")


if __name__ == "__main__":
  app.run(main, flags_parser=lambda argv: FLAGS(argv, known_only=True))  # The rest are Beam's options.
