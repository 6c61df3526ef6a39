"""The tokenizer trainer on 8 simulated devices: learning, accumulation, guards, resume, re-meshing."""

import glob
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from skimage import data as skdata

from progvc_jax.configs import tokenizer as tokenizer_config
from progvc_jax import checkpointing, losses, sharding
from progvc_jax.trainers import common
from progvc_jax.trainers import tokenizer as trainer_lib

pytestmark = pytest.mark.slow  # every test here compiles training steps or runs a subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# A small tokenizer (2 levels, 4 x 4 latent tiles, 4 scales) on 32 x 32 crops:
# the trainer's code paths at a compile time the test suite can afford. The
# command-line test passes the same values as flags, so it reuses the
# compiled step from the on-disk cache.
SMALL = {
    "model.ch": 8, "model.ch_mult": (1, 2), "model.z_channels": 8, "model.norm_groups": 8,
    "model.vocab_size": 128, "model.tile": 4, "disc.ch": 8, "disc.norm_groups": 8,
    "data.crop": 32, "data.num_photo_clips": 16, "data.worker_count": 0,
    "batch_size": 8, "total_steps": 4, "optimizer.lr": 2e-3, "optimizer.warmup_steps": 1,
    "random_prefix": 0.0, "mesh": (2, 2, 2),
    "log_every": 2, "eval_every": 1000, "ckpt_every": 2, "eval_batches": 1,
}


def small_config(**overrides):
  c = tokenizer_config.get_config("tiny,runlocal")
  for k, v in {**SMALL, **overrides}.items():
    target = c
    *path, last = k.split(".")
    for p in path:
      target = target[p]
    target[last] = v
  return c


def photo_batch(n=8, size=32):
  photos = [skdata.astronaut(), skdata.coffee(), skdata.chelsea(), skdata.rocket()]
  crops = [photos[i % 4][20 * i:20 * i + size, 30 * i:30 * i + size] for i in range(n)]
  return np.stack(crops)[:, None]  # (B, T=1, H, W, 3) uint8


@pytest.fixture(scope="module")
def mesh222():
  return sharding.make_mesh((2, 2, 2))


@pytest.fixture(scope="module")
def base(mesh222):
  """A trainer on a (data=2, fsdp=2, model=2) mesh and a fixed batch of photo crops."""
  trainer = trainer_lib.Trainer(small_config(), mesh222)
  return trainer, jax.device_put(photo_batch(), sharding.batch_sharding(mesh222, 5))


def test_sharded_steps_lower_the_loss(base):
  trainer, batch = base
  state = trainer.init(jax.random.key(0))
  losses = []
  for _ in range(12):
    state, figures = trainer.step(state, batch)
    losses.append(float(figures["loss"]))
  assert int(state["step"]) == 12
  assert losses[-1] < 0.8 * losses[0], losses
  # The state stays on the shardings the rules give.
  for arr, sh in zip(jax.tree.leaves(state), jax.tree.leaves(trainer.shardings)):
    assert arr.sharding.is_equivalent_to(sh, arr.ndim)


def test_gradient_accumulation_matches_one_batch(base, mesh222):
  trainer, batch = base
  two = trainer_lib.Trainer(small_config(grad_accum=2), mesh222)
  params, figures = [], []
  for t in (trainer, two):
    state = t.init(jax.random.key(0))
    for _ in range(2):  # the first step has learning rate 0 (warmup)
      state, fig = t.step(state, batch)
    params.append(jax.device_get(state["params"]))
    figures.append({k: float(v) for k, v in fig.items()})
  # The same loss and gradient as one batch (not a sum over micro-batches).
  for k in ("loss", "rec_loss", "vq_loss", "grad_norm"):
    np.testing.assert_allclose(figures[1][k], figures[0][k], rtol=1e-4, err_msg=k)
  # Adam normalises each gradient element, so elements whose gradient is float
  # noise may step differently; every element stays within one step (lr).
  for a, b in zip(jax.tree.leaves(params[0]), jax.tree.leaves(params[1])):
    np.testing.assert_allclose(a, b, atol=SMALL["optimizer.lr"], rtol=0)


def test_nonfinite_step_is_rejected(base):
  trainer, batch = base
  state = trainer.init(jax.random.key(0))
  state["params"]["decoder"]["conv_out"]["bias"] = state["params"]["decoder"]["conv_out"]["bias"].at[0].set(jnp.nan)
  before = jax.device_get(state)
  state, figures = trainer.step(state, batch)
  assert float(figures["nonfinite"]) == 1.0 and int(state["step"]) == 1
  after = jax.device_get(state)
  for key in ("params", "opt", "ema", "disc", "usage"):
    for a, b in zip(jax.tree.leaves(before[key]), jax.tree.leaves(after[key])):
      np.testing.assert_array_equal(a, b)


def test_bfloat16_and_gan_step(mesh222):
  # With 2 x 2 patches (as the default model's 4 x 4), so the GAN's adaptive weight
  # differentiates through the decoder's depth-to-space output.
  config = small_config(compute_dtype="bfloat16", **{"loss.gan": 0.5, "loss.gan_start": 0, "model.patch": 2})
  trainer = trainer_lib.Trainer(config, mesh222)
  state = trainer.init(jax.random.key(0))
  disc0 = jax.device_get(state["disc"])
  batch = jax.device_put(photo_batch(), sharding.batch_sharding(mesh222, 5))
  for _ in range(2):  # the first step has learning rate 0 (warmup)
    state, figures = trainer.step(state, batch)
  assert np.isfinite(float(figures["loss"])) and float(figures["nonfinite"]) == 0.0
  assert float(figures["gan_weight"]) > 0 and float(figures["disc_loss"]) > 0
  moved = [np.abs(a - b).max() for a, b in zip(jax.tree.leaves(disc0), jax.tree.leaves(jax.device_get(state["disc"])))]
  assert max(moved) > 0  # the discriminator trains once the GAN is on


def test_colour_jitter_reaches_the_training_batches_and_not_the_evaluation_batches():
  plain = next(iter(common.make_input(small_config(), 0, 0, 1, 0)))
  config = small_config(**{"data.colour_share": 1.0})
  train = next(iter(common.make_input(config, 0, 0, 1, 0)))
  evaluation = next(iter(common.make_input(config, 0, 0, 1, 0, augment=False)))
  np.testing.assert_array_equal(evaluation, plain)
  assert train.shape == plain.shape
  assert all(not np.array_equal(a, b) for a, b in zip(train, plain))


def test_chroma_weight_adds_the_colour_difference_loss(mesh222):
  x = jnp.asarray(photo_batch()[:, 0], jnp.float32) / 127.5 - 1.0
  rec = jnp.roll(x, 1, axis=-1)  # R, G, B -> B, R, G: the colours change, most of the luma not
  plain = trainer_lib.Trainer(small_config(), mesh222)._reconstruction_loss(rec, x)
  weighted = trainer_lib.Trainer(small_config(**{"loss.chroma": 3.0}), mesh222)._reconstruction_loss(rec, x)
  np.testing.assert_allclose(weighted - plain, 3.0 * losses.chroma_l1(rec, x), rtol=1e-5)
  assert float(losses.chroma_l1(rec, x)) > 0.05


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """An uninterrupted 4-step run, and one stopped after step 2 then resumed."""
  config = small_config()
  root = tmp_path_factory.mktemp("runs")
  full = trainer_lib.train_and_evaluate(config, str(root / "full"))
  trainer_lib.train_and_evaluate(config, str(root / "resumed"), stop_at=2)
  assert sorted(os.listdir(root / "resumed" / "checkpoints")) == ["2"]
  resumed = trainer_lib.train_and_evaluate(config, str(root / "resumed"))
  return config, root, jax.device_get(full), jax.device_get(resumed)


def test_resume_equals_uninterrupted_run(runs):
  config, root, full, resumed = runs
  assert int(full["step"]) == int(resumed["step"]) == 4
  for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(a, b)
  # The checkpointed data iterator continues where the run left off.
  fresh = iter(common.make_input(config, config.seed, 0, 1, 0))
  uninterrupted = [next(fresh) for _ in range(4)]
  restored = iter(common.make_input(config, config.seed, 0, 1, 0))
  trainer = trainer_lib.Trainer(config, sharding.make_mesh(config.mesh))
  checkpointing.restore_train(checkpointing.train_manager(str(root / "resumed"), 3), trainer.abstract,
                              restored, step=2)
  np.testing.assert_array_equal(next(restored), uninterrupted[2])
  np.testing.assert_array_equal(next(restored), uninterrupted[3])
  # Summaries were written for TensorBoard.
  assert glob.glob(str(root / "full" / "events.out.tfevents.*"))


@pytest.mark.parametrize("devices", [4, 1])
def test_restore_onto_another_mesh(runs, devices):
  config, root, full, _ = runs
  mesh = sharding.make_mesh((devices, 1, 1), devices=jax.devices()[:devices])
  trainer = trainer_lib.Trainer(config, mesh)
  state = checkpointing.restore_train(checkpointing.train_manager(str(root / "full"), 3), trainer.abstract, None)
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(full)):
    assert len(a.sharding.device_set) == devices
    np.testing.assert_array_equal(np.asarray(a), b)


def test_train_command_line(tmp_path):
  flags = [f"--config.{k}={v}" for k, v in SMALL.items() if k != "eval_every"] + ["--config.eval_every=4"]
  run = subprocess.run(
      [sys.executable, "-m", "progvc_jax.train", "--config", os.path.join(ROOT, "configs", "tokenizer.py") + ":tiny,runlocal",
       "--workdir", str(tmp_path), *flags],
      capture_output=True, text=True, cwd=ROOT, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  assert "steps/s" in run.stderr and "ETA" in run.stderr and "eval step 4" in run.stderr
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]
  assert glob.glob(str(tmp_path / "events.out.tfevents.*"))
  bad = subprocess.run([sys.executable, "-m", "progvc_jax.train", "--config",
                        os.path.join(ROOT, "configs", "tokenizer.py") + ":huge", "--workdir", str(tmp_path / "x")],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert bad.returncode != 0 and "unknown tokenizer variant 'huge'" in bad.stderr


def test_init_from_parameter_checkpoint(tmp_path):
  from flax import nnx
  from progvc_jax.models.tokenizer import Tokenizer

  model_args = dict(small_config().model)
  params = nnx.to_pure_dict(nnx.state(Tokenizer(**model_args, rngs=nnx.Rngs(3)), nnx.Param))
  checkpointing.save_params(str(tmp_path / "tok"), params, "tokenizer", model_args)
  abstract = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: Tokenizer(**model_args, rngs=nnx.Rngs(0))), nnx.Param))
  loaded = checkpointing.load_params_like(str(tmp_path / "tok"), "tokenizer", abstract)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  other = dict(model_args, z_channels=16)
  wrong = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: Tokenizer(**other, rngs=nnx.Rngs(0))), nnx.Param))
  with pytest.raises(ValueError, match="does not fit the configured tokenizer"):
    checkpointing.load_params_like(str(tmp_path / "tok"), "tokenizer", wrong)
  with pytest.raises(FileNotFoundError, match="not a progvc parameter checkpoint"):
    checkpointing.load_params_like(str(tmp_path / "nothing"), "tokenizer", abstract)


def context_checkpoint(path, config, **overrides):
  """A randomly initialised context model for the small tokenizer's codes, saved as a parameter checkpoint."""
  from progvc_jax.models.transformer import ContextModel
  tok, _ = trainer_lib.build_models(config)
  args = dict(vocab_size=tok.quantizer.vocab_size, latent_dim=tok.quantizer.codebook.shape[1],
              schedule=tuple(tok.schedule), width=32, depth=1, heads=2, neighbourhood=3)
  args.update(overrides)
  model = ContextModel(**args, rngs=nnx.Rngs(3))
  checkpointing.save_params(str(path), nnx.to_pure_dict(nnx.state(model, nnx.Param)), "context", args)
  return str(path), model


def assert_only_the_decoder_learns(trainer, state, mesh, steps=2) -> None:
  """Training steps (the first one's learning rate is 0, warm-up) change the decoder and post_quant_conv
  and not a bit of the groups that make the tokens, nor of their EMA."""
  before = jax.device_get(state["params"])
  batch = jax.device_put(photo_batch(), sharding.batch_sharding(mesh, 5))
  for _ in range(steps):
    state, figures = trainer.step(state, batch)
  assert float(figures["nonfinite"]) == 0.0
  after, ema = jax.device_get(state["params"]), jax.device_get(state["ema"])
  for group in trainer_lib.TOKEN_GROUPS:
    for a, b, e in zip(jax.tree.leaves(before[group]), jax.tree.leaves(after[group]), jax.tree.leaves(ema[group])):
      assert np.array_equal(a, b) and np.array_equal(a, e), group
  for group in ("decoder", "post_quant_conv"):
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before[group]),
                                                        jax.tree.leaves(after[group]))), group


def test_decoder_fine_tune_on_completed_scales(mesh222, tmp_path):
  """complete_with: cut frames get their missing scales from the context model, as the codec completes a
  truncated stream; the decoder learns on them while the tokens' groups stay frozen to the bit (here with
  the codebook's revival of unused codes due every step)."""
  from progvc_jax.models import progressive
  from progvc_jax.models.transformer import I_FRAME
  ctx_path, model = context_checkpoint(tmp_path / "ctx", small_config())
  config = small_config(train_only="decoder,post_quant_conv", complete_with=ctx_path, random_prefix=1.0,
                        **{"codebook.revive_every": 1})
  trainer = trainer_lib.Trainer(config, mesh222)
  state = trainer.init(jax.random.key(0))
  tok = nnx.merge(trainer.tok_def, jax.device_get(state["params"]))
  x = common.to_unit_range(jnp.asarray(photo_batch()[:2, 0]))
  tokens = tok.encode(x)
  rows, cols = tok.tile_grid(32, 32)
  flat = [t.reshape(-1, *t.shape[2:]) for t in tokens]
  keep = jnp.repeat(jnp.asarray([1, 2]), rows * cols)
  done, codes = trainer.complete(tok.quantizer, flat, keep, (rows, cols), jax.random.key(0))
  assert codes is None  # argmax chooses tokens; only `mean` gives code vectors
  # The kept prefix is untouched; the rest is what the codec's own completion (argmax, cached steps) gives.
  steps = progressive.FrameSteps(tok.quantizer, model)
  agree = []
  for frame, kept in enumerate((1, 2)):
    tiles = slice(frame * rows * cols, (frame + 1) * rows * cols)
    given = [f[tiles].reshape(rows * cols, -1) for f in flat[:kept]]
    _, _, ref = steps.run(rows * cols, I_FRAME, None, steps.completer(given, "argmax", jax.random.key(0)),
                          grid=(rows, cols))
    for k, t in enumerate(done):
      got = np.asarray(t[tiles]).reshape(rows * cols, -1)
      if k < kept:
        assert np.array_equal(got, np.asarray(flat[k][tiles]).reshape(rows * cols, -1))
      else:
        agree.append(np.asarray(ref[k]) == got)
  assert np.mean(np.concatenate([a.ravel() for a in agree])) > 0.99  # float argmax: near-ties may flip
  assert not all(np.array_equal(d, f) for d, f in zip(done, flat))  # the model's guess is not the source's

  assert_only_the_decoder_learns(trainer, state, mesh222, steps=3)
  with pytest.raises(ValueError, match="train_only names decodr, not parameter groups"):
    trainer_lib.Trainer(small_config(train_only="decodr"), mesh222)


def test_decoder_fine_tune_on_scales_completed_in_expectation(mesh222, tmp_path):
  """completion=mean:t=T: the decoder learns on the fhat the codec's `mean` decode renders (the expected
  code vectors of the missing scales, the context following the argmax), and only the decoder learns."""
  from progvc_jax.models import progressive
  from progvc_jax.models.transformer import I_FRAME
  ctx_path, model = context_checkpoint(tmp_path / "ctx", small_config())
  config = small_config(train_only="decoder,post_quant_conv", complete_with=ctx_path, completion="mean:t=2",
                        random_prefix=1.0)
  trainer = trainer_lib.Trainer(config, mesh222)
  state = trainer.init(jax.random.key(0))
  tok = nnx.merge(trainer.tok_def, jax.device_get(state["params"]))
  x = common.to_unit_range(jnp.asarray(photo_batch()[:2, 0]))
  rows, cols = tok.tile_grid(32, 32)
  flat = [t.reshape(-1, *t.shape[2:]) for t in tok.encode(x)]
  keep = jnp.repeat(jnp.asarray([1, 3]), rows * cols)
  tokens, codes = trainer.complete(tok.quantizer, flat, keep, (rows, cols), jax.random.key(0))
  fhat = np.asarray(trainer_lib.completed_fhat(tok.quantizer, tokens, codes, keep))
  steps = progressive.FrameSteps(tok.quantizer, model)
  for frame, kept in enumerate((1, 3)):
    tiles = slice(frame * rows * cols, (frame + 1) * rows * cols)
    given = [f[tiles].reshape(rows * cols, -1) for f in flat[:kept]]
    ref, _, _ = steps.run(rows * cols, I_FRAME, None, steps.completer(given, "mean", jax.random.key(0), 2.0),
                          grid=(rows, cols))
    np.testing.assert_allclose(fhat[tiles], np.asarray(ref), atol=1e-4)
  as_tokens = np.asarray(tok.quantizer.decode(tokens))  # the argmax tokens' fhat: not what is rendered
  assert np.abs(as_tokens - fhat).max() > 1e-2

  assert_only_the_decoder_learns(trainer, state, mesh222)


def test_completion_fine_tune_refuses_what_would_change_or_miss_the_tokens(mesh222, tmp_path):
  ctx_path, _ = context_checkpoint(tmp_path / "ctx", small_config())
  with pytest.raises(ValueError, match="train only the decoder .* not encoder, quant_conv, quantizer"):
    trainer_lib.Trainer(small_config(complete_with=ctx_path), mesh222)
  only_decoder = dict(train_only="decoder,post_quant_conv", complete_with=ctx_path)
  with pytest.raises(ValueError, match="needs a completion of the missing scales .* not none"):
    trainer_lib.Trainer(small_config(completion="none", **only_decoder), mesh222)
  with pytest.raises(ValueError, match="the mode must be one of"):
    trainer_lib.Trainer(small_config(completion="greedy", **only_decoder), mesh222)
  with pytest.raises(ValueError, match="renders mean completions whole: drop w="):
    trainer_lib.Trainer(small_config(completion="mean:t=3/w=0.5", **only_decoder), mesh222)
  other, _ = context_checkpoint(tmp_path / "other", small_config(), vocab_size=64)
  with pytest.raises(ValueError, match="codes other tokens"):
    trainer_lib.Trainer(small_config(train_only="decoder,post_quant_conv", complete_with=other), mesh222)

