"""Where a tokenizer loses colour: a short training run of the default architecture on hue-turned photos.

  python tools/colour_probe.py [--quantize=false] [--chroma 6] [--colour_share 0.5] [--steps 1500] [--seed 0]

Trains a fresh tokenizer of `configs/tokenizer.py:default`'s architecture
for --steps Adam steps (learning rate 4e-4) on batches of 8 crops of 64 x 64
from the embedded photos, a share --colour_share of them with their hue
turned anywhere round the circle (data.pipeline.recolour), on L1 plus
--chroma times the L1 of Cb and Cr (losses.chroma_l1). With --quantize
(the default) the crops go through the multi-scale quantizer, half of them
decoded from a random prefix of scales as the trainer does, with VQ loss;
with --quantize=false the encoder's latent goes straight to the decoder.
Then prints the hue sweep of tools/eval_colour.py on the photos' top-left
128 x 128: PSNR-RGB, PSNR-Y, the (Cb, Cr) error and the colourfulness kept per turn.

About a minute for 1500 steps on 2 CPU cores: a quick way to test what makes
the tokenizer keep every hue before a full run (README, "Colours the
tokenizer keeps"). No MS-SSIM, EMA or codebook revival: the figures say
which way a change goes, not what a full run reaches.
"""

import os
import time

from absl import app, flags

flags.DEFINE_bool("quantize", True, "Train through the quantizer (random prefixes, VQ loss).")
flags.DEFINE_float("chroma", 0.0, "Weight of the L1 on Cb and Cr (the tokenizer config's loss.chroma).")
flags.DEFINE_float("colour_share", 1.0, "Share of crops with their hue turned.")
flags.DEFINE_integer("steps", 1500, "Training steps.")
flags.DEFINE_integer("seed", 0, "Seed of the initialisation and the crops.")
flags.DEFINE_list("turns", ["0", "60", "120", "180", "240", "300"], "Hue turns of the sweep, in degrees.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax
  from flax import nnx

  from progvc_jax import losses
  from progvc_jax.configs import tokenizer as tokenizer_config
  from progvc_jax.data import pipeline, samples
  from progvc_jax.eval import colour
  from progvc_jax.models.tokenizer import Tokenizer

  tok = Tokenizer(**tokenizer_config.MODELS["default"], rngs=nnx.Rngs(FLAGS.seed))
  photos = samples.sample_photos()
  rng = np.random.default_rng(FLAGS.seed)
  num_scales = len(tok.schedule)

  def batch(n=8, side=64):
    crops = []
    for _ in range(n):
      p = photos[rng.integers(len(photos))]
      y, x = rng.integers(p.shape[0] - side), rng.integers(p.shape[1] - side)
      crop = p[None, y:y + side, x:x + side]
      if rng.uniform() < FLAGS.colour_share:
        crop = pipeline.recolour(crop, rng.uniform(-np.pi, np.pi), 1.0)
      crops.append(crop[0])
    keep = np.where(rng.uniform(size=n) < 0.5, rng.integers(1, num_scales + 1, n), num_scales)
    return jnp.asarray(np.stack(crops), jnp.float32) / 127.5 - 1.0, jnp.asarray(keep)

  def forward(model, x, keep=None):
    if FLAGS.quantize:
      rec, aux = model(x, keep)
      return rec, aux["vq_loss"]
    return model.decoder(model.post_quant_conv(model.latent(x))), 0.0

  optimizer = nnx.Optimizer(tok, optax.adam(4e-4), wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, x, keep):
    def loss_fn(model):
      rec, vq_loss = forward(model, x, keep)
      return losses.l1(rec, x) + FLAGS.chroma * losses.chroma_l1(rec, x) + vq_loss
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  start = time.time()
  for i in range(FLAGS.steps):
    loss = step(tok, optimizer, *batch())
    if (i + 1) % 250 == 0 or i + 1 == FLAGS.steps:
      print(f"step {i + 1}/{FLAGS.steps}: loss {float(loss):.4f} ({time.time() - start:.0f} s)", flush=True)

  @nnx.jit
  def reconstruct(model, x):
    return jnp.clip(forward(model, x)[0], -1.0, 1.0)

  def round_trip(u8):
    y = reconstruct(tok, jnp.asarray(u8, jnp.float32) / 127.5 - 1.0)
    return np.asarray(jnp.clip(jnp.round((y + 1.0) * 127.5), 0, 255)).astype(np.uint8)

  rows = colour.hue_sweep(round_trip, [p[:128, :128] for p in photos], [float(t) for t in FLAGS.turns])
  print(f"\nquantize={FLAGS.quantize} chroma={FLAGS.chroma} colour_share={FLAGS.colour_share} "
        f"steps={FLAGS.steps} seed={FLAGS.seed}")
  print("| turn | PSNR-RGB (dB) | PSNR-Y (dB) | (Cb, Cr) error | colourfulness kept |")
  print("|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['turn']:.0f} | {r['psnr']:.2f} | {r['psnr_y']:.2f} | {r['chroma_error']:.1f} | {r['chroma_kept']:.2f} |")
  mean = lambda key: np.mean([r[key] for r in rows])
  print(f"| mean | {mean('psnr'):.2f} | {mean('psnr_y'):.2f} | {mean('chroma_error'):.1f} | "
        f"{mean('chroma_kept'):.2f} |")


if __name__ == "__main__":
  app.run(main)
