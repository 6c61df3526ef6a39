"""The packaged configs: every variant builds, and derived fields follow the fields they derive from."""

import jax.numpy as jnp
import numpy as np
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


@pytest.mark.parametrize("n", [1, 3])
def test_micro_batches_sum_alike_unrolled_and_scanned(n):
  import jax
  micro = jax.random.normal(jax.random.key(0), (n, 4, 5))

  def part(i, batch):
    return (dict(total=jnp.sum(batch * (i + 1)), rows=batch.sum(0))), batch[:1] * i

  unrolled = common.accumulate(part, micro, scan=False)
  scanned = common.accumulate(part, micro, scan=True)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), unrolled, scanned)
  np.testing.assert_allclose(unrolled[0]["total"], sum(float(jnp.sum(micro[i])) * (i + 1) for i in range(n)),
                             rtol=1e-5)
  assert unrolled[1].shape == (n, 1, 5)


def test_the_accumulation_loop_is_chosen_by_backend_unless_set():
  c = tokenizer_config.get_config("tiny")
  assert c.grad_accum_loop == "auto" and not common.accum_scan(c)  # these tests run on CPU
  c.grad_accum_loop = "scan"
  assert common.accum_scan(c)
  c.grad_accum_loop = "loop"
  with pytest.raises(ValueError, match="grad_accum_loop must be one of"):
    common.accum_scan(c)
