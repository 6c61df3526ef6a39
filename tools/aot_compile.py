"""Compiles a training step ahead of time for a mesh and reports its memory per device.

  python tools/aot_compile.py --config configs/tokenizer.py:base --devices 8 --mesh 2,2,2
  python tools/aot_compile.py --config configs/context.py:base --devices 8 --mesh 1,4,2

For the context stage the tokenizer's shape comes from --config.tokenizer when
it names a checkpoint, else from the tokenizer config variant of the same name
(--tokenizer_variant to choose another).

With --topology (a Cloud TPU type: v4-32, v5p-64, v5e-16, v6e-64) the step is
compiled for that TPU slice instead, which needs the TPU compiler (libtpu,
`pip install 'jax[tpu]'`) but no TPU.

On a CPU the devices are simulated (--devices sets XLA's host device count),
so sharding errors and the per-device footprint of a mesh show up before
any accelerator is booked. Nothing is run: the step is lowered against
abstract inputs (shapes and shardings only) and compiled.
"""

import importlib.util
import json
import os
import sys

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from progvc_jax import configs

config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/tokenizer.py:base.")
flags.DEFINE_integer("devices", 8, "Simulated CPU devices (ignored on accelerators).")
flags.DEFINE_string("mesh", None, "Mesh sizes data,fsdp,model (default: the config's).")
flags.DEFINE_integer("batch", 0, "Global batch (default: the config's).")
flags.DEFINE_string("topology", None, "Compile for this Cloud TPU type, e.g. v5e-16 or v4-32.")
flags.DEFINE_string("tokenizer_variant", None, "Context stage: tokenizer variant (default: the config's variant).")
FLAGS = flags.FLAGS


def _gib(n) -> str:
  return f"{n / 2**30:.3f} GiB"


# Generation -> (TensorCores per chip in the type's name, torus dimensions, chip config).
TPU_GENERATIONS = {"v4": (2, 3, "megacore"), "v5p": (2, 3, "megacore"), "v5e": (1, 2, "default"),
                   "v5litepod": (1, 2, "default"), "v6e": (1, 2, "default")}


def tpu_topology(name: str):
  """Compile-only devices of a Cloud TPU type such as v5e-16 (libtpu's topology description)."""
  gen, _, count = name.partition("-")
  if gen not in TPU_GENERATIONS or not count.isdigit():
    raise ValueError(f"unknown TPU type {name!r}; e.g. {', '.join(g + '-16' for g in TPU_GENERATIONS)}")
  cores, dims, chip_config = TPU_GENERATIONS[gen]
  chips = int(count) // cores
  if chips < 1 or chips & (chips - 1):
    raise ValueError(f"TPU type {name!r}: expected a power-of-two number of chips")
  shape = [1] * dims
  while int(np.prod(shape)) < chips:  # the most cube-like torus, as Cloud TPU lays slices out
    shape[shape.index(min(shape))] *= 2
  from jax.experimental import topologies

  topo = topologies.get_topology_desc(
      f"{'v5e' if gen == 'v5litepod' else gen}:{'x'.join(map(str, sorted(shape)))}", "tpu",
      chip_config_name=chip_config, chips_per_host_bounds=(2, 2, 1), num_slices=1)
  return topo.devices


def main(argv):
  del argv
  if FLAGS.config is None:
    sys.exit("aot_compile: --config is required")
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + f" --xla_force_host_platform_device_count={FLAGS.devices}")
  import jax  # after XLA_FLAGS, so the simulated device count applies

  from progvc_jax import checkpointing, sharding
  from progvc_jax.configs import tokenizer as tokenizer_config
  from progvc_jax.trainers import context, tokenizer

  config = FLAGS.config
  if FLAGS.mesh:
    config.mesh = tuple(int(s) for s in FLAGS.mesh.split(","))
  if FLAGS.batch:
    config.batch_size = FLAGS.batch
  if FLAGS.topology and importlib.util.find_spec("libtpu") is None:
    sys.exit("aot_compile: --topology needs the TPU compiler (libtpu): pip install 'jax[tpu]'")
  try:
    mesh = sharding.make_mesh(config.mesh, devices=tpu_topology(FLAGS.topology) if FLAGS.topology else None)
    if config.stage == "context":
      if config.tokenizer:
        tok_args = checkpointing.load_model_args(config.tokenizer, "tokenizer")
      else:
        tok_args = dict(tokenizer_config.get_config(FLAGS.tokenizer_variant or config.variant).model)
      trainer = context.Trainer(config, mesh, tok_args)
      frozen = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            trainer.tok_abstract, trainer.tok_shardings)
      inputs = (trainer.abstract, frozen)
    else:
      trainer = tokenizer.Trainer(config, mesh)
      inputs = (trainer.abstract,)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"aot_compile: {e}")
  crop, t = config.data.crop, config.data.clip_len
  batch = jax.ShapeDtypeStruct((config.batch_size, t, crop, crop, 3), jax.numpy.uint8,
                               sharding=sharding.batch_sharding(mesh, 5))
  compiled = trainer.step.lower(*inputs, batch).compile()
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  report = dict(
      mesh=dict(mesh.shape), platform=mesh.devices.flat[0].platform, batch=config.batch_size, crop=crop,
      flops_per_step_per_device=float(cost.get("flops", 0.0)) if cost else None,
      argument_bytes=mem.argument_size_in_bytes, output_bytes=mem.output_size_in_bytes,
      temp_bytes=mem.temp_size_in_bytes, alias_bytes=mem.alias_size_in_bytes,
      generated_code_bytes=mem.generated_code_size_in_bytes)
  peak = mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes - mem.alias_size_in_bytes
  report["peak_bytes_per_device"] = peak
  print(f"compiled the {config.stage} step on mesh {dict(mesh.shape)} ({report['platform']}), "
        f"global batch {config.batch_size} of {t}x{crop}x{crop}")
  print(f"  per device: arguments {_gib(mem.argument_size_in_bytes)}, temporaries {_gib(mem.temp_size_in_bytes)}, "
        f"peak about {_gib(peak)}")
  print(json.dumps(report))


if __name__ == "__main__":
  app.run(main, argv=configs.resolve_argv(sys.argv))
