"""Meshes from config sizes and shardings from logical axis rules."""

import jax
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from progvc_jax.configs import tokenizer as tokenizer_config
from progvc_jax import sharding
from progvc_jax.models.tokenizer import Tokenizer

RULES = dict(conv_in="fsdp", conv_out="model", embed="fsdp", vocab="model", norm=None)


def test_mesh_shapes():
  assert sharding.mesh_shape((-1, 1, 1), 8) == (8, 1, 1)
  assert sharding.mesh_shape((2, -1, 2), 8) == (2, 2, 2)
  with pytest.raises(ValueError, match="does not divide"):
    sharding.mesh_shape((3, -1, 1), 8)
  with pytest.raises(ValueError, match="needs 4 devices"):
    sharding.mesh_shape((2, 2, 1), 8)
  with pytest.raises(ValueError, match="at most one -1"):
    sharding.mesh_shape((-1, -1, 1), 8)
  mesh = sharding.make_mesh((2, 2, 2))
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "model": 2}


def test_spec_rules_divisibility_and_reuse():
  mesh = sharding.make_mesh((2, 2, 2))
  assert sharding.spec_for((None, None, "conv_in", "conv_out"), (3, 3, 64, 32), RULES, mesh) == \
      P(None, None, "fsdp", "model")
  # 3 output channels do not split 2 ways: replicated on that dimension.
  assert sharding.spec_for((None, None, "conv_in", "conv_out"), (3, 3, 64, 3), RULES, mesh) == \
      P(None, None, "fsdp", None)
  # A mesh axis is used once per array.
  assert sharding.spec_for(("conv_in", "embed"), (8, 8), RULES, mesh) == P("fsdp", None)
  # Axes of size 1 are never named.
  mesh8 = sharding.make_mesh((8, 1, 1))
  assert sharding.spec_for(("conv_in", "conv_out"), (8, 8), RULES, mesh8) == P(None, None)


@pytest.mark.parametrize("sizes", [(2, 2, 2), (8, 1, 1)])
def test_param_and_optimizer_shardings_follow_rules(sizes):
  mesh = sharding.make_mesh(sizes)
  model = tokenizer_config.get_config("tiny").model
  abstract = nnx.eval_shape(lambda: Tokenizer(**model, rngs=nnx.Rngs(0)))
  state = nnx.state(abstract, nnx.Param)
  shardings = sharding.param_shardings(state, RULES, mesh)
  specs = nnx.to_pure_dict(nnx.get_partition_spec(state))
  shapes = nnx.to_pure_dict(state)
  for path, sh in jax.tree_util.tree_flatten_with_path(shardings)[0]:
    logical = tuple(dict(jax.tree_util.tree_flatten_with_path(specs, is_leaf=lambda s: isinstance(s, P))[0])[path])
    shape = dict(jax.tree_util.tree_flatten_with_path(shapes)[0])[path].shape
    assert sh.spec == sharding.spec_for(logical, shape, RULES, mesh), path
  if sizes == (2, 2, 2):
    assert shardings["encoder"]["down"][1]["block"][0]["conv1"]["kernel"].spec == P(None, None, "fsdp", "model")
    assert shardings["quantizer"]["codebook"].spec == P("model", "fsdp")
  else:
    assert all(s.spec == P(*[None] * len(s.spec)) for s in jax.tree.leaves(shardings))

  tx = optax.adamw(1e-3)
  opt_abstract = jax.eval_shape(tx.init, nnx.to_pure_dict(state))
  opt_sh = sharding.opt_state_shardings(tx, opt_abstract, shardings, mesh)
  assert opt_sh[0].mu["quantizer"]["codebook"] == shardings["quantizer"]["codebook"]
  assert opt_sh[0].nu["decoder"]["conv_out"]["kernel"] == shardings["decoder"]["conv_out"]["kernel"]
  assert opt_sh[0].count.spec == P()



def test_parameters_replicated_against_their_rule_are_named(caplog):
  mesh = sharding.make_mesh((2, 2, 2))
  model = tokenizer_config.get_config("tiny").model
  state = nnx.state(nnx.eval_shape(lambda: Tokenizer(**model, rngs=nnx.Rngs(0))), nnx.Param)
  with caplog.at_level("WARNING"):
    sharding.param_shardings(state, RULES, mesh)
  (warning,) = [r.getMessage() for r in caplog.records if "replicated against" in r.getMessage()]
  # The decoder's last conv has 3 output channels, which a 2-way model axis does not split.
  assert "decoder/conv_out/kernel (conv_out=3 over model=2)" in warning
  assert "encoder/down/1/block/0/conv1" not in warning  # sharded as its rule says
  caplog.clear()
  with caplog.at_level("WARNING"):
    sharding.param_shardings(state, RULES, sharding.make_mesh((8, 1, 1)))  # no axis to shard over
  assert not [r for r in caplog.records if "replicated against" in r.getMessage()]


ACTIVATIONS = (("batch", ("data", "fsdp")), ("batch", "data"), ("heads", "model"), ("mlp", "model"),
               ("channels", "model"), ("vocab", "model"), ("length", None))


def test_ordered_rules_fall_back_in_order():
  mesh = sharding.make_mesh((2, 2, 2))
  assert sharding.spec_for(("batch", "length", "mlp"), (8, 5, 64), ACTIVATIONS, mesh) == \
      P(("data", "fsdp"), None, "model")
  # 6 does not divide by data x fsdp = 4: the next rule for "batch" takes data alone.
  assert sharding.spec_for(("batch", "length", "mlp"), (6, 5, 64), ACTIVATIONS, mesh) == P("data", None, "model")
  misses = []
  assert sharding.spec_for(("batch", "mlp"), (3, 7), ACTIVATIONS, mesh, misses) == P(None, None)
  assert misses == ["batch=3 over data x fsdp=4".replace(" x ", "x"), "mlp=7 over model=2"]


def _constraints(jaxpr):
  """The NamedShardings of every sharding constraint in a jaxpr and the jaxprs nested in it."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "sharding_constraint":
      found.append((eqn.invars[0].aval.shape, eqn.params["sharding"].spec))
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      found += _constraints(sub)
  return found


def test_activations_are_constrained_only_under_the_rules(caplog):
  from progvc_jax.models.transformer import ContextModel
  mesh = sharding.make_mesh((2, 2, 2))
  model = ContextModel(vocab_size=64, latent_dim=8, schedule=(1, 2), width=32, depth=1, heads=4, rngs=nnx.Rngs(0))
  n, L = 8, model.length
  x = jax.ShapeDtypeStruct((n, L - 1, 8), "float32")
  kind = jax.ShapeDtypeStruct((n,), "int32")
  def forward(m, x, t):  # a new function each time: JAX caches traces by function
    return m(x, t)

  assert _constraints(jax.make_jaxpr(forward)(model, x, kind).jaxpr) == []  # the codec's case: no rules
  with sharding.activation_sharding(mesh, ACTIVATIONS), caplog.at_level("WARNING"):
    found = _constraints(jax.make_jaxpr(lambda m, x, t: m(x, t))(model, x, kind).jaxpr)
  batch = ("data", "fsdp")
  assert ((n, L, 4, 8), P(batch, None, "model", None)) in found  # queries, heads over the model axis
  assert ((n, L, 128), P(batch, None, "model")) in found  # MLP hidden units
  assert ((n, L, 32), P(batch, None, None)) in found  # the residual stream at block boundaries
  assert ((n, L, 64), P(batch, None, "model")) in found  # logits, vocabulary over the model axis
  assert not [r for r in caplog.records if "replicated against" in r.getMessage()]
  # Compiled: the MLP's hidden units live on each device as a quarter of the batch and half of the units.
  with sharding.activation_sharding(mesh, ACTIVATIONS):
    text = jax.jit(lambda m, x, t: m(x, t)).lower(model, x, kind).compile().as_text()
  assert f"f32[{n // 4},{L},{128 // 2}]" in text


def test_the_training_step_traces_under_the_config_rules():
  from progvc_jax.trainers import tokenizer as trainer_lib
  from tests.trainers.test_tokenizer_trainer import small_config
  config = small_config()
  mesh = sharding.make_mesh(config.mesh)
  trainer = trainer_lib.Trainer(config, mesh)
  batch = jax.ShapeDtypeStruct((8, 1, 32, 32, 3), "uint8", sharding=sharding.batch_sharding(mesh, 5))
  found = _constraints(trainer.step.trace(trainer.abstract, batch).jaxpr.jaxpr)
  # Encoder levels: 8 crops of 32 x 32 at 8 then 16 channels, batch over data x fsdp, channels over model.
  assert ((8, 32, 32, 8), P(("data", "fsdp"), None, None, "model")) in found
  assert ((8, 16, 16, 16), P(("data", "fsdp"), None, None, "model")) in found
