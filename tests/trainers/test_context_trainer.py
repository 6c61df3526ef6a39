"""The context-model trainer on 8 simulated devices, from a real tokenizer workdir."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from progvc_jax.configs import context as context_config
from progvc_jax import checkpointing, sharding
from progvc_jax.trainers import common
from progvc_jax.trainers import context as trainer_lib
from progvc_jax.trainers import tokenizer as tokenizer_trainer
from tests.trainers.test_tokenizer_trainer import SMALL as SMALL_TOKENIZER
from tests.trainers.test_tokenizer_trainer import small_config as small_tokenizer_config

pytestmark = pytest.mark.slow  # every test here compiles training steps or runs a subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A small Transformer over the small tokenizer's 4 x 4 tiles (4 scales, 30
# tokens), clips of 2 frames (one I, one P) cropped to 32 x 32 (16 tiles).
SMALL = {
    "model.width": 32, "model.depth": 2, "model.heads": 2,
    "data.crop": 32, "data.clip_len": 2, "data.num_photo_clips": 16, "data.worker_count": 0,
    "batch_size": 8, "total_steps": 4, "optimizer.lr": 3e-3, "optimizer.warmup_steps": 1,
    "optimizer.end_lr_factor": 1.0,
    "mesh": (2, 2, 2), "log_every": 2, "eval_every": 4, "ckpt_every": 2, "eval_batches": 1,
}


def small_config(tokenizer, **overrides):
  c = context_config.get_config("tiny,runlocal")
  for k, v in {**SMALL, "tokenizer": tokenizer, **overrides}.items():
    target = c
    *path, last = k.split(".")
    for p in path:
      target = target[p]
    target[last] = v
  return c


@pytest.fixture(scope="module")
def tokenizer_workdir(tmp_path_factory):
  """A tokenizer trained for 2 steps by the tokenizer trainer (its own test config)."""
  workdir = str(tmp_path_factory.mktemp("tok"))
  tokenizer_trainer.train_and_evaluate(small_tokenizer_config(total_steps=2), workdir)
  return workdir


@pytest.fixture(scope="module")
def trainer(tokenizer_workdir):
  config = small_config(tokenizer_workdir)
  tokenizer_args = checkpointing.load_model_args(tokenizer_workdir, "tokenizer")
  mesh = sharding.make_mesh(config.mesh)
  t = trainer_lib.Trainer(config, mesh, tokenizer_args)
  tok = checkpointing.load_params_like(tokenizer_workdir, "tokenizer", t.tok_abstract)
  batch = next(iter(common.make_input(config, 0, 0, 1, 0)))
  return t, jax.device_put(tok, t.tok_shardings), common.device_batch(mesh, batch)


def test_workdir_gives_the_ema_weights_of_its_latest_step(tokenizer_workdir):
  args, params = checkpointing.load_params(tokenizer_workdir, "tokenizer")
  assert args["tile"] == SMALL_TOKENIZER["model.tile"] and args["ch_mult"] == [1, 2]
  manager = checkpointing.train_manager(tokenizer_workdir, 3)
  assert manager.latest_step() == 2
  state = manager.restore(2, args=checkpointing.ocp.args.Composite(
      state=checkpointing.ocp.args.StandardRestore()))["state"]
  for a, b in zip(jax.tree.leaves(state["ema"]), jax.tree.leaves(params)):
    np.testing.assert_array_equal(np.asarray(a), b)
  with pytest.raises(ValueError, match="holds a 'tokenizer' checkpoint, not a 'context' one"):
    checkpointing.load_params(tokenizer_workdir, "context")


def test_a_codec_bundle_serves_as_the_frozen_tokenizer():
  """--config.tokenizer=model.pgvcm: a context model for a shipped tokenizer."""
  from progvc_jax.codec import bundle as bundle_lib
  from progvc_jax.codec.cli import DEFAULT_MODEL as path
  b = bundle_lib.load_bundle(path)
  args = checkpointing.load_model_args(path, "tokenizer")
  assert args == b.tokenizer_args
  abstract = nnx.to_pure_dict(nnx.state(b.tokenizer(), nnx.Param))
  params = checkpointing.load_params_like(path, "tokenizer", abstract)
  for a, c in zip(jax.tree.leaves(abstract), jax.tree.leaves(params)):
    np.testing.assert_array_equal(np.asarray(a), c)
  with pytest.raises(ValueError, match="not a 'discriminator'"):
    checkpointing.load_params(path, "discriminator")


def test_sequences_follow_clips_and_tiles(trainer):
  t, tok, frames = trainer
  x_next, frame_type, prev, targets = jax.jit(t.sequences)(tok, frames)
  b, tt = frames.shape[:2]
  tiles = (SMALL["data.crop"] // t.pixel_tile) ** 2
  n = b * tt * tiles
  assert x_next.shape == (n, t.length - 1, 8) and targets.shape == (n, t.length)
  ft = np.asarray(frame_type).reshape(b, tt, tiles)
  assert (ft[:, 0] == 0).all() and (ft[:, 1:] == 1).all()
  # A P-frame's context is exactly its previous frame's tokens, tile by tile.
  tg = np.asarray(targets).reshape(b, tt, tiles, -1)
  np.testing.assert_array_equal(np.asarray(prev["tokens"]).reshape(b, tt, tiles, -1)[:, 1], tg[:, 0])


def test_sharded_steps_lower_the_bits(trainer):
  t, tok, frames = trainer
  state = t.init(jax.random.key(0))
  bits = []
  for _ in range(15):
    state, figures = t.step(state, tok, frames)
    bits.append(float(figures["loss"]))
  assert bits[0] == pytest.approx(np.log2(128), abs=0.5)  # about uniform over the 128 codes at first
  assert bits[-1] < 0.85 * bits[0], bits
  for name in ("bits_I", "bits_P"):
    assert 0 < float(figures[name]) < bits[0]
  np.testing.assert_allclose(float(figures["bpp_P"]), float(figures["bits_P"]) * 30 / 64, rtol=1e-5)
  for arr, sh in zip(jax.tree.leaves(state), jax.tree.leaves(t.shardings)):
    assert arr.sharding.is_equivalent_to(sh, arr.ndim)
  # The width dimension of the parameters is split over fsdp, heads and MLP over model.
  assert state["params"]["blocks"][0]["fc1"]["kernel"].sharding.spec == P("fsdp", "model")
  assert state["params"]["blocks"][0]["attn"]["q"]["kernel"].sharding.spec == P("fsdp", "model", None)


def test_run_resumes_and_reports_per_frame_type(tokenizer_workdir, tmp_path):
  config = small_config(tokenizer_workdir)
  full = jax.device_get(trainer_lib.train_and_evaluate(config, str(tmp_path / "full")))
  trainer_lib.train_and_evaluate(config, str(tmp_path / "resumed"), stop_at=2)
  resumed = jax.device_get(trainer_lib.train_and_evaluate(config, str(tmp_path / "resumed")))
  for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(a, b)
  # The run's own folder names its model, so export and tools read it like a checkpoint.
  args, params = checkpointing.load_params(str(tmp_path / "full"), "context")
  assert args["schedule"] == [1, 2, 3, 4] and args["vocab_size"] == 128 and args["context"] == "additive"
  for a, b in zip(jax.tree.leaves(full["ema"]), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)


def test_train_command_line(tokenizer_workdir, tmp_path):
  flags = [f"--config.{k}={v}" for k, v in SMALL.items()]
  cfg = os.path.join(ROOT, "configs", "context.py") + ":tiny,runlocal"
  run = subprocess.run([sys.executable, "-m", "progvc_jax.train", "--config", cfg, "--workdir", str(tmp_path / "run"),
                        f"--config.tokenizer={tokenizer_workdir}", *flags],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  assert "eval step 4: I-frames" in run.stderr and "bits/token" in run.stderr
  missing = subprocess.run([sys.executable, "-m", "progvc_jax.train", "--config", cfg, "--workdir", str(tmp_path / "x")],
                           capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert missing.returncode != 0 and "config.tokenizer must name" in missing.stderr
