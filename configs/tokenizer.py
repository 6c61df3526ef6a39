"""Tokenizer configs: `get_config("tiny" | "base" | "large" | "var_f16")`.

tiny runs on a CPU and in the tests (downsample 8, 8 x 8 latent tiles);
base and large are for accelerator meshes; var_f16 is exactly VAR's released
VQ-VAE (vae_ch160v4096z32), to be loaded with tools/convert_var_vqvae.py.
"""

import ml_collections

from configs import common

MODELS = {
    "tiny": dict(ch=32, ch_mult=(1, 2, 2, 4), num_res_blocks=1, z_channels=16, using_sa=False,
                 using_mid_sa=True, norm_groups=16, vocab_size=1024, tile=8),
    "base": dict(ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, z_channels=32,
                 using_sa=True, using_mid_sa=True, norm_groups=32, vocab_size=4096, tile=16),
    "large": dict(ch=192, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=3, z_channels=32,
                  using_sa=True, using_mid_sa=True, norm_groups=32, vocab_size=4096, tile=16),
    "var_f16": dict(ch=160, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, z_channels=32,
                    using_sa=True, using_mid_sa=True, norm_groups=32, vocab_size=4096, tile=16),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, variant="tiny")
  if arg.variant not in MODELS:
    raise ValueError(f"unknown tokenizer variant {arg.variant!r}; choose from {sorted(MODELS)}")
  config = ml_collections.ConfigDict()
  config.variant = arg.variant
  config.model = dict(MODELS[arg.variant], num_phi=4, phi_ratio=0.5, beta=0.25)
  return config
