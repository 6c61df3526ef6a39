"""The rate a context model gives a real video: bits per pixel of I- and P-frames.

  python tools/eval_context.py --tokenizer TOK --context CTX --video clip.mp4 [--frames 30] [--gop 30]

TOK and CTX are training workdirs (latest EMA weights), parameter
checkpoints or codec bundles (a bundle's float models). Each frame is tokenized whole (edge-padded to the pixel tile)
and its tiles are run scale by scale through the incremental path the codec
uses (progressive.FrameSteps): the first frame of each GOP as an I-frame,
the rest as P-frames on the previous frame's tokens. The figures are the
cross-entropy of the true tokens, -log2 p, which the range coder spends
within a fraction of a percent; bits per pixel count the source's pixels,
not the padding. Prints bpp of I- and P-frames, bits per token of each
scale, and PSNR of the full-scale reconstruction; --json writes them.
"""

import json
import statistics

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from progvc_jax import checkpointing
from progvc_jax.data import video
from progvc_jax.models import progressive
from progvc_jax.models.tokenizer import Tokenizer
from progvc_jax.models.transformer import I_FRAME, P_FRAME, ContextModel

flags.DEFINE_string("tokenizer", None, "Tokenizer workdir, parameter checkpoint or bundle.", required=True)
flags.DEFINE_string("context", None, "Context-model workdir, parameter checkpoint or bundle.", required=True)
flags.DEFINE_multi_string("video", None, "Video file(s) to measure.", required=True)
flags.DEFINE_integer("frames", 30, "Frames to read from the start of each video.")
flags.DEFINE_integer("gop", 0, "I-frame every this many frames (0: only the first).")
flags.DEFINE_string("json", None, "Also write the figures to this file.")
FLAGS = flags.FLAGS


def measure(tok: Tokenizer, steps: progressive.FrameSteps, frames: np.ndarray, gop: int) -> dict:
  """Cross-entropy bits per frame and per scale of `frames` (T, H, W, 3) uint8."""
  t_count, height, width = frames.shape[:3]
  encode = nnx.jit(lambda m, x: m.encode(x))
  decode = nnx.jit(lambda m, tokens: m.decode(tokens, height, width))
  offsets = steps.offsets
  per_frame, per_scale, psnr = [], np.zeros((2, steps.num_scales)), []
  counts = np.zeros((2, steps.num_scales))
  prev = None
  for i in range(t_count):
    x = jnp.asarray(frames[i:i + 1], jnp.float32) / 127.5 - 1.0
    tokens = encode(tok, x)
    n = tokens[0].shape[1]
    flat_tokens = [np.asarray(t).reshape(n, -1) for t in tokens]
    kind = I_FRAME if prev is None or (gop and i % gop == 0) else P_FRAME
    bits = np.zeros(steps.num_scales)

    def choose(k, probs, bits=bits, flat_tokens=flat_tokens):
      p = np.take_along_axis(np.asarray(probs), flat_tokens[k][..., None], -1)[..., 0]
      bits[k] = -np.log2(np.maximum(p, 1e-30)).sum()
      return flat_tokens[k]

    _, prev, _ = steps.run(n, kind, prev, choose, grid=tok.tile_grid(height, width))
    per_frame.append((kind, bits.sum()))
    per_scale[kind] += bits
    counts[kind] += [n * (offsets[k + 1] - offsets[k]) for k in range(steps.num_scales)]
    rec = decode(tok, tokens)
    mse = float(jnp.mean(jnp.square((rec - x) / 2.0)))
    psnr.append(10 * np.log10(1.0 / max(mse, 1e-10)))
  pixels = height * width
  out = {"frames": t_count, "size": [height, width], "psnr_all_scales": float(np.mean(psnr))}
  for kind, name in ((I_FRAME, "I"), (P_FRAME, "P")):
    b = [bits for k, bits in per_frame if k == kind]
    out[f"{name}_frames"] = len(b)
    if b:
      out[f"bpp_{name}"] = float(np.mean(b) / pixels)
      out[f"bits_per_token_{name}"] = float(per_scale[kind].sum() / counts[kind].sum())
      out[f"bits_per_token_{name}_per_scale"] = [float(v) for v in per_scale[kind] / np.maximum(counts[kind], 1)]
  out["median_frame_bits"] = float(statistics.median(b for _, b in per_frame))
  return out


def main(argv):
  del argv
  tok = checkpointing.load_module(FLAGS.tokenizer, "tokenizer", Tokenizer)
  model = checkpointing.load_module(FLAGS.context, "context", ContextModel)
  steps = progressive.FrameSteps(tok.quantizer, model)
  results = {}
  for path in FLAGS.video:
    frames = video.read_frames(path, count=FLAGS.frames)
    r = measure(tok, steps, frames, FLAGS.gop)
    results[path] = r
    line = f"{path}: {r['frames']} frames {r['size'][1]}x{r['size'][0]}, PSNR {r['psnr_all_scales']:.2f} dB"
    for name in ("I", "P"):
      if f"bpp_{name}" in r:
        line += (f" | {name}: {r[f'bpp_{name}']:.4f} bpp, {r[f'bits_per_token_{name}']:.3f} bits/token "
                 f"({r[f'{name}_frames']} frames)")
    print(line)
    for name in ("I", "P"):
      if f"bpp_{name}" in r:
        print(f"  {name} bits/token per scale: " + " ".join(f"{v:.2f}" for v in r[f"bits_per_token_{name}_per_scale"]))
  if FLAGS.json:
    with open(FLAGS.json, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  jax.config.update("jax_platforms", "cpu")
  app.run(main)
