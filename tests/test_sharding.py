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
