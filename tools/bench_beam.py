"""Throughput of the corpus pipelines on the DirectRunner: videos/s and frames/s of the dataset build and of
batch encoding, with 1 and 2 workers (needs `pip install "progvc[beam]"`).

  python tools/bench_beam.py [--videos 8] [--frames 24] [--workers 1,2] [--model BUNDLE]

The corpus is carphone (176x144) cut into --videos pieces of --frames frames.
Each figure is one run of the command, as a user starts it: its wall time
includes starting Python, the Beam workers and (for encoding) loading the
model and compiling its steps, so small corpora understate what a long run
sustains. Compiled steps are cached in a fresh folder for each run, so no run
starts with another's.
"""

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cpu_name() -> str:
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
  except (OSError, subprocess.CalledProcessError):
    return platform.processor() or "unknown CPU"
  names = [line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name:")]
  return names[0] if names else "unknown CPU"


def make_corpus(folder: str, videos: int, frames: int) -> None:
  """Pieces of carphone, four to a subfolder, each from its own place in the clip."""
  from progvc_jax.data import samples, video
  carphone = samples.sample_videos()[1]
  last_start = video.probe(carphone).num_frames - frames
  for i in range(videos):
    os.makedirs(os.path.join(folder, f"v{i // 4}"), exist_ok=True)
    video.write_video(os.path.join(folder, f"v{i // 4}", f"clip{i % 4}.mp4"),
                      video.read_frames(carphone, i * last_start // max(videos - 1, 1), frames), 30)


def timed(command: list[str], cache: str) -> float:
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=cache)
  start = time.perf_counter()
  run = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
  seconds = time.perf_counter() - start
  if run.returncode != 0:
    sys.exit(f"{' '.join(command)} failed:\n{run.stderr[-3000:]}")
  return seconds


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--videos", type=int, default=8)
  p.add_argument("--frames", type=int, default=24)
  p.add_argument("--workers", default="1,2", help="worker counts to run, comma separated")
  p.add_argument("--model", help="codec bundle (default: the shipped model)")
  args = p.parse_args()
  total = args.videos * args.frames
  print(f"{cpu_name()}, {os.cpu_count()} CPUs; {args.videos} videos of {args.frames} frames (176x144)")
  print(f"{'pipeline':10} {'workers':>7} {'seconds':>8} {'videos/s':>9} {'frames/s':>9}")
  with tempfile.TemporaryDirectory() as tmp:
    corpus = os.path.join(tmp, "videos")
    make_corpus(corpus, args.videos, args.frames)
    for workers in (int(w) for w in args.workers.split(",")):
      beam = ["--runner", "DirectRunner", "--direct_num_workers", str(workers)]
      run = os.path.join(tmp, f"w{workers}")
      jobs = {
          "build": [sys.executable, "-m", "progvc_jax.data.build", "--videos", corpus, "--data_dir",
                    os.path.join(run, "tfds"), "--clip_len", "8", "--stride", "8", *beam],
          "encode": [sys.executable, "-m", "progvc_jax.codec.corpus", "--videos", corpus, "--out",
                     os.path.join(run, "pgvc"), *(["--model", args.model] if args.model else []), *beam],
      }
      for name, command in jobs.items():
        seconds = timed(command, os.path.join(run, f"jax-cache-{name}"))
        print(f"{name:10} {workers:7d} {seconds:8.1f} {args.videos / seconds:9.3f} {total / seconds:9.2f}",
              flush=True)


if __name__ == "__main__":
  main()
