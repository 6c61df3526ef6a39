"""Converts VAR's VQ-VAE weights into a progvc tokenizer checkpoint.

  python tools/convert_var_vqvae.py --var vae_ch160v4096z32.pth --out ckpt/var_tokenizer

--var takes a .pth (read with torch.load(weights_only=True); needs torch) or
an .npz of the same names. The architecture is read off the weights; --tile
sets the latent tile (16 gives VAR's scale schedule). The output folder is a
parameter checkpoint that the trainers and export take as the tokenizer.
"""

import sys

from absl import app, flags
from flax import nnx

from progvc_jax import checkpointing, convert_var
from progvc_jax.models.tokenizer import Tokenizer

flags.DEFINE_string("var", None, "VAR VQ-VAE weights (.pth or .npz).", required=True)
flags.DEFINE_string("out", None, "Output checkpoint folder (must not exist).", required=True)
flags.DEFINE_integer("tile", 16, "Latent tile side; 16 gives VAR's (1,2,3,4,5,6,8,10,13,16).")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  try:
    sd = convert_var.load_state_dict(FLAGS.var)
    model_args = dict(convert_var.infer_config(sd), tile=FLAGS.tile)
    print(f"VAR tokenizer: {model_args}")
    model = convert_var.load_into(Tokenizer(**model_args, rngs=nnx.Rngs(0)), sd)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    checkpointing.save_params(FLAGS.out, params, "tokenizer", model_args)
  except (OSError, ValueError) as e:
    sys.exit(f"convert_var_vqvae: {e}")
  print(f"wrote {FLAGS.out} ({len(sd)} tensors; schedule {model.schedule})")


if __name__ == "__main__":
  app.run(main)
