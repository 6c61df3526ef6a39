"""The packaged configs: every variant builds, and derived fields follow the fields they derive from."""

import jax.numpy as jnp
import pytest

from progvc_jax.configs import context as context_config
from progvc_jax.configs import tokenizer as tokenizer_config
from progvc_jax.trainers import common


def _second_update(config, lr):
  """The update the optimizer makes at step 1 (after warmup's zero step) for a gradient of 1."""
  tx = common.make_optimizer(config.optimizer, config.total_steps, lr=lr)
  params = {"w": jnp.zeros(())}
  state = tx.init(params)
  for _ in range(2):
    updates, state = tx.update({"w": jnp.ones(())}, state, params)
  return float(updates["w"])


def test_the_discriminator_rate_follows_the_generator_rate_unless_set():
  c = tokenizer_config.get_config("base")
  c.optimizer.warmup_steps = 1
  c.optimizer.lr = 1e-3  # as `--config.optimizer.lr=1e-3` or a sweep sets it
  assert c.disc_lr is None
  generator = _second_update(c, None)
  assert _second_update(c, c.disc_lr) == pytest.approx(generator)
  assert generator == pytest.approx(-1e-3, rel=1e-2)
  c.disc_lr = 1e-4
  assert _second_update(c, c.disc_lr) == pytest.approx(generator / 10, rel=1e-2)


@pytest.mark.parametrize("module,variant", [(tokenizer_config, v) for v in tokenizer_config.MODELS]
                         + [(context_config, v) for v in context_config.MODELS])
def test_every_variant_builds_with_its_stage(module, variant):
  c = module.get_config(f"{variant},runlocal")
  assert c.variant == variant and c.total_steps == 20 and c.batch_size == 4
  assert c.stage == module.__name__.rsplit(".", 1)[1]


def test_unknown_variants_and_arguments_are_named():
  with pytest.raises(ValueError, match="unknown tokenizer variant 'huge'"):
    tokenizer_config.get_config("huge")
  with pytest.raises(ValueError, match="'speed' is not one of"):
    context_config.get_config("tiny,speed=3")
