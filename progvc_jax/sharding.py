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


def spec_for(logical: Sequence[str | None], shape: Sequence[int], rules: dict[str, Any],
             mesh: Mesh, replicated_against_rule: list | None = None) -> P:
  """The mesh PartitionSpec of one array from its logical axis names.

  replicated_against_rule: where given, gets "name=size over axes" for each
  dimension whose rule names mesh axes that its size does not divide.
  """
  used, out = set(), []
  for name, size in zip(logical, shape):
    axis = rules.get(name) if name is not None else None
    axes = () if axis is None else ((axis,) if isinstance(axis, str) else tuple(axis))
    axes = tuple(a for a in axes if a not in used and mesh.shape[a] > 1)
    ways = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
    if not axes or size % ways:
      if axes and replicated_against_rule is not None:
        replicated_against_rule.append(f"{name}={size} over {'x'.join(axes)}={ways}")
      out.append(None)
      continue
    used.update(axes)
    out.append(axes[0] if len(axes) == 1 else axes)
  return P(*out)


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
