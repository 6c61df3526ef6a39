"""Stage 2: trains the context model on the token maps of a frozen tokenizer.

One readable loop, built from the same pieces as the tokenizer trainer
(common, sharding, checkpointing): mesh, tokenizer, input, model, shardings,
update step, checkpoints, evaluation, loop. The train state is a plain dict:

  step, params, opt, ema

Each batch is B clips of T frames; the first frame of a clip is coded as an
I-frame, the others as P-frames whose context is the previous frame's token
maps. The loss is the cross-entropy of every token in bits, which is the
rate the range coder will spend; it is reported per token and per pixel, for
I- and P-frames apart.

Tokens are computed on the fly, inside the jitted step, by the frozen
tokenizer's encoder rather than cached in array_record: the encoder's forward
pass is cheap next to the Transformer's forward and backward, it keeps the
random crops and photo motions of the shared input pipeline (a token cache
would freeze one crop per clip), any tokenizer checkpoint works at once with
no preprocessing pass, and the tokens always match the weights they came
from.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx

from progvc_jax import checkpointing, sharding
from progvc_jax.models import progressive
from progvc_jax.models.tokenizer import Tokenizer
from progvc_jax.models.transformer import P_FRAME, ContextModel
from progvc_jax.trainers import common

FIGURES = ("loss", "bits_I", "bits_P", "bpp_I", "bpp_P", "grad_norm", "nonfinite")


def build_models(config, tokenizer_args: dict):
  """Abstract tokenizer (frozen, float32) and context model (no weights allocated)."""
  tok = nnx.eval_shape(lambda: Tokenizer(**tokenizer_args, rngs=nnx.Rngs(0)))
  model = nnx.eval_shape(lambda: ContextModel(**model_args(config, tok), dtype=common.compute_dtype(config),
                                              remat=config.remat, scan_layers=config.scan_layers,
                                              rngs=nnx.Rngs(0)))
  return tok, model


def model_args(config, tok: Tokenizer) -> dict:
  """The context model's constructor arguments: the config's size, the tokenizer's codes."""
  return dict(config.model, vocab_size=tok.quantizer.vocab_size, latent_dim=tok.quantizer.codebook.shape[1],
              schedule=tuple(tok.schedule))


class Trainer:
  """Holds the compiled pieces of one run; `train_and_evaluate` drives it."""

  def __init__(self, config, mesh, tokenizer_args: dict):
    self.config, self.mesh = config, mesh
    tok, model = build_models(config, tokenizer_args)
    self.tok_def, tok_state = nnx.split(tok)
    self.model_def, model_state = nnx.split(model)
    self.model_args = model_args(config, tok)
    self.pixel_tile = tok.pixel_tile
    self.neighbourhood = model.neighbourhood
    self.length, self.offsets = model.length, model.offsets
    self.tx = common.make_optimizer(config.optimizer, config.total_steps)

    rules = dict(config.sharding_rules)
    self.tok_shardings = sharding.param_shardings(tok_state, rules, mesh)
    self.tok_abstract = nnx.to_pure_dict(tok_state)
    p_sh = sharding.param_shardings(model_state, rules, mesh)
    rep = sharding.replicated(mesh)
    abstract = jax.eval_shape(self._init, jax.random.key(0))
    self.shardings = dict(step=rep, params=p_sh, ema=p_sh,
                          opt=sharding.opt_state_shardings(self.tx, abstract["opt"], p_sh, mesh))
    self.abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                 abstract, self.shardings)
    batch_sh = sharding.batch_sharding(mesh, 5)
    self.init = jax.jit(self._init, out_shardings=self.shardings)
    # Both trace with the activation rules in force.
    step = common.with_activation_sharding(self._step, mesh, config)
    evaluate = common.with_activation_sharding(self._evaluate, mesh, config)
    self.step = jax.jit(step, in_shardings=(self.shardings, self.tok_shardings, batch_sh),
                        out_shardings=(self.shardings, rep), donate_argnums=0)
    self.evaluate = jax.jit(evaluate, in_shardings=(p_sh, self.tok_shardings, batch_sh))

  def _init(self, rng):
    c = self.config
    model = ContextModel(**self.model_args, dtype=common.compute_dtype(c), remat=c.remat,
                         scan_layers=c.scan_layers, rngs=nnx.Rngs(rng))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    return dict(step=jnp.zeros((), jnp.int32), params=params, opt=self.tx.init(params), ema=params)

  # Tokens and the model's inputs.
  def sequences(self, tok_params, frames):
    """Clips (B, T, H, W, 3) uint8 -> the context model's inputs for every tile of every frame.

    Returns x_next (N, L - 1, C), frame_type (N,), prev context, targets (N, L),
    with N = B * T * tiles, ordered clip, frame, tile.
    """
    b, t = frames.shape[:2]
    tok = nnx.merge(self.tok_def, tok_params)
    tokens = tok.encode(common.to_unit_range(frames.reshape(b * t, *frames.shape[2:])))
    tiles = tokens[0].shape[1]
    grid = tok.tile_grid(*frames.shape[2:4])
    x_next, ctx = progressive.teacher_inputs(tok.quantizer, [m.reshape(-1, *m.shape[2:]) for m in tokens],
                                             grid, self.neighbourhood)
    x_next, ctx = jax.lax.stop_gradient((x_next, ctx))

    # Frame t's context is frame t-1's; the first frame of a clip is an I-frame.
    def shift(a):
      a = a.reshape(b, t, tiles, *a.shape[1:])
      a = jnp.concatenate([jnp.zeros_like(a[:, :1]), a[:, :-1]], axis=1)
      return a.reshape(b * t * tiles, *a.shape[3:])
    prev = progressive.windowed(jax.tree.map(shift, ctx), tok.schedule, grid, self.neighbourhood)
    frame_type = jnp.broadcast_to((jnp.arange(t) > 0)[None, :, None], (b, t, tiles)).reshape(-1)
    return x_next, frame_type.astype(jnp.int32), prev, ctx["tokens"]

  def _bits(self, params, x_next, frame_type, prev, targets):
    """Cross-entropy in bits of every token (N, L)."""
    model = nnx.merge(self.model_def, params)
    logits = model(x_next, frame_type, prev)
    logp = jax.nn.log_softmax(logits, -1)
    return -jnp.take_along_axis(logp, targets[..., None], -1)[..., 0] / np.log(2.0)

  def _figures(self, bits, frame_type):
    """Mean bits per token and bits per pixel, for I- and P-frames apart."""
    is_p = (frame_type == P_FRAME)[:, None]
    per_pixel = self.length / self.pixel_tile ** 2
    out = {}
    for name, sel in (("I", ~is_p), ("P", is_p)):
      count = jnp.maximum(jnp.sum(sel) * bits.shape[1], 1)
      out[f"bits_{name}"] = jnp.sum(jnp.where(sel, bits, 0.0)) / count
      out[f"bpp_{name}"] = out[f"bits_{name}"] * per_pixel
    return out

  # The update step.
  def _step(self, state, tok_params, frames):
    c = self.config
    micro = common.split_micro(frames, c.grad_accum)

    def loss_fn(params, inputs):
      bits = self._bits(params, *inputs)
      return jnp.mean(bits), bits

    def part(i, batch):
      del i
      inputs = self.sequences(tok_params, batch)
      (loss, bits), g = jax.value_and_grad(loss_fn, has_aux=True)(state["params"], inputs)
      return (g, dict(loss=loss, **self._figures(bits, inputs[1]))), None

    (grads, figures), _ = common.accumulate(part, micro, common.accum_scan(c))
    grads, figures = jax.tree.map(lambda a: a / c.grad_accum, (grads, figures))

    updates, opt = self.tx.update(grads, state["opt"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    ok = common.all_finite(grads, figures["loss"])
    new = dict(step=state["step"] + 1, params=params, opt=opt,
               ema=common.ema_update(state["ema"], params, c.ema_decay))
    new = common.select(ok, new, dict(state, step=state["step"] + 1))
    figures.update(grad_norm=optax.tree.norm(grads), nonfinite=1.0 - ok.astype(jnp.float32))
    return new, figures

  # Evaluation.
  def _evaluate(self, params, tok_params, frames):
    """Bits per token of each scale for I- and P-frames (K, 2) summed, and token counts."""
    x_next, frame_type, prev, targets = self.sequences(tok_params, frames)
    bits = self._bits(params, x_next, frame_type, prev, targets)
    is_p = frame_type == P_FRAME
    sums, counts = [], []
    for k in range(len(self.offsets) - 1):
      b = bits[:, self.offsets[k]:self.offsets[k + 1]].sum(1)
      sums.append(jnp.stack([jnp.sum(jnp.where(is_p, 0.0, b)), jnp.sum(jnp.where(is_p, b, 0.0))]))
      n = self.offsets[k + 1] - self.offsets[k]
      counts.append(jnp.stack([jnp.sum(~is_p), jnp.sum(is_p)]) * n)
    return dict(bits=jnp.stack(sums), tokens=jnp.stack(counts).astype(jnp.float32))


def train_and_evaluate(config, workdir: str, stop_at: int | None = None):
  """Trains from scratch or resumes from the latest checkpoint in `workdir`.

  stop_at: end this run after that step with a checkpoint; the next run resumes.
  """
  mesh = common.make_mesh(config)

  # The frozen tokenizer.
  if not config.tokenizer:
    raise ValueError("config.tokenizer must name a tokenizer workdir or parameter checkpoint")
  tokenizer_args = checkpointing.load_model_args(config.tokenizer, "tokenizer")
  trainer = Trainer(config, mesh, tokenizer_args)
  if config.data.crop % trainer.pixel_tile:
    raise ValueError(f"data.crop {config.data.crop} must be a multiple of the pixel tile {trainer.pixel_tile}")
  tok_params = checkpointing.load_params_like(config.tokenizer, "tokenizer", trainer.tok_abstract)
  tok_params = jax.device_put(tok_params, trainer.tok_shardings)
  logging.info("frozen tokenizer from %s: %d scales %s, %d codes", config.tokenizer,
               len(trainer.offsets) - 1, trainer.model_args["schedule"], trainer.model_args["vocab_size"])
  if jax.process_index() == 0:
    checkpointing.write_run_info(workdir, "context", dict(trainer.model_args))

  return common.run(
      config, workdir, mesh, abstract=trainer.abstract, init=lambda: trainer.init(jax.random.key(config.seed)),
      step=lambda state, batch: trainer.step(state, tok_params, batch),
      evaluate=lambda state, batches, writer, step: run_eval(trainer, state, tok_params, batches, writer, step),
      figures=FIGURES, stop_at=stop_at)


def run_eval(trainer, state, tok_params, batches, writer, step):
  """Bits per token and per pixel of the EMA model, per scale and frame type."""
  results = [trainer.evaluate(state["ema"], tok_params, b) for b in batches]
  bits = np.sum([np.asarray(r["bits"]) for r in results], axis=0)  # (K, 2)
  tokens = np.sum([np.asarray(r["tokens"]) for r in results], axis=0)
  per_pixel = trainer.length / trainer.pixel_tile ** 2
  scalars = {}
  for j, name in enumerate(("I", "P")):
    per_token = bits[:, j].sum() / max(tokens[:, j].sum(), 1)
    scalars[f"eval/bits_{name}"] = per_token
    scalars[f"eval/bpp_{name}"] = per_token * per_pixel
    for k in range(bits.shape[0]):
      scalars[f"eval/bits_{name}_scale{k + 1}"] = bits[k, j] / max(tokens[k, j], 1)
  writer.write_scalars(step, scalars)
  logging.info("eval step %d: I-frames %.3f bits/token %.4f bpp, P-frames %.3f bits/token %.4f bpp", step,
               scalars["eval/bits_I"], scalars["eval/bpp_I"], scalars["eval/bits_P"], scalars["eval/bpp_P"])
  return scalars
