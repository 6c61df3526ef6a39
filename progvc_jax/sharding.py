"""Meshes and shardings from the config: logical axis names -> mesh axes.

The mesh has three axes: `data` (pure data parallelism), `fsdp` (data
parallelism with parameters and optimizer state sharded across it) and
`model` (tensor parallelism). The config gives their sizes (one may be -1: it
takes the remaining devices) and the rules that map each logical axis name a
parameter carries (conv_out, embed, mlp, ...) to a mesh axis.

A dimension is sharded only when its size divides by the mesh axis; otherwise
it stays replicated (a 3-channel output conv on a 2-way model axis, say), so
any model fits any mesh, and `param_shardings` logs a warning that names
every parameter replicated against its rule. Each mesh axis is used at most
once per array.
"""

import contextlib
import threading
from typing import Any, Sequence

import jax
import numpy as np
import optax
from absl import logging
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp", "model")
BATCH = ("data", "fsdp")  # the batch dimension is split over both data-parallel axes


def mesh_shape(sizes: Sequence[int], num_devices: int) -> tuple[int, ...]:
  """Fills in a -1 so the sizes multiply to num_devices."""
  sizes = [int(s) for s in sizes]
  if len(sizes) != len(AXES):
    raise ValueError(f"mesh needs sizes for {AXES}, got {sizes}")
  if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"mesh sizes {sizes}: each must be positive, at most one -1")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if num_devices % known:
      raise ValueError(f"mesh {dict(zip(AXES, sizes))} does not divide {num_devices} devices")
    sizes[sizes.index(-1)] = num_devices // known
  if int(np.prod(sizes)) != num_devices:
    raise ValueError(f"mesh {dict(zip(AXES, sizes))} needs {int(np.prod(sizes))} devices, "
                     f"there are {num_devices}")
  return tuple(sizes)


def make_mesh(sizes: Sequence[int], devices=None, dcn: Sequence[int] | None = None) -> Mesh:
  """A (data, fsdp, model) mesh over `devices` (all devices by default).

  `sizes` is the whole mesh; `dcn` (default all 1) says how many ways each
  axis is split across slices, which talk over the data-centre network (DCN)
  rather than the chips' own interconnect (ICI). Each slice then holds an
  ICI block of sizes / dcn, laid out by `mesh_utils.create_hybrid_device_mesh`
  so that only the DCN-split axes (typically `data`: one gradient all-reduce a
  step) cross slices while fsdp and model stay on fast links. Where the
  devices tell no slices apart (CPU and GPU processes), each process is a slice.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(sizes, len(devices))
  dcn = (1,) * len(AXES) if dcn is None else tuple(int(d) for d in dcn)
  if len(dcn) != len(AXES) or any(d < 1 or s % d for s, d in zip(shape, dcn)):
    raise ValueError(f"mesh_dcn {dcn} must be positive and divide the mesh {dict(zip(AXES, shape))}")
  types = (AxisType.Auto,) * len(AXES)
  if all(d == 1 for d in dcn):
    return jax.make_mesh(shape, AXES, axis_types=types, devices=devices)
  ici = tuple(s // d for s, d in zip(shape, dcn))
  one_slice = len({getattr(d, "slice_index", 0) for d in devices}) == 1
  grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices, process_is_granule=one_slice)
  return Mesh(grid, AXES, axis_types=types)


def _choices(rules, name: str | None) -> list[tuple[str, ...]]:
  """The mesh axes a logical name may take, in order of preference.

  `rules` is a dict (name -> axis, axes or None) or an ordered list of
  (name, axis | axes | None) pairs as in MaxText's logical_axis_rules, where
  later pairs for the same name are fallbacks.
  """
  if name is None:
    return []
  pairs = rules.items() if isinstance(rules, dict) else rules
  return [() if a is None else ((a,) if isinstance(a, str) else tuple(a)) for n, a in pairs if n == name]


def spec_for(logical: Sequence[str | None], shape: Sequence[int], rules, mesh: Mesh,
             replicated_against_rule: list | None = None) -> P:
  """The mesh PartitionSpec of one array from its logical axis names.

  Each dimension takes the first of its name's rules whose mesh axes are not
  yet used by this array and divide its size (axes of size 1 are dropped).
  replicated_against_rule: where given, gets "name=size over axes" for each
  dimension that a rule would shard but whose size none of them divides.
  """
  used, out = set(), []
  for name, size in zip(logical, shape):
    chosen, missed = None, None
    for axes in _choices(rules, name):
      axes = tuple(a for a in axes if a not in used and mesh.shape[a] > 1)
      if not axes:
        continue
      ways = int(np.prod([mesh.shape[a] for a in axes]))
      if size % ways == 0:
        chosen = axes
        break
      missed = missed or f"{name}={size} over {'x'.join(axes)}={ways}"
    if chosen is None:
      if missed and replicated_against_rule is not None:
        replicated_against_rule.append(missed)
      out.append(None)
      continue
    used.update(chosen)
    out.append(chosen[0] if len(chosen) == 1 else chosen)
  return P(*out)


# Activation sharding: the models name their activations' axes at block
# boundaries (`constrain`); a trainer turns the names into sharding
# constraints by tracing its step inside `activation_sharding(mesh, rules)`.
# Outside it (the codec, tests of the models) `constrain` does nothing.
_ACTIVE = threading.local()


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules):
  """While active, `constrain` pins activations to the mesh by the ordered `rules`."""
  previous = getattr(_ACTIVE, "value", None)
  _ACTIVE.value = (mesh, tuple((n, tuple(a) if isinstance(a, list) else a) for n, a in rules), set())
  try:
    yield
  finally:
    _ACTIVE.value = previous


def constrain(x: jax.Array, *logical: str | None) -> jax.Array:
  """Names x's axes (batch, length, embed, mlp, heads, spatial, channels, vocab, ...) for sharding.

  Under `activation_sharding` this is a sharding constraint with the spec the
  rules give; a dimension replicated against its rule is logged once. Elsewhere, x.
  """
  active = getattr(_ACTIVE, "value", None)
  if active is None:
    return x
  if len(logical) != x.ndim:
    raise ValueError(f"constrain: {len(logical)} names {logical} for an array of shape {x.shape}")
  mesh, rules, warned = active
  misses = []
  spec = spec_for(logical, x.shape, rules, mesh, misses)
  key = (logical, tuple(x.shape))
  if misses and key not in warned:
    warned.add(key)
    logging.warning("activation %s of shape %s replicated against its sharding rule: %s", logical, tuple(x.shape),
                    "; ".join(misses))
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def param_shardings(abstract_state: nnx.State, rules: dict[str, Any], mesh: Mesh) -> dict:
  """NamedShardings (as a pure dict, like the params) for an NNX parameter state.

  Logs one warning naming each parameter dimension left replicated because
  its size does not divide the mesh axes its rule names.
  """
  logical = nnx.to_pure_dict(nnx.get_partition_spec(abstract_state))
  shapes = nnx.to_pure_dict(abstract_state)
  against = []

  def sharding_of(path, spec, x):
    misses = []
    out = NamedSharding(mesh, spec_for(tuple(spec), x.shape, rules, mesh, misses))
    against.extend(f"{jax.tree_util.keystr(path, simple=True, separator='/')} ({m})" for m in misses)
    return out

  shardings = jax.tree_util.tree_map_with_path(sharding_of, logical, shapes, is_leaf=lambda s: isinstance(s, P))
  if against:
    logging.warning("%d parameter dimension(s) replicated against their sharding rule on mesh %s, as their "
                    "size does not divide: %s", len(against), dict(mesh.shape), "; ".join(against))
  return shardings


def opt_state_shardings(optimizer: optax.GradientTransformation, abstract_opt_state,
                        params_shardings: dict, mesh: Mesh):
  """Optimizer state shards like the parameters it mirrors; counters are replicated."""
  replicated = NamedSharding(mesh, P())
  return optax.tree_map_params(
      optimizer, lambda _, s: s, abstract_opt_state, params_shardings,
      transform_non_params=lambda _: replicated,
      is_leaf=lambda x: isinstance(x, NamedSharding))


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  """Shards the leading (batch) dimension over the data-parallel axes."""
  return NamedSharding(mesh, P(BATCH, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())
