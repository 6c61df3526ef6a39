"""Exports trained models into a codec bundle for the CPU codec.

  python -m progvc_jax.export --tokenizer TOK --context CTX --out model.pgvcm
  python -m progvc_jax.export --bundle OLD.pgvcm --out model.pgvcm   # re-export a bundle's float models

TOK and CTX are training workdirs (their latest EMA weights are taken) or
parameter checkpoints. The context model must have been trained on that
tokenizer's codes (same vocabulary, latent channels and scale schedule).
Export also builds the integer probability path the codec codes with
(quantize.py): its activation ranges are calibrated on clips of the
embedded training data. The bundle (codec/bundle.py) is data only;
`progvc encode --model` reads it without any training code.
"""

import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from progvc_jax import checkpointing, quantize
from progvc_jax.codec import bundle as bundle_lib

flags.DEFINE_string("tokenizer", None, "Tokenizer workdir, parameter checkpoint or codec bundle (its tokenizer).")
flags.DEFINE_string("context", None, "Context-model workdir or parameter checkpoint.")
flags.DEFINE_string("bundle", None, "Take both float models from this bundle instead (any bundle version).")
flags.DEFINE_string("out", None, "Bundle file to write.")
flags.DEFINE_bool("overwrite", False, "Replace an existing bundle.")
flags.DEFINE_integer("calibration_batches", 4, "Batches of 8 clips (3 frames, 128x128) to calibrate on.")
FLAGS = flags.FLAGS


@functools.lru_cache(maxsize=2)
def calibration_clips(batches: int, seed: int = 0) -> np.ndarray:
  """uint8 clips (B, 3, 128, 128, 3) from the embedded training data (videos and animated photos)."""
  from progvc_jax.data import pipeline  # Deferred: only export needs the input pipeline.
  it = pipeline.default_dataset(clip_len=3, crop=(128, 128), batch_size=8, seed=seed, num_photo_clips=64,
                                shard_index=0, shard_count=1)
  try:
    return np.concatenate([next(it) for _ in range(batches)])
  finally:
    it.close()


def token_batches(tokenizer, clips: np.ndarray, frames_at_once: int = 8):
  """(tokens, frame types, previous tokens, tile grid) of each frame position of the clips, all tiles
  together (clip, then tile in row-major order)."""
  b, t = clips.shape[:2]
  flat = clips.reshape(b * t, *clips.shape[2:])
  graphdef, state = nnx.split(tokenizer)
  encode = jax.jit(lambda state, x: nnx.merge(graphdef, state).encode(x.astype(jnp.float32) / 127.5 - 1.0))
  # A few frames at a time: a tokenizer with attention over its latent holds (HW)^2 scores a frame.
  parts = [encode(state, jnp.asarray(flat[i:i + frames_at_once])) for i in range(0, len(flat), frames_at_once)]
  tokens = [jnp.concatenate(m).reshape(b, t, *m[0].shape[1:]) for m in zip(*parts)]
  at = lambda i: [m[:, i].reshape(-1, *m.shape[3:]) for m in tokens]
  grid = tokenizer.tile_grid(*clips.shape[2:4])
  for i in range(t):
    n = at(i)[0].shape[0]
    yield at(i), np.full((n,), min(i, 1), np.int32), at(i - 1) if i else None, grid


def write(out: str, tok_args: dict, tok_params: dict, ctx_args: dict, ctx_params: dict, clips: np.ndarray) -> bytes:
  """Quantizes the context model (calibrated on `clips`) and writes the bundle; returns its fingerprint."""
  float_bundle = bundle_lib.Bundle(out, b"", tok_args, ctx_args, tok_params, ctx_params)
  tok, ctx = float_bundle.tokenizer(), float_bundle.context_model()
  quantize.check_supported(tok, ctx)
  stats = quantize.calibrate(tok.quantizer, ctx, token_batches(tok, clips))
  tables, formats = quantize.integer_model(tok, ctx, stats)
  return bundle_lib.write_bundle(out, tok_args, tok_params, ctx_args, ctx_params, formats, tables)


def export(tokenizer: str, context: str, out: str, overwrite: bool = False, calibration_batches: int = 4) -> bytes:
  """Writes the bundle; returns its fingerprint. Errors are ValueError/FileNotFoundError."""
  if os.path.exists(out) and not overwrite:
    raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
  tok_args, tok_params = checkpointing.load_params(tokenizer, "tokenizer")
  ctx_args, ctx_params = checkpointing.load_params(context, "context")
  tok = bundle_lib.Bundle(out, b"", tok_args, ctx_args, tok_params, ctx_params).tokenizer()
  expected = dict(vocab_size=tok.quantizer.vocab_size, latent_dim=tok.quantizer.codebook.shape[1],
                  schedule=list(tok.schedule))
  got = {k: list(ctx_args[k]) if k == "schedule" else ctx_args[k] for k in expected}
  if got != expected:
    raise ValueError(f"the context model in {context} was trained on other codes ({got}) than the "
                     f"tokenizer in {tokenizer} gives ({expected})")
  return write(out, tok_args, tok_params, ctx_args, ctx_params, calibration_clips(calibration_batches))


def reexport(source: str, out: str, overwrite: bool = False, calibration_batches: int = 4) -> bytes:
  """Writes a current bundle from the float models of another (e.g. a version-1 bundle)."""
  if os.path.exists(out) and not overwrite and os.path.abspath(out) != os.path.abspath(source):
    raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
  b = bundle_lib.load_bundle(source, float_only=True)
  return write(out, b.tokenizer_args, b.tokenizer_params, b.context_args, b.context_params,
               calibration_clips(calibration_batches))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if FLAGS.bundle and (FLAGS.tokenizer or FLAGS.context):
    sys.exit("export: give --bundle or --tokenizer and --context, not both")
  need = ("bundle", "out") if FLAGS.bundle else ("tokenizer", "context", "out")
  missing = [f"--{n}" for n in need if not getattr(FLAGS, n)]
  if missing:
    sys.exit(f"export: {', '.join(missing)} required")
  if FLAGS.calibration_batches < 1:
    sys.exit("export: --calibration_batches must be at least 1")
  try:
    if FLAGS.bundle:
      fp = reexport(FLAGS.bundle, FLAGS.out, FLAGS.overwrite, FLAGS.calibration_batches)
    else:
      fp = export(FLAGS.tokenizer, FLAGS.context, FLAGS.out, FLAGS.overwrite, FLAGS.calibration_batches)
  except (ValueError, OSError) as e:
    sys.exit(f"export: {e}")
  size = os.path.getsize(FLAGS.out)
  print(f"wrote {FLAGS.out}: {size / 2**20:.1f} MiB, fingerprint {fp.hex()}")


if __name__ == "__main__":
  app.run(main)
