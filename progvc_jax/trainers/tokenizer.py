"""Stage 1: trains the tokenizer (encoder, multi-scale quantizer, decoder, PatchGAN).

One readable loop: mesh, input, model, shardings, update step, checkpoints,
evaluation, loop. The train state is a plain dict of arrays:

  step, params, opt, ema, disc, disc_opt, usage

`params`/`ema`/`disc` are the NNX modules' parameters as nested dicts (merged
back into modules with `nnx.merge(graphdef, params)` inside the jitted step);
`usage` is an EMA of how often each code is hit, which decides which dead
codes are brought back.

`config.train_only` names the parts that learn (top-level parameter
groups, e.g. "decoder,post_quant_conv": a decoder fine-tune). The others
stay bit for bit as they were, in `params` and in `ema`, so the tokens of a
codec built on them, and the context model trained on those tokens, stay
valid; codebook revival is then off unless the quantizer learns.

`config.complete_with` (a codec bundle, or a context-model workdir or
checkpoint) couples that fine-tune to the generative prior: the frames that
random-prefix training cuts to k scales get their scales k+1..K from the
context model (`config.completion`: argmax; sample with a temperature,
top-k and top-p; or mean with a temperature, the expected code vectors
with the context following the argmax), as the codec's decoder completes a
truncated stream, and the decoder learns to render them against the source. Encoder
and codebook must then be frozen, since the completed tokens come from
them.
"""


import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx

from progvc_jax import checkpointing, losses, sharding
from progvc_jax.models import progressive
from progvc_jax.models import quantizer as qz
from progvc_jax.models.discriminator import PatchDiscriminator
from progvc_jax.models import tokenizer
from progvc_jax.models.tokenizer import Tokenizer, pad_to_multiple
from progvc_jax.models.transformer import I_FRAME, ContextModel
from progvc_jax.trainers import common

# Groups a completed token map depends on: they must stay frozen while the decoder learns to render it.
TOKEN_GROUPS = frozenset({"encoder", "quant_conv", "quantizer"})

FIGURES = ("loss", "rec_loss", "vq_loss", "gan_weight", "disc_loss", "grad_norm", "nonfinite", "revived")


def build_models(config):
  """Abstract tokenizer and discriminator (no weights allocated)."""
  dtype = common.compute_dtype(config)
  tok = nnx.eval_shape(lambda: Tokenizer(**config.model, dtype=dtype, remat=config.remat, rngs=nnx.Rngs(0)))
  disc = nnx.eval_shape(lambda: PatchDiscriminator(**config.disc, dtype=dtype, rngs=nnx.Rngs(0)))
  return tok, disc


def ms_ssim_weights(size: int) -> tuple[float, ...]:
  """MS-SSIM's scale weights, using as many scales as a `size` crop holds."""
  n = len(losses.MS_SSIM_WEIGHTS)
  while n > 1 and size < losses.ms_ssim_min_size(scales=n):
    n -= 1
  w = np.asarray(losses.MS_SSIM_WEIGHTS[:n])
  return tuple(float(v) for v in w / w.sum())


class Trainer:
  """Holds the compiled pieces of one run; `train_and_evaluate` drives it."""

  def __init__(self, config, mesh):
    self.config, self.mesh = config, mesh
    tok, disc = build_models(config)
    self.tok_def, tok_state = nnx.split(tok)
    self.disc_def, disc_state = nnx.split(disc)
    self.num_scales = len(tok.schedule)
    self.vocab = config.model["vocab_size"]
    self.tx = common.make_optimizer(config.optimizer, config.total_steps)
    self.dtx = common.make_optimizer(config.optimizer, config.total_steps, lr=config.disc_lr)
    self.lpips = losses.lpips_from_config(config.lpips_path or None)
    self.msssim_w = ms_ssim_weights(config.data.crop)
    self.trainable = trainable_groups(config, tok_state)
    self.completion = completion_model(config, tok, self.trainable, mesh)

    rules = dict(config.sharding_rules)
    p_sh = sharding.param_shardings(tok_state, rules, mesh)
    d_sh = sharding.param_shardings(disc_state, rules, mesh)
    rep = sharding.replicated(mesh)
    abstract = jax.eval_shape(self._init, jax.random.key(0))
    self.shardings = dict(
        step=rep, params=p_sh, ema=p_sh, disc=d_sh, usage=rep,
        opt=sharding.opt_state_shardings(self.tx, abstract["opt"], p_sh, mesh),
        disc_opt=sharding.opt_state_shardings(self.dtx, abstract["disc_opt"], d_sh, mesh))
    self.abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                 abstract, self.shardings)
    self.init = jax.jit(self._init, out_shardings=self.shardings)
    # Both trace with the activation rules in force.
    step = common.with_activation_sharding(self._step, mesh, config)
    evaluate = common.with_activation_sharding(self._evaluate, mesh, config)
    self.step = jax.jit(step, in_shardings=(self.shardings, sharding.batch_sharding(mesh, 5)),
                        out_shardings=(self.shardings, rep), donate_argnums=0)
    self.evaluate = jax.jit(evaluate, in_shardings=(p_sh, sharding.batch_sharding(mesh, 5)))

  # Initialisation.
  def _init(self, rng):
    r_tok, r_disc = jax.random.split(rng)
    c = self.config
    tok = Tokenizer(**c.model, dtype=common.compute_dtype(c), remat=c.remat, rngs=nnx.Rngs(r_tok))
    params = nnx.to_pure_dict(nnx.state(tok, nnx.Param))
    disc = nnx.to_pure_dict(nnx.state(PatchDiscriminator(**c.disc, dtype=common.compute_dtype(c),
                                                         rngs=nnx.Rngs(r_disc)), nnx.Param))
    return dict(step=jnp.zeros((), jnp.int32), params=params, opt=self.tx.init(params),
                ema=params, disc=disc, disc_opt=self.dtx.init(disc),
                usage=jnp.ones((self.vocab,), jnp.float32))

  # Losses.
  def _reconstruction_loss(self, rec, x):
    c = self.config.loss
    loss = c.l1 * losses.l1(rec, x)
    if c.get("chroma"):
      loss += c.chroma * losses.chroma_l1(rec, x)
    if c.ms_ssim:
      loss += c.ms_ssim * jnp.mean(1.0 - losses.ms_ssim(rec, x, weights=self.msssim_w))
    if self.lpips is not None and c.lpips:
      loss += c.lpips * jnp.mean(losses.lpips_distance(self.lpips.params, rec, x))
    return loss

  def _frozen_kept(self, new, old):
    """`new` with every group that does not learn taken from `old` (exactly)."""
    return {k: (v if k in self.trainable else old[k]) for k, v in new.items()}

  def _losses(self, params, disc, x, rng, step):
    """Generator loss of one micro-batch x (N, H, W, 3); returns (loss, aux)."""
    c = self.config
    # Groups that do not learn take no gradient (and XLA drops their backward pass).
    params = {k: (v if k in self.trainable else jax.lax.stop_gradient(v)) for k, v in params.items()}
    tok = nnx.merge(self.tok_def, params)
    r_keep, r_use = jax.random.split(rng)
    # Random-prefix training: a share of the frames is decoded from a random
    # number of scales, so that every prefix is a usable frame.
    keep = jax.random.randint(r_keep, (x.shape[0],), 1, self.num_scales + 1)
    keep = jnp.where(jax.random.uniform(r_use, (x.shape[0],)) < c.random_prefix, keep, self.num_scales)
    rec, aux = tok(x, keep) if self.completion is None else self._completed_forward(tok, x, keep, rng)
    rec_loss = self._reconstruction_loss(rec, x)
    loss = rec_loss + c.loss.vq * aux["vq_loss"]
    gan_weight = jnp.zeros(())
    if c.loss.gan:
      # VQGAN's adaptive weight: balance the gradient norms of the two losses
      # at the decoder's last layer.
      conv_out = tok.decoder.conv_out
      feats = jax.lax.stop_gradient(aux["last_features"])
      kernel, bias = params["decoder"]["conv_out"]["kernel"], params["decoder"]["conv_out"]["bias"]
      dmodel = nnx.merge(self.disc_def, disc)
      pixels = lambda k: tokenizer.depth_to_space(conv_out.apply(feats, k, bias), tok.decoder.patch)
      g_of = lambda loss_fn: jax.grad(lambda k: loss_fn(pixels(k).astype(jnp.float32)))(kernel)
      g_rec = g_of(lambda r: self._reconstruction_loss(r, x))
      g_gan = g_of(lambda r: losses.hinge_g_loss(dmodel(r)))
      factor = losses.gan_start_factor(step, c.loss.gan_start) * c.loss.gan
      gan_weight = factor * losses.adaptive_gan_weight(jnp.linalg.norm(g_rec), jnp.linalg.norm(g_gan),
                                                       c.loss.adaptive_max)
      loss = loss + gan_weight * losses.hinge_g_loss(dmodel(rec))
    out = dict(rec=rec, hits=aux["hits"], latent=aux["latent"], rec_loss=rec_loss,
               vq_loss=aux["vq_loss"], gan_weight=gan_weight)
    return loss, out

  def _completed_forward(self, tok, x, keep, rng):
    """tok(x, keep) with the scales after each frame's kept prefix completed by the context model
    instead of left out: the reconstruction and the quantizer's aux (with `latent`, `last_features`)."""
    height, width = x.shape[1:3]
    rows, cols = tok.tile_grid(height, width)
    tiles = tok.to_tiles(tok.latent(pad_to_multiple(x, tok.pixel_tile)))
    _, aux = tok.quantizer(tiles)  # every scale's true tokens (encoder and codebook are frozen)
    per_tile = jnp.repeat(keep, rows * cols)
    tokens, codes = self.complete(tok.quantizer, aux["tokens"], per_tile, (rows, cols), rng)
    fhat = tok.from_tiles(completed_fhat(tok.quantizer, tokens, codes, per_tile), rows, cols)
    feats = tok.decoder.features(tok.post_quant_conv(fhat))
    rec = tok.decoder.output(feats)
    aux.update(latent=jax.lax.stop_gradient(tiles), last_features=feats)
    return rec.astype(jnp.float32)[:, :height, :width], aux

  def complete(self, quantizer, tokens, keep, grid, rng):
    """(token maps [(N, p_k, p_k)] with every tile's scales from keep[i] on chosen by the context model
    from the scales before them, as an I-frame (one teacher-forced pass per scale); for `mean`, also
    every scale's expected code vectors [(N, p_k, p_k, C)] at the setting's temperature (the tokens,
    which the next scales' context follows, are then the argmax), else None)."""
    model_def, params, setting = self.completion
    model = nnx.merge(model_def, params)
    mean = setting["complete"] == "mean"
    out = [jax.lax.stop_gradient(t) for t in tokens]
    codes = [None] * len(tokens) if mean else None  # scale 1 is always sent
    frame_type = jnp.full((out[0].shape[0],), I_FRAME, jnp.int32)
    for k in range(1, len(out)):
      x_next, _ = progressive.teacher_inputs(quantizer, out, grid, model.neighbourhood)
      logits = model(jax.lax.stop_gradient(x_next), frame_type)[:, model.offsets[k]:model.offsets[k + 1]]
      probs = jax.nn.softmax(logits.astype(jnp.float32), -1)
      chosen = progressive.select_tokens(probs, "argmax" if mean else setting["complete"],
                                         jax.random.fold_in(rng, k), setting.get("temperature", 1.0),
                                         setting.get("top_k", 0), setting.get("top_p", 1.0))
      out[k] = jnp.where((keep > k)[:, None, None], out[k], chosen.reshape(out[k].shape))
      if mean:
        expected = progressive.expected_codes(probs, jax.lax.stop_gradient(quantizer.codebook[...]),
                                              setting.get("temperature", 1.0))
        codes[k] = expected.reshape(*out[k].shape, -1)
    return out, codes

  def _disc_loss(self, disc, x, rec):
    d = nnx.merge(self.disc_def, disc)
    return losses.hinge_d_loss(d(x), d(jax.lax.stop_gradient(rec)))

  # The update step.
  def _step(self, state, frames):
    c = self.config
    step = state["step"]
    rng = jax.random.fold_in(jax.random.key(c.seed), step)
    x = common.to_unit_range(frames.reshape(-1, *frames.shape[2:]))  # clips -> frames
    micro = common.split_micro(x, c.grad_accum)

    def part(i, batch):
      (loss, out), g = jax.value_and_grad(self._losses, has_aux=True)(
          state["params"], state["disc"], batch, jax.random.fold_in(rng, i), step)
      dl, dg = (jax.value_and_grad(self._disc_loss)(state["disc"], batch, out["rec"]) if c.loss.gan
                else (jnp.zeros(()), jax.tree.map(jnp.zeros_like, state["disc"])))
      fig = dict(loss=loss, rec_loss=out["rec_loss"], vq_loss=out["vq_loss"],
                 gan_weight=out["gan_weight"], disc_loss=dl)
      latent = out["latent"][:, ::2, ::2].reshape(-1, out["latent"].shape[-1])
      return (g, dg, fig, out["hits"].astype(jnp.float32)), latent

    (grads, dgrads, figures, hits), latents = common.accumulate(part, micro, common.accum_scan(c))
    grads, dgrads, figures = jax.tree.map(lambda a: a / c.grad_accum, (grads, dgrads, figures))

    updates, opt = self.tx.update(grads, state["opt"], state["params"])
    params = self._frozen_kept(optax.apply_updates(state["params"], updates), state["params"])
    d_updates, disc_opt = self.dtx.update(dgrads, state["disc_opt"], state["disc"])
    disc = optax.apply_updates(state["disc"], d_updates)
    # The discriminator trains only once the GAN loss is on.
    gan_on = losses.gan_start_factor(step, c.loss.gan_start) * c.loss.gan > 0
    disc, disc_opt = common.select(gan_on, (disc, disc_opt), (state["disc"], state["disc_opt"]))

    # Dead codes come back as latent vectors of this batch.
    usage = state["usage"] * c.codebook.usage_decay + hits.sum(0) * (1 - c.codebook.usage_decay)
    revive = ((c.codebook.revive_every > 0) & ("quantizer" in self.trainable)
              & ((step + 1) % max(c.codebook.revive_every, 1) == 0))
    cands = latents.reshape(-1, latents.shape[-1])
    book, n_revived = qz.revive_dead_codes(params["quantizer"]["codebook"], usage, cands,
                                           jax.random.fold_in(rng, c.grad_accum), c.codebook.revive_threshold)
    params["quantizer"]["codebook"] = jnp.where(revive, book, params["quantizer"]["codebook"])
    usage = jnp.where(revive & (usage < c.codebook.revive_threshold), 1.0, usage)

    # NaN/inf guard: a non-finite step leaves the state as it was.
    ok = common.all_finite(grads, dgrads, figures["loss"])
    new = dict(step=step + 1, params=params, opt=opt, disc=disc, disc_opt=disc_opt, usage=usage,
               ema=self._frozen_kept(common.ema_update(state["ema"], params, c.ema_decay), params))
    new = common.select(ok, new, dict(state, step=step + 1))
    figures.update(grad_norm=optax.tree.norm(grads), nonfinite=1.0 - ok.astype(jnp.float32),
                   revived=jnp.where(revive, n_revived, 0).astype(jnp.float32))
    return new, figures

  # Evaluation.
  def _evaluate(self, params, frames):
    """PSNR and MS-SSIM of every prefix, code hits per scale, and a reconstruction grid."""
    tok = nnx.merge(self.tok_def, params)
    x = common.to_unit_range(frames.reshape(-1, *frames.shape[2:]))
    tokens = tok.encode(x)
    psnr, ssim, recs = [], [], []
    for k in range(1, self.num_scales + 1):
      rec = tok.decode(tokens[:k], x.shape[1], x.shape[2])
      mse = jnp.mean(jnp.square((rec - x) / 2.0), axis=(1, 2, 3))
      psnr.append(jnp.mean(10 * jnp.log10(1.0 / jnp.maximum(mse, 1e-10))))
      ssim.append(jnp.mean(losses.ms_ssim(rec, x, weights=self.msssim_w)))
      recs.append(rec)
    hits = jnp.stack([jnp.bincount(t.reshape(-1), length=self.vocab) for t in tokens])
    n = min(4, x.shape[0])
    mid = recs[(self.num_scales - 1) // 2]
    grid = jnp.concatenate([jnp.concatenate([x[i], mid[i], recs[-1][i]], axis=1) for i in range(n)], axis=0)
    return dict(psnr=jnp.stack(psnr), ms_ssim=jnp.stack(ssim), hits=hits,
                grid=((grid + 1) * 127.5).clip(0, 255).astype(jnp.uint8))


def completed_fhat(quantizer, tokens, codes, keep):
  """The tiles' fhat from `complete`'s token maps, or, where it gave expected code vectors (`mean`), from
  those vectors at every scale from keep[i] on: what the codec's decoder renders."""
  if codes is None:
    return quantizer.decode(tokens)
  return sum(quantizer.scale_residual(k, t) if c is None else
             jnp.where((keep > k)[:, None, None, None], quantizer.scale_residual(k, t),
                       quantizer.residual_of_codes(k, c)) for k, (t, c) in enumerate(zip(tokens, codes)))


def trainable_groups(config, tok_state) -> frozenset[str]:
  """The top-level parameter groups that learn: config.train_only's names, or all of them when it is empty."""
  groups = set(nnx.to_pure_dict(tok_state))
  names = {n.strip() for n in str(config.get("train_only", "") or "").split(",") if n.strip()}
  if not names:
    return frozenset(groups)
  unknown = names - groups
  if unknown:
    raise ValueError(f"train_only names {', '.join(sorted(unknown))}, not parameter groups of the tokenizer "
                     f"({', '.join(sorted(groups))})")
  return frozenset(names)


def completion_model(config, tok, trainable, mesh):
  """(graphdef, params replicated on the mesh, completion setting) of config.complete_with's context
  model, or None when it is empty; a ValueError when it cannot complete this tokenizer's tokens."""
  path = str(config.get("complete_with", "") or "")
  if not path:
    return None
  from progvc_jax.eval.completion import parse_setting  # the setting syntax the codec's tools use
  setting = parse_setting(config.get("completion", "argmax"))
  if setting["complete"] not in ("argmax", "sample", "mean"):
    raise ValueError(f"complete_with needs a completion of the missing scales (argmax, "
                     f"sample[:t=../k=../p=..] or mean[:t=..]), not {setting['complete']}")
  if setting.get("weight", 1.0) != 1.0:
    raise ValueError("complete_with renders mean completions whole: drop w= from the completion setting")
  if trainable & TOKEN_GROUPS:
    raise ValueError(f"complete_with completes the frozen tokenizer's tokens: train only the decoder "
                     f"(train_only=decoder,post_quant_conv), not {', '.join(sorted(trainable & TOKEN_GROUPS))}")
  args, params = checkpointing.load_params(path, "context")
  expected = dict(vocab_size=tok.quantizer.vocab_size, latent_dim=tok.quantizer.codebook.shape[1],
                  schedule=list(tok.schedule))
  got = {k: list(args[k]) if k == "schedule" else args[k] for k in expected}
  if got != expected:
    raise ValueError(f"the context model in {path} codes other tokens ({got}) than this tokenizer ({expected})")
  model = nnx.eval_shape(lambda: ContextModel(**args, rngs=nnx.Rngs(0)))
  model_def, _ = nnx.split(model)
  params = checkpointing.fit_params(params, nnx.to_pure_dict(nnx.state(model, nnx.Param)), path, "context")
  params = jax.device_put(jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params), sharding.replicated(mesh))
  logging.info("completing cut frames with the context model of %s (%s)", path, setting)
  return model_def, params, setting


def train_and_evaluate(config, workdir: str, stop_at: int | None = None):
  """Trains from scratch or resumes from the latest checkpoint in `workdir`.

  stop_at: end this run after that step with a checkpoint (a time-boxed job);
  the next run resumes from it.
  """
  mesh = common.make_mesh(config)
  pixel_tile = config.model.get("patch", 1) * 2 ** (len(config.model["ch_mult"]) - 1) * config.model["tile"]
  if config.data.crop % pixel_tile:
    raise ValueError(f"data.crop {config.data.crop} must be a multiple of the pixel tile {pixel_tile}")
  if jax.process_index() == 0:
    checkpointing.write_run_info(workdir, "tokenizer", dict(config.model))
  trainer = Trainer(config, mesh)

  def init():
    state = trainer.init(jax.random.key(config.seed))
    if config.init_from:  # start from given weights, e.g. a converted VAR tokenizer
      params = checkpointing.load_params_like(config.init_from, "tokenizer", state["params"])
      params = jax.device_put(params, trainer.shardings["params"])
      state = dict(state, params=params, ema=jax.tree.map(jnp.copy, params))
      logging.info("tokenizer initialised from %s", config.init_from)
    return state

  return common.run(config, workdir, mesh, abstract=trainer.abstract, init=init, step=trainer.step,
                    evaluate=lambda state, batches, writer, step: run_eval(trainer, state, batches, writer, step),
                    figures=FIGURES, stop_at=stop_at)


def run_eval(trainer, state, batches, writer, step):
  """PSNR and MS-SSIM of the EMA model per prefix of scales, and codebook use per scale."""
  results = [trainer.evaluate(state["ema"], b) for b in batches]
  psnr = np.mean([np.asarray(r["psnr"]) for r in results], axis=0)
  ssim = np.mean([np.asarray(r["ms_ssim"]) for r in results], axis=0)
  hits = np.sum([np.asarray(r["hits"]) for r in results], axis=0)
  usage = qz.codebook_usage(jnp.asarray(hits))
  scalars = {"eval/psnr": psnr[-1], "eval/ms_ssim": ssim[-1]}
  for k in range(len(psnr)):
    scalars[f"eval/psnr_scale{k + 1}"] = psnr[k]
    scalars[f"eval/perplexity_scale{k + 1}"] = float(usage["perplexity"][k])
    scalars[f"eval/unused_scale{k + 1}"] = float(usage["unused"][k])
  writer.write_scalars(step, scalars)
  writer.write_images(step, {"eval/source_mid_full": np.asarray(results[0]["grid"])[None]})
  logging.info("eval step %d: PSNR %.2f dB (scale 1: %.2f), MS-SSIM %.4f, unused codes at the last scale %.0f%%",
               step, psnr[-1], psnr[0], ssim[-1], 100 * float(usage["unused"][-1]))
  return scalars
