"""Exports trained models into a codec bundle for the CPU codec.

  python -m progvc_jax.export --tokenizer TOK --context CTX --out model.pgvcm

TOK and CTX are training workdirs (their latest EMA weights are taken) or
parameter checkpoints. The context model must have been trained on that
tokenizer's codes (same vocabulary, latent channels and scale schedule). The
bundle (codec/bundle.py) is data only; `progvc encode --model` reads it
without any training code.
"""

import os
import sys

from absl import app, flags

from progvc_jax import checkpointing
from progvc_jax.codec import bundle as bundle_lib

flags.DEFINE_string("tokenizer", None, "Tokenizer workdir or parameter checkpoint.")
flags.DEFINE_string("context", None, "Context-model workdir or parameter checkpoint.")
flags.DEFINE_string("out", None, "Bundle file to write.")
flags.DEFINE_bool("overwrite", False, "Replace an existing bundle.")
FLAGS = flags.FLAGS


def export(tokenizer: str, context: str, out: str, overwrite: bool = False) -> bytes:
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
  return bundle_lib.write_bundle(out, tok_args, tok_params, ctx_args, ctx_params)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  missing = [f"--{n}" for n in ("tokenizer", "context", "out") if not getattr(FLAGS, n)]
  if missing:
    sys.exit(f"export: {', '.join(missing)} required")
  try:
    fp = export(FLAGS.tokenizer, FLAGS.context, FLAGS.out, FLAGS.overwrite)
  except (ValueError, OSError) as e:
    sys.exit(f"export: {e}")
  size = os.path.getsize(FLAGS.out)
  print(f"wrote {FLAGS.out}: {size / 2**20:.1f} MiB, fingerprint {fp.hex()}")


if __name__ == "__main__":
  app.run(main)
