"""Batch encoding of a corpus on Apache Beam: a .pgvc per video, and a table of them all.

  python -m progvc_jax.codec.corpus --videos GLOB|FOLDER --out DIR [--model BUNDLE]
      [--scales K | --target-kbps R] [--gop N] [--rd-lambda L] [--runner RUNNER BEAM_FLAGS...]

--videos is a glob (quote it; `**` matches any depth of folders) or a folder
(every video file under it, as the dataset build takes them). Outputs mirror
the videos' paths under DIR: ROOT/a/clip.mp4 becomes DIR/a/clip.mp4.pgvc, where
ROOT is the folder, or the glob's folders before its first wildcard. So
b/clip.mp4 or a/clip.mkv never take the same output as a/clip.mp4.

The pipeline has one element per video; each worker loads the model once
(DoFn.setup), and each output is written whole or not at all
(encoder.encode_file). A video that fails is a row with its error, and the
rest go on. DIR/corpus.csv and DIR/corpus.json list every video: video,
output (empty where it failed), frames, bytes, bpp, seconds (encode time),
status (encoded, skipped or failed) and error. Run the command again and
the videos whose output exists, made with this model (the header's
fingerprint), are skipped; the others are encoded again. (An output made by
the same model with other --scales or --gop is skipped too: encode into
another DIR.) Beam counters `encoded`, `skipped` and `failed` (namespace
NAMESPACE) count them. The model (--model) is a local path on every worker.

Beam's flags follow the command's own (beam_options.py); e.g. `--runner
DirectRunner --direct_num_workers 2` on this machine. Videos and DIR are
local paths, which on a cluster every worker must see (a shared mount), or
URLs that tf.io.gfile reads and writes (gs://...): each such video is copied
to a local temporary file to decode, and each output is encoded locally and
then copied, whole, to its URL. A glob in a URL matches within one folder
level (no `**`). The exit status is 1 when a video failed, with the table
written all the same.
"""

import argparse
import csv
import glob
import io
import json
import os
import sys
import tempfile
import time
import uuid

from absl import logging

from progvc_jax import beam_options
from progvc_jax.data import video

try:
  import apache_beam as beam
except ImportError:  # main() says how to install it.
  beam = None

NAMESPACE = "progvc_corpus"
TABLE = "corpus"  # DIR/corpus.csv and DIR/corpus.json
COLUMNS = ("video", "output", "frames", "bytes", "bpp", "seconds", "status", "error")
STATUSES = ("encoded", "skipped", "failed")
HEADER_BYTES = 4096  # More than any progvc header takes.


class CorpusError(ValueError):
  """Bad input, said in one line before anything is written."""


def _gfile():
  import tensorflow as tf  # Deferred: only URLs need it.
  return tf.io.gfile


def _isdir(path: str) -> bool:
  return _gfile().isdir(path) if video.is_url(path) else os.path.isdir(path)


def _open(path: str, mode: str):
  return _gfile().GFile(path, mode) if video.is_url(path) else open(path, mode)


def find_inputs(videos: str) -> tuple[str, list[str]]:
  """(root, video paths relative to it) of a folder, a glob or one file; raises CorpusError if none."""
  from progvc_jax.data import tfds_videos
  url = video.is_url(videos)
  if _isdir(videos):
    found = tfds_videos.find_videos(videos)
    if not found:
      raise CorpusError(f"--videos {videos}: no video files ({' '.join(tfds_videos.VIDEO_EXTENSIONS)}) "
                        "in it or its subfolders")
    return videos, found
  if not glob.has_magic(videos):
    if not (_gfile().exists(videos) if url else os.path.isfile(videos)):
      raise CorpusError(f"--videos {videos}: no such file or folder")
    return os.path.dirname(videos) or ".", [os.path.basename(videos)]
  parts = videos.split(os.sep)
  fixed = next(i for i, part in enumerate(parts) if glob.has_magic(part))
  root = os.sep.join(parts[:fixed]) or ("." if fixed == 0 else os.sep)
  matches = _gfile().glob(videos) if url else glob.glob(videos, recursive=True)
  found = sorted(os.path.relpath(p, root) for p in matches if not _isdir(p))
  if not found:
    raise CorpusError(f"--videos {videos}: matches no files")
  return root, found


def output_path(out: str, rel: str) -> str:
  """The output of video ROOT/rel: the same relative path under out, with .pgvc added."""
  return os.path.join(out, rel + ".pgvc")


def read_header(path: str):
  """The header of the progvc file at path; raises StreamError if it is not one."""
  from progvc_jax.codec import bitstream
  with _open(path, "rb") as f:
    return bitstream.Reader(io.BytesIO(f.read(HEADER_BYTES))).header


def stream_row(path: str) -> dict:
  """frames, bytes and bits per pixel of the progvc file at path."""
  header = read_header(path)
  size = _gfile().stat(path).length if video.is_url(path) else os.path.getsize(path)
  pixels = header.width * header.height * header.frame_count
  return {"frames": header.frame_count, "bytes": size, "bpp": round(8 * size / max(pixels, 1), 6)}


class EncodeVideo(beam.DoFn if beam else object):
  """(video path, output path) -> its table row; encodes unless the output exists from this model."""

  def __init__(self, model: str | None, settings: dict):
    self.model_path, self.settings = model, settings
    self.counters = {s: beam.metrics.Metrics.counter(NAMESPACE, s) for s in STATUSES}

  def setup(self):
    from progvc_jax import codec
    self.model = codec.load_model(self.model_path)

  def _made_with_model(self, output: str) -> bool:
    from progvc_jax.codec import bitstream
    if not (_gfile().exists(output) if video.is_url(output) else os.path.isfile(output)):
      return False
    try:
      return read_header(output).fingerprint == self.model.fingerprint
    except bitstream.StreamError:
      return False

  def _encode(self, source: str, output: str) -> None:
    from progvc_jax.codec import encoder
    with video.local_copy(source) as local:
      info = video.probe(local)
      fps = info.fps if info.fps > 0 else 25.0
      if not video.is_url(output):
        os.makedirs(os.path.dirname(output), exist_ok=True)
        encoder.encode_file(self.model, video.iter_frames(local), output, fps, **self.settings)
        return
      with tempfile.TemporaryDirectory() as tmp:
        encoded = os.path.join(tmp, os.path.basename(output))
        encoder.encode_file(self.model, video.iter_frames(local), encoded, fps, **self.settings)
        _gfile().copy(encoded, output, overwrite=True)  # Object stores write an object whole.

  def process(self, job: tuple[str, str]):
    source, output = job
    row = dict.fromkeys(COLUMNS, None) | {"video": source, "output": output, "error": ""}
    try:
      if self._made_with_model(output):
        row |= stream_row(output) | {"seconds": 0.0, "status": "skipped"}
      else:
        start = time.perf_counter()
        self._encode(source, output)
        row |= stream_row(output) | {"seconds": round(time.perf_counter() - start, 3), "status": "encoded"}
    except Exception as e:  # Any video's failure is its row's, never the whole corpus's.
      row |= {"output": "", "status": "failed", "error": f"{type(e).__name__}: {e}".replace("\n", " ")}
      logging.warning("%s failed: %s", source, row["error"])
    else:
      logging.info("%s %s: %d frames, %d bytes, %.4f bpp", row["status"], source, row["frames"], row["bytes"],
                   row["bpp"])
    self.counters[row["status"]].inc()
    yield row


def write_table(rows: list[dict], out: str) -> None:
  """DIR/corpus.csv and DIR/corpus.json, rows sorted by video, each file replaced whole."""
  rows = sorted(rows, key=lambda r: r["video"])
  text = io.StringIO()
  table = csv.DictWriter(text, COLUMNS, lineterminator="\n")
  table.writeheader()
  table.writerows(rows)
  for ext, content in (("csv", text.getvalue()), ("json", json.dumps(rows, indent=1) + "\n")):
    path = os.path.join(out, f"{TABLE}.{ext}")
    tmp = os.path.join(out, f".{TABLE}.{ext}.{uuid.uuid4().hex[:8]}.partial")
    with _open(tmp, "w") as f:
      f.write(content)
    if video.is_url(out):
      _gfile().rename(tmp, path, overwrite=True)
    else:
      os.replace(tmp, path)


def encode_corpus(videos: str, out: str, pipeline_options, *, model: str | None = None,
                  **settings) -> dict[str, int]:
  """Encodes the videos into out on Beam (pipeline_options: beam_options.pipeline_options); returns the
  count of each status. settings: encoder.Encoder's (scales, target_kbps, gop, rd_lambda).

  Raises CorpusError (and BundleError, for --model) before anything is written.
  """
  from progvc_jax import codec
  from progvc_jax.codec import encoder
  root, found = find_inputs(videos)
  if not video.is_url(out) and os.path.exists(out) and not os.path.isdir(out):
    raise CorpusError(f"--out {out}: not a folder")
  try:  # The encoder's own checks of the settings, against the model, on a frame size of one tile.
    checked = codec.load_model(model)
    encoder.Encoder(checked, io.BytesIO(), checked.pixel_tile, checked.pixel_tile, 25.0, **settings)
  except ValueError as e:
    raise CorpusError(str(e)) from None
  if video.is_url(out):
    _gfile().makedirs(out)
  else:
    os.makedirs(out, exist_ok=True)
  model = model and os.path.abspath(model)  # Workers may run elsewhere in the file system.
  jobs = [(os.path.join(root, rel), output_path(out, rel)) for rel in found]
  pipeline = beam.Pipeline(options=pipeline_options)
  _ = (pipeline
       | "Videos" >> beam.Create(jobs)
       | "Spread" >> beam.Reshuffle()  # Else the runner may keep all videos in the one bundle Create makes.
       | "Encode" >> beam.ParDo(EncodeVideo(model, settings))
       | "Collect" >> beam.combiners.ToList()
       | "Table" >> beam.Map(write_table, out))
  result = pipeline.run()
  result.wait_until_finish()
  metrics = result.metrics().query(beam.metrics.MetricsFilter().with_namespace(NAMESPACE))
  counts = dict.fromkeys(STATUSES, 0)
  counts.update({m.key.metric.name: m.committed for m in metrics["counters"]})
  return counts


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m progvc_jax.codec.corpus",
                              description="encode many videos on Apache Beam; the flags after these are Beam's",
                              allow_abbrev=False)
  p.add_argument("--videos", required=True, help="a glob of video files (quoted; ** for any depth) or a folder")
  p.add_argument("--out", required=True, help="folder of the .pgvc files and the table (corpus.csv, corpus.json)")
  p.add_argument("--model", help="codec bundle (default: the model shipped with progvc)")
  rate = p.add_mutually_exclusive_group()
  rate.add_argument("--scales", type=int, help="scales to send for every frame (default: all)")
  rate.add_argument("--target-kbps", type=float, help="bitrate target; picks the scales of each GOP")
  p.add_argument("--gop", type=int, default=30, help="an I-frame every N frames (default 30)")
  p.add_argument("--rd-lambda", type=float, default=None, help="as for progvc encode (default: the encoder's)")
  p.add_argument("--runner", default="DirectRunner", help="Beam runner (default DirectRunner)")
  return p


def main(argv=None) -> int:
  args, beam_args = parser().parse_known_args(argv)
  from progvc_jax.codec import cli
  cli.set_environment()  # Reaches the DirectRunner's worker processes too.
  from progvc_jax.codec.bundle import BundleError
  settings = {"scales": args.scales, "target_kbps": args.target_kbps, "gop": args.gop}
  if args.rd_lambda is not None:
    settings["rd_lambda"] = args.rd_lambda
  try:
    options = beam_options.pipeline_options(args.runner, beam_args)
    counts = encode_corpus(args.videos, args.out, options, model=args.model, **settings)
  except (CorpusError, BundleError, beam_options.BeamMissing, ValueError, OSError) as e:
    print(f"corpus: error: {e}", file=sys.stderr)
    return 1
  print(f"{counts['encoded']} encoded, {counts['skipped']} skipped, {counts['failed']} failed; "
        f"table {os.path.join(args.out, TABLE)}.csv and .json")
  return 1 if counts["failed"] else 0


if __name__ == "__main__":
  sys.exit(main())
