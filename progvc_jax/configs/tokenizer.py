"""Tokenizer configs: `--config configs/tokenizer.py:VARIANT[,key=value...]`.

Variants: tiny (CPU and tests: downsample 8, 8 x 8 latent tiles), default
(the shipped CPU codec's tokenizer: downsample 8 with 4 x 4 pixel patches
folded into channels, no full-resolution conv, 5 scales), base and
large (accelerator meshes), var_f16 (exactly VAR's released VQ-VAE,
vae_ch160v4096z32; start from it with tools/convert_var_vqvae.py and
`--config.init_from`). Arguments after the variant: `runlocal` (a few steps,
small batches: a smoke run), `steps=N`, `batch=N`.
Every field can be overridden on the command line: `--config.optimizer.lr=3e-4`.

`get_sweep(add)` lists the runs of this file's sweep; launch/sweep.py expands it.
"""

import ml_collections

from progvc_jax.configs import common

MODELS = {
    "tiny": dict(ch=32, ch_mult=(1, 2, 2, 4), num_res_blocks=1, z_channels=16, using_sa=False,
                 using_mid_sa=True, norm_groups=16, vocab_size=1024, tile=8),
    "default": dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=16, using_sa=False,
                    using_mid_sa=False, norm_groups=16, vocab_size=1024, tile=8, patch=4,
                    schedule=(1, 2, 4, 6, 8)),
    "base": dict(ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, z_channels=32,
                 using_sa=True, using_mid_sa=True, norm_groups=32, vocab_size=4096, tile=16),
    "large": dict(ch=192, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=3, z_channels=32,
                  using_sa=True, using_mid_sa=True, norm_groups=32, vocab_size=4096, tile=16),
    "var_f16": dict(ch=160, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, z_channels=32,
                    using_sa=True, using_mid_sa=True, norm_groups=32, vocab_size=4096, tile=16),
}

# (steps, global batch, crop) per variant.
SCHEDULES = {"tiny": (2000, 8, 128), "default": (2400, 16, 128), "base": (400_000, 256, 256),
             "large": (400_000, 512, 256),
             "var_f16": (100_000, 256, 256)}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, variant="tiny", runlocal=False, steps=0, batch=0)
  if arg.variant not in MODELS:
    raise ValueError(f"unknown tokenizer variant {arg.variant!r}; choose from {sorted(MODELS)}")
  steps, batch, crop = SCHEDULES[arg.variant]
  small = arg.variant in ("tiny", "default")  # CPU-sized: shorter warmup, no GAN, frequent logs
  c = common.new_config("tokenizer", arg, steps, batch)
  c.init_from = ""  # a parameter checkpoint (e.g. a converted VAR tokenizer)
  # Parameter groups that learn, comma-separated (empty: all). "decoder,post_quant_conv" fine-tunes the
  # decoder of an --config.init_from tokenizer: encoder and codebook, and so every token, stay as they were.
  c.train_only = ""
  # A codec bundle or context-model checkpoint: frames cut by random-prefix training get their missing scales
  # from its context model (the setting `completion`), and the decoder learns to render them. Needs
  # train_only=decoder,post_quant_conv (tools/finetune_decoder.sh).
  c.complete_with = ""
  c.completion = "argmax"

  c.model = dict(MODELS[arg.variant], num_phi=4, phi_ratio=0.5, beta=0.25)
  c.disc = dict(ch=64 if not small else 32, n_layers=3,
                norm_groups=32 if not small else 16)

  # Mesh sizes (data, fsdp, model); -1 takes the remaining devices.
  common.add_mesh(c)

  c.optimizer = dict(lr=4e-4 if small else 2e-4, warmup_steps=100 if small else 2000,
                     end_lr_factor=0.1, b1=0.5, b2=0.9, weight_decay=0.0, grad_clip=1.0)
  # The discriminator's peak learning rate; None (the default) follows optimizer.lr, also when a
  # flag or a sweep sets that.
  c.disc_lr = ml_collections.config_dict.placeholder(float)
  c.ema_decay = 0.999 if not small else 0.99

  c.loss = dict(l1=1.0, chroma=0.0, ms_ssim=0.2, lpips=1.0, vq=1.0, gan=0.1 if not small else 0.0,
                gan_start=20_000 if not small else 1000, adaptive_max=1e4)
  c.lpips_path = ""  # LPIPS weights (.npz); empty: the LPIPS term is off
  c.random_prefix = 0.5  # share of frames decoded from a random prefix of scales
  c.codebook = dict(usage_decay=0.99, revive_every=200, revive_threshold=0.03)

  c.data = common.data_fields(1, crop, arg.runlocal)

  common.add_loop(c, small, arg.runlocal, eval_batches=2)
  return c


def get_sweep(add):
  """Learning rate x codebook size, for the base tokenizer."""
  for lr in (1e-4, 2e-4, 4e-4):
    for vocab in (4096, 8192):
      add(**{"optimizer.lr": lr, "model.vocab_size": vocab})
