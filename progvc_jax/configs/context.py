"""Context-model configs: `--config configs/context.py:VARIANT[,key=value...]`.

The context model trains on the token maps of a frozen tokenizer, named by
`--config.tokenizer=PATH` (a tokenizer training workdir, whose latest EMA
weights are used, a parameter checkpoint, or a codec bundle .pgvcm, whose
tokenizer is used). Its vocabulary, latent channels and scale schedule come
from that tokenizer.

Variants: tiny (CPU and tests), default (the shipped CPU codec's: sized
for 5 frames/s decoding of 640x360 on two cores), base and large (accelerator meshes; VAR's
d12 and d16 widths). Arguments after the variant: `runlocal` (a smoke run),
`steps=N`, `batch=N`, `frames=N` (clip length: one I-frame, then P-frames).
Every field can be overridden: `--config.model.context=cross`.
"""

import ml_collections

from progvc_jax.configs import common

MODELS = {
    "tiny": dict(width=256, depth=4, heads=4, mlp_ratio=4.0),
    "default": dict(width=128, depth=2, heads=4, mlp_ratio=4.0, neighbourhood=3, copy_prev=True),
    "base": dict(width=768, depth=12, heads=12, mlp_ratio=4.0),
    "large": dict(width=1024, depth=16, heads=16, mlp_ratio=4.0),
}

# (steps, global batch of clips, crop) per variant.
SCHEDULES = {"tiny": (1000, 8, 128), "default": (2400, 2, 256), "base": (200_000, 128, 256),
             "large": (400_000, 256, 256)}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, variant="tiny", runlocal=False, steps=0, batch=0, frames=3)
  if arg.variant not in MODELS:
    raise ValueError(f"unknown context-model variant {arg.variant!r}; choose from {sorted(MODELS)}")
  if arg.frames < 2:
    raise ValueError(f"frames={arg.frames}: clips need an I-frame and at least one P-frame")
  steps, batch, crop = SCHEDULES[arg.variant]
  small = arg.variant in ("tiny", "default")  # CPU-sized: higher learning rate, frequent logs
  c = common.new_config("context", arg, steps, batch)
  c.tokenizer = ""  # required: tokenizer workdir or parameter checkpoint (frozen)

  # "additive" or "cross": how the previous frame's scales <= k enter scale k.
  # neighbourhood: the side of the window of the frame's map a tile's inputs see (spatial context
  # across tiles; 1: each tile alone). copy_prev: the "same as before" path of P-frames. The
  # default model has both, trained on 256-pixel crops: on 128-pixel crops (2 x 2 tiles, all at a
  # border) they cost 19% more bits on a held-out 720p clip (README, "The default model").
  c.model = dict(context="additive", neighbourhood=1, copy_prev=False) | MODELS[arg.variant]

  common.add_mesh(c)
  # Run the Transformer's blocks as one lax.scan in the training step: compile time flat in depth,
  # the same parameters and checkpoints (models/transformer.py).
  c.scan_layers = not small

  c.optimizer = dict(lr=1e-3 if small else 3e-4, warmup_steps=50 if small else 2000,
                     end_lr_factor=0.1, b1=0.9, b2=0.95, weight_decay=0.05, grad_clip=1.0)
  c.ema_decay = 0.99 if small else 0.999

  c.data = common.data_fields(arg.frames, crop, arg.runlocal)
  if c.model.copy_prev:
    c.data.still_share = 0.25  # static scenes, where "same as before" pays

  common.add_loop(c, small, arg.runlocal, eval_batches=4)
  return c


def get_sweep(add):
  """Additive against cross-attention context, at two learning rates."""
  for context in ("additive", "cross"):
    for lr in (1.5e-4, 3e-4):
      add(**{"model.context": context, "optimizer.lr": lr})
