"""The corpus pipelines on Apache Beam (DirectRunner, 2 worker processes): the dataset build and batch encoding."""

import csv
import dataclasses
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from progvc_jax import beam_options
from progvc_jax.codec import bitstream, corpus, decoder
from progvc_jax.data import build, samples, video
from tests.codec.test_codec import CALIBRATION, write_checkpoints
from tests.test_data_tfds import read_all

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWO_WORKERS = ["--runner", "DirectRunner", "--direct_num_workers", "2"]
FRAMES = {"a/clip.mp4": 6, "b/clip.mp4": 5, "bikes.mp4": 4}  # All 64 x 64: one compiled size per worker.


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
  """Two clip.mp4 in different folders, bikes.mp4, and broken.mp4 (cut inside its header)."""
  folder = tmp_path_factory.mktemp("videos")
  bikes, carphone = samples.sample_videos()
  (folder / "a").mkdir()
  (folder / "b").mkdir()
  video.write_video(str(folder / "a" / "clip.mp4"), video.read_frames(carphone, count=6)[:, :64, :64], 30)
  video.write_video(str(folder / "b" / "clip.mp4"), video.read_frames(bikes, count=5)[:, 100:164, 200:264], 25)
  video.write_video(str(folder / "bikes.mp4"), video.read_frames(bikes, 20, 4)[:, 100:164, 300:364], 25)
  with open(carphone, "rb") as f:
    (folder / "broken.mp4").write_bytes(f.read(3000))
  return str(folder)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
  pytest.importorskip("apache_beam")  # Only the Beam tests take the model: skip before exporting it.
  from progvc_jax import export
  folder = tmp_path_factory.mktemp("bundle")
  tok, ctx = write_checkpoints(str(folder))
  path = str(folder / "model.pgvcm")
  export.export(tok, ctx, path, **CALIBRATION)
  return path


def corpus_main(args, capsys):
  status = corpus.main(args)
  out, err = capsys.readouterr()
  return status, out, err


def table(out, videos):
  with open(os.path.join(out, "corpus.csv")) as f:
    rows = list(csv.DictReader(f))
  with open(os.path.join(out, "corpus.json")) as f:
    assert [{k: str(v) if v is not None else "" for k, v in r.items()} for r in json.load(f)] == rows
  return {os.path.relpath(r["video"], videos): r for r in rows}


@pytest.mark.slow
def test_beam_build_makes_the_single_process_records(videos, tmp_path):
  pytest.importorskip("apache_beam")
  run = subprocess.run([sys.executable, "-m", "progvc_jax.data.build", "--videos", videos, "--data_dir",
                        str(tmp_path / "beam"), "--clip_len=2", "--stride=2", *TWO_WORKERS],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  name = "progvc_videos/clip2_stride2"
  assert f"{name} in {tmp_path / 'beam'}: 7 clips" in run.stdout
  # The broken file is counted and named once the pipeline is done.
  assert "1 broken videos skipped: broken.mp4" in run.stderr
  assert list((tmp_path / "beam" / "progvc_videos" / "clip2_stride2" / "1.0.0").glob("*.array_record-*"))
  assert build.build(videos, str(tmp_path / "one"), clip_len=2, stride=2) == (name, 7)
  records, expected = read_all(str(tmp_path / "beam"), name), read_all(str(tmp_path / "one"), name)
  assert set(records) == set(expected) == {(v, s) for v, n in FRAMES.items() for s in range(0, n - 1, 2)}
  for key, record in records.items():
    np.testing.assert_array_equal(np.asarray(record["video"]), np.asarray(expected[key]["video"]))
    assert record["fps"] == expected[key]["fps"]


@pytest.mark.slow
def test_corpus_encodes_every_video_and_reruns_skip(videos, model_path, tmp_path, capsys):
  pytest.importorskip("apache_beam")
  from progvc_jax.codec.model import CodecModel
  out = str(tmp_path / "out")
  args = ["--videos", os.path.join(videos, "**", "*.mp4"), "--out", out, "--model", model_path, "--scales", "3",
          "--gop", "2", "--rd-lambda", "0", *TWO_WORKERS]
  status, printed, _ = corpus_main(args, capsys)
  assert status == 1 and "3 encoded, 0 skipped, 1 failed" in printed  # 1: a video failed
  rows = table(out, videos)
  assert rows["broken.mp4"]["status"] == "failed" and rows["broken.mp4"]["output"] == ""
  assert "VideoError" in rows["broken.mp4"]["error"] and "broken.mp4" in rows["broken.mp4"]["error"]
  model = CodecModel.load(model_path)
  for rel, frames in FRAMES.items():
    row = rows[rel]
    assert row["status"] == "encoded" and row["error"] == ""
    assert row["output"] == os.path.join(out, rel + ".pgvc")  # a/clip.mp4 and b/clip.mp4 apart
    with open(row["output"], "rb") as f:
      data = f.read()
    assert int(row["frames"]) == frames and int(row["bytes"]) == len(data)
    assert float(row["bpp"]) == pytest.approx(8 * len(data) / (64 * 64 * frames), rel=1e-5)
    assert float(row["seconds"]) > 0
    decoded = decoder.decode(data, model, complete="none")
    assert decoded.shape == (frames, 64, 64, 3)
  assert sorted(os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out) for f in fs) == [
      "a/clip.mp4.pgvc", "b/clip.mp4.pgvc", "bikes.mp4.pgvc", "corpus.csv", "corpus.json"]

  # Again: the outputs of this model are skipped; one claiming another model's fingerprint is encoded again.
  other = rows["b/clip.mp4"]["output"]
  with open(other, "rb") as f:
    header, frames = bitstream.read_stream(f.read())
  with open(other, "wb") as f:
    f.write(bitstream.write_stream(dataclasses.replace(header, fingerprint=bytes(8)), frames))
  kept = os.stat(rows["a/clip.mp4"]["output"]).st_mtime_ns
  status, printed, _ = corpus_main(args, capsys)
  assert status == 1 and "1 encoded, 2 skipped, 1 failed" in printed
  again = table(out, videos)
  assert {rel: r["status"] for rel, r in again.items()} == {
      "a/clip.mp4": "skipped", "b/clip.mp4": "encoded", "bikes.mp4": "skipped", "broken.mp4": "failed"}
  assert again["a/clip.mp4"]["bytes"] == rows["a/clip.mp4"]["bytes"]
  assert os.stat(rows["a/clip.mp4"]["output"]).st_mtime_ns == kept
  with open(other, "rb") as f:
    assert bitstream.Reader(f).header.fingerprint == model.fingerprint


@pytest.mark.slow
def test_corpus_and_build_read_urls(videos, model_path, capsys):
  """Storage that tf.io.gfile reads and writes (gs:// on a cluster; here its in-memory file system): videos
  are copied to local files to decode, outputs encoded locally and copied whole."""
  pytest.importorskip("apache_beam")
  import tensorflow as tf
  from progvc_jax.codec.model import CodecModel
  from progvc_jax.data import tfds_videos
  gfile = tf.io.gfile
  gfile.makedirs("ram://corpus/x")  # The in-memory file system lists by name prefix: no name starts another.
  gfile.copy(os.path.join(videos, "a", "clip.mp4"), "ram://corpus/x/clip.mp4", overwrite=True)
  gfile.copy(os.path.join(videos, "broken.mp4"), "ram://corpus/broken.mp4", overwrite=True)
  assert tfds_videos.find_videos("ram://corpus") == ["broken.mp4", "x/clip.mp4"]
  (key, example), *rest = tfds_videos.video_examples("ram://corpus", "x/clip.mp4", 6, 6, np.asarray)
  assert key == "x/clip.mp4@0" and not rest
  np.testing.assert_array_equal(np.stack(example["video"]), video.read_frames(os.path.join(videos, "a", "clip.mp4")))
  with pytest.raises(video.VideoError, match=r"^ram://corpus/broken.mp4: not a video file"):
    next(tfds_videos.video_examples("ram://corpus", "broken.mp4", 2, 2, np.asarray))

  args = ["--videos", "ram://corpus", "--out", "ram://corpus_out", "--model", model_path, "--gop", "2",
          "--rd-lambda", "0", "--runner", "DirectRunner"]  # One worker, in this process, which sees ram://.
  for expected in ("1 encoded, 0 skipped, 1 failed", "0 encoded, 1 skipped, 1 failed"):
    status, printed, _ = corpus_main(args, capsys)
    assert status == 1 and expected in printed
  with gfile.GFile("ram://corpus_out/corpus.json") as f:
    rows = {r["video"]: r for r in json.load(f)}
  assert rows["ram://corpus/broken.mp4"]["error"].startswith("VideoError: ram://corpus/broken.mp4: not a video")
  assert rows["ram://corpus/x/clip.mp4"]["output"] == "ram://corpus_out/x/clip.mp4.pgvc"
  with gfile.GFile("ram://corpus_out/x/clip.mp4.pgvc", "rb") as f:
    assert decoder.decode(f.read(), CodecModel.load(model_path), complete="none").shape == (6, 64, 64, 3)


@pytest.mark.slow
def test_corpus_bad_input_is_one_line_and_writes_nothing(videos, model_path, tmp_path, capsys):
  pytest.importorskip("apache_beam")
  out = tmp_path / "out"
  cases = [
      (["--videos", str(tmp_path / "nothing")], f"--videos {tmp_path / 'nothing'}: no such file or folder"),
      (["--videos", str(tmp_path / "*.mkv")], f"--videos {tmp_path / '*.mkv'}: matches no files"),
      (["--videos", videos, "--scales", "9"], "scales must be in 1..4 for this model, got 9"),
      (["--videos", videos, "--gop", "0"], "gop must be at least 1, got 0"),
      (["--videos", videos, "--model", str(tmp_path / "none.pgvcm")], "none.pgvcm"),
      (["--videos", videos, "--direct_num_workers", "2", "--bogus", "1"],
       "unknown flags (neither this command's nor Beam's): --bogus"),
  ]
  for args, message in cases:
    status, _, err = corpus_main(["--out", str(out), "--model", model_path, *args], capsys)
    assert status == 1 and len(err.splitlines()) == 1 and err.startswith("corpus: error: "), err
    assert message in err
    assert not out.exists()


@pytest.mark.slow
def test_build_flags_for_beam(videos, tmp_path):
  pytest.importorskip("apache_beam")
  for extra, message in [(["--direct_num_workers", "2"], "unexpected arguments --direct_num_workers 2 (Beam's "
                                                          "options need --runner)"),
                         (TWO_WORKERS + ["--clip-len", "4"], "unknown flags (neither this command's nor "
                                                            "Beam's): --clip-len")]:
    run = subprocess.run([sys.executable, "-m", "progvc_jax.data.build", "--videos", videos, "--data_dir",
                          str(tmp_path), *extra], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert run.returncode != 0 and run.stderr.splitlines()[-1] == f"build: {message}"
    assert not os.listdir(tmp_path)


def test_two_workers_are_processes_outside_prism():
  pytest.importorskip("apache_beam")
  from apache_beam.options.pipeline_options import DirectOptions, StandardOptions
  options = beam_options.pipeline_options("DirectRunner", ["--direct_num_workers", "2"])
  assert options.view_as(StandardOptions).runner == "FnApiRunner"
  assert options.view_as(DirectOptions).direct_running_mode == "multi_processing"
  threads = beam_options.pipeline_options("DirectRunner", ["--direct_num_workers=2",
                                                           "--direct_running_mode=multi_threading"])
  assert threads.view_as(DirectOptions).direct_running_mode == "multi_threading"
  one = beam_options.pipeline_options("DirectRunner", [])
  assert one.view_as(StandardOptions).runner == "FnApiRunner"
  assert one.view_as(DirectOptions).direct_running_mode == "in_memory"
  dataflow = beam_options.pipeline_options("DataflowRunner", ["--project", "p", "--region=r"])
  assert dataflow.get_all_options(drop_default=True) == {"runner": "DataflowRunner", "project": "p",
                                                         "region": "r"}


def test_without_beam_the_commands_say_how_to_install_it(monkeypatch, videos, tmp_path, capsys):
  monkeypatch.setitem(sys.modules, "apache_beam", None)  # import apache_beam now fails
  with pytest.raises(beam_options.BeamMissing, match=r'^Apache Beam is not installed: pip install "progvc\[beam\]"$'):
    beam_options.pipeline_options("DirectRunner", [])
  status, _, err = corpus_main(["--videos", videos, "--out", str(tmp_path / "out")], capsys)
  assert status == 1 and err == 'corpus: error: Apache Beam is not installed: pip install "progvc[beam]"\n'
  # Without --runner the build needs no Beam.
  assert build.build(videos, str(tmp_path / "data"), clip_len=6, stride=6) == ("progvc_videos/clip6_stride6", 1)
