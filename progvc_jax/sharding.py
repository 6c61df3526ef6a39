"""Meshes and shardings from the config: logical axis names -> mesh axes.

The mesh has three axes: `data` (pure data parallelism), `fsdp` (data
parallelism with parameters and optimizer state sharded across it) and
`model` (tensor parallelism). The config gives their sizes (one may be -1: it
takes the remaining devices) and the rules that map each logical axis name a
parameter carries (conv_out, embed, mlp, ...) to a mesh axis.

A dimension is sharded only when its size divides by the mesh axis; otherwise
it stays replicated (a 3-channel output conv on a 2-way model axis, say), so
any model fits any mesh. Each mesh axis is used at most once per array.
"""

from typing import Any, Sequence

import jax
import numpy as np
import optax
from flax import nnx
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


def make_mesh(sizes: Sequence[int], devices=None) -> Mesh:
  """A (data, fsdp, model) mesh over `devices` (all devices by default)."""
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(sizes, len(devices))
  return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES), devices=devices)


def spec_for(logical: Sequence[str | None], shape: Sequence[int], rules: dict[str, Any],
             mesh: Mesh) -> P:
  """The mesh PartitionSpec of one array from its logical axis names."""
  used, out = set(), []
  for name, size in zip(logical, shape):
    axis = rules.get(name) if name is not None else None
    axes = () if axis is None else ((axis,) if isinstance(axis, str) else tuple(axis))
    axes = tuple(a for a in axes if a not in used and mesh.shape[a] > 1)
    ways = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
    if not axes or size % ways:
      out.append(None)
      continue
    used.update(axes)
    out.append(axes[0] if len(axes) == 1 else axes)
  return P(*out)


def param_shardings(abstract_state: nnx.State, rules: dict[str, Any], mesh: Mesh) -> dict:
  """NamedShardings (as a pure dict, like the params) for an NNX parameter state."""
  logical = nnx.to_pure_dict(nnx.get_partition_spec(abstract_state))
  shapes = nnx.to_pure_dict(abstract_state)
  return jax.tree.map(
      lambda spec, x: NamedSharding(mesh, spec_for(tuple(spec), x.shape, rules, mesh)),
      logical, shapes, is_leaf=lambda s: isinstance(s, P))


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
