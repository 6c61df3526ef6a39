"""Prepares a TFDS dataset of clips from a folder of videos:
`python -m progvc_jax.data.build --videos DIR --data_dir DIR [--name progvc_videos]
[--clip_len 8] [--stride 8]`.

Writes array_record files, which training reads with random access
(`--config.data.tfds_name=NAME/CONFIG --config.data.tfds_data_dir=DIR`; the
last line printed says which). Progress is logged per video. Run the same
command again after an interruption: a finished dataset is reused, and what
an interrupted build left (TFDS's incomplete.* folders, or a dataset folder
without its dataset_info.json) is removed before building again. Only one
build of a dataset config may run at a time.
"""

import os
import sys

from absl import app, flags, logging
from etils import epath
import tensorflow_datasets as tfds
from tensorflow_datasets.core import constants

from progvc_jax.data import tfds_videos

flags.DEFINE_string("videos", None, "Folder of video files (subfolders included).", required=True)
flags.DEFINE_string("data_dir", None, "TFDS data directory to write the dataset to.", required=True)
flags.DEFINE_string("name", tfds_videos.DEFAULT_NAME, "Dataset name.")
flags.DEFINE_integer("clip_len", 8, "Frames per clip.")
flags.DEFINE_integer("stride", 8, "Frames between the starts of consecutive clips.")
FLAGS = flags.FLAGS


def build(videos: str, data_dir: str, *, name: str = tfds_videos.DEFAULT_NAME, clip_len: int = 8,
          stride: int = 8) -> tuple[str, int]:
  """Builds (or reuses) the dataset; returns its name for tfds ("NAME/CONFIG") and its clip count.

  Raises FileNotFoundError for a missing folder or one without video files,
  ValueError for a bad name, clip_len or stride.
  """
  if not os.path.isdir(videos):
    raise FileNotFoundError(f"--videos {videos}: no such folder")
  if not tfds_videos.find_videos(videos):
    raise FileNotFoundError(f"--videos {videos}: no video files "
                            f"({' '.join(tfds_videos.VIDEO_EXTENSIONS)}) in it or its subfolders")
  config = tfds_videos.clips_config(clip_len, stride)
  builder = tfds_videos.builder_class(name)(data_dir=data_dir, config=config)
  _remove_unfinished(builder.data_path)
  builder.download_and_prepare(
      file_format="array_record",
      download_config=tfds.download.DownloadConfig(manual_dir=videos, try_download_gcs=False))
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
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    name, clips = build(FLAGS.videos, FLAGS.data_dir, name=FLAGS.name, clip_len=FLAGS.clip_len,
                        stride=FLAGS.stride)
  except (FileNotFoundError, ValueError) as e:
    sys.exit(f"build: {e}")
  print(f"{name} in {FLAGS.data_dir}: {clips} clips; train on it with "
        f"--config.data.tfds_name={name} --config.data.tfds_data_dir={FLAGS.data_dir}")


if __name__ == "__main__":
  app.run(main)
