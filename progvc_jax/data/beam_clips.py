"""The clip dataset's build on Apache Beam: one element per video, its clips cut in a DoFn.

tfds_videos.VideoClips(beam=True) returns ClipsOfVideos from
_generate_examples; TFDS encodes the examples and writes the array_record
shards in the same pipeline (its BeamWriter), so the records are those of the
single-process build. The launching process lists the videos; the workers
read them, so the folder must be one every worker sees: a URL such as
gs://... (each video copied to a local file to decode), or on a cluster a
shared mount. A file that does not decode is a warning in its worker's log,
counted and named in Beam metrics (namespace NAMESPACE), and report() logs
them all once the pipeline is done.
"""

from absl import logging
import apache_beam as beam
from apache_beam.metrics.metric import Metrics, MetricsFilter

from progvc_jax.data import tfds_videos
from progvc_jax.data import video

NAMESPACE = "progvc_build"


class _CutClips(beam.DoFn):
  """A video's path (relative to the folder) -> the (key, example) of each of its clips."""

  def __init__(self, folder: str, clip_len: int, stride: int, encode):
    self.folder, self.clip_len, self.stride, self.encode = folder, clip_len, stride, encode
    self.videos = Metrics.counter(NAMESPACE, "videos")
    self.clips = Metrics.counter(NAMESPACE, "clips")
    self.broken = Metrics.counter(NAMESPACE, "broken_videos")
    self.broken_names = Metrics.string_set(NAMESPACE, "broken_video_names")

  def process(self, rel: str):
    clips = 0
    try:
      for key_example in tfds_videos.video_examples(self.folder, rel, self.clip_len, self.stride,
                                                    self.encode):
        yield key_example
        clips += 1
    except video.VideoError as e:
      self.broken.inc()
      self.broken_names.add(rel)
      logging.warning("broken video skipped (%d clips kept): %s", clips, e)
    self.videos.inc()
    self.clips.inc(clips)
    logging.info("video %s: %d clips", rel, clips)


class ClipsOfVideos(beam.PTransform):
  """The pipeline's start -> (key, example) of every clip of the videos folder/paths."""

  def __init__(self, folder: str, paths: list[str], clip_len: int, stride: int, encode):
    super().__init__()
    self.folder, self.paths, self.clip_len, self.stride, self.encode = (
        folder, paths, clip_len, stride, encode)

  def expand(self, pipeline):
    return (pipeline
            | "Videos" >> beam.Create(self.paths)
            | "Spread" >> beam.Reshuffle()  # Else the runner may keep all videos in the one bundle Create makes.
            | "CutClips" >> beam.ParDo(_CutClips(self.folder, self.clip_len, self.stride, self.encode)))


def report(result) -> tuple[dict[str, int], list[str]]:
  """Logs the finished pipeline's counts and broken videos; returns ({counter: value}, broken names)."""
  metrics = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))
  counts = {m.key.metric.name: m.committed for m in metrics["counters"]}
  broken = sorted(set().union(*(m.committed for m in metrics.get("string_sets", []))))
  logging.info("beam build: %d videos, %d clips", counts.get("videos", 0), counts.get("clips", 0))
  if broken:
    logging.warning("%d broken videos skipped: %s", counts.get("broken_videos", 0), ", ".join(broken))
  return counts, broken
