"""Compiles a training step ahead of time for a mesh and reports its memory per device.

  python tools/aot_compile.py --config configs/tokenizer.py:base --devices 8 --mesh 2,2,2
  python tools/aot_compile.py --config configs/context.py:base --devices 8 --mesh 1,4,2

For the context stage the tokenizer's shape comes from --config.tokenizer when
it names a checkpoint, else from the tokenizer config variant of the same name
(--tokenizer_variant to choose another).

With --topology (a Cloud TPU type: v4-32, v5p-64, v5e-16, v6e-64) the step is
compiled for that TPU slice instead, which needs the TPU compiler (libtpu:
`pip install -e ".[tpu]"`) but no TPU. The report then compares the per-chip
peak with the chip's HBM; a step that does not fit is reported, not raised.
--fit searches the largest global batch that fits (a compile per probe):

  python tools/aot_compile.py --config configs/context.py:base --topology v5e-16 --mesh 4,4,1 --fit

On a CPU the devices are simulated (--devices sets XLA's host device count),
so sharding errors and the per-device footprint of a mesh show up before
any accelerator is booked. Nothing is run: the step is lowered against
abstract inputs (shapes and shardings only) and compiled (progvc_jax/aot.py).
--json_out appends every report as a JSON line to a file.
"""

import importlib.util
import json
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from progvc_jax import configs

config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/tokenizer.py:base.")
flags.DEFINE_integer("devices", 8, "Simulated CPU devices (ignored on accelerators).")
flags.DEFINE_string("mesh", None, "Mesh sizes data,fsdp,model (default: the config's).")
flags.DEFINE_integer("batch", 0, "Global batch (default: the config's).")
flags.DEFINE_string("topology", None, "Compile for this Cloud TPU type, e.g. v5e-16 or v4-32.")
flags.DEFINE_string("tokenizer_variant", None, "Context stage: tokenizer variant (default: the config's variant).")
flags.DEFINE_bool("fit", False, "Search the largest global batch whose step fits the TPU's memory.")
flags.DEFINE_string("json_out", None, "Append every report as a JSON line to this file.")
FLAGS = flags.FLAGS


def _gib(n) -> str:
  return f"{n / 2**30:.3f} GiB"


def show(report: dict) -> None:
  """Prints a report as a sentence and a JSON line (and appends it to --json_out)."""
  head = (f"{report['stage']} {report['variant']} step on mesh {report['mesh']} ({report['platform']}), "
          f"global batch {report['batch']} of {report['clip_len']}x{report['crop']}x{report['crop']}: ")
  if "peak_bytes_per_device" not in report:
    print(head + f"does not fit {_gib(report['hbm_bytes_per_device'])} ({report['error']}); "
          f"compile {report['compile_s']} s")
  else:
    hbm = report.get("hbm_bytes_per_device")
    print(head + f"peak about {_gib(report['peak_bytes_per_device'])} per device"
          + (f" of {_gib(hbm)} HBM" if hbm else "")
          + f" (arguments {_gib(report['argument_bytes'])}, temporaries {_gib(report['temp_bytes'])}), "
          f"{report['flops_per_step_per_device'] or 0:.3g} FLOPs per device; "
          f"lower {report['lower_s']} s, compile {report['compile_s']} s")
  print(json.dumps(report), flush=True)
  if FLAGS.json_out:
    with open(FLAGS.json_out, "a") as f:
      f.write(json.dumps(report) + "\n")


def main(argv):
  del argv
  if FLAGS.config is None:
    sys.exit("aot_compile: --config is required")
  if FLAGS.topology and importlib.util.find_spec("libtpu") is None:
    sys.exit('aot_compile: --topology needs the TPU compiler (libtpu): pip install -e ".[tpu]"')
  if FLAGS.fit and not FLAGS.topology:
    sys.exit("aot_compile: --fit needs --topology (simulated CPU devices have no memory limit)")
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + f" --xla_force_host_platform_device_count={FLAGS.devices}")
  if FLAGS.topology:
    # Compile-only: the TPU devices come from the topology, so no TPU runtime starts (the rest runs
    # on the CPU), no cloud metadata is queried, and other processes may load libtpu at the same time.
    for name, value in (("JAX_PLATFORMS", "cpu"), ("TPU_SKIP_MDS_QUERY", "1"), ("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")):
      os.environ.setdefault(name, value)
  from progvc_jax import aot, sharding  # imports jax after XLA_FLAGS, so the simulated device count applies

  config = FLAGS.config
  if FLAGS.mesh:
    config.mesh = tuple(int(s) for s in FLAGS.mesh.split(","))
  if FLAGS.batch:
    config.batch_size = FLAGS.batch
  try:
    devices, hbm = aot.tpu_topology(FLAGS.topology) if FLAGS.topology else (None, None)
    mesh = sharding.make_mesh(config.mesh, devices=devices)
    aot.build(config, mesh, FLAGS.tokenizer_variant)  # configuration errors before any compile
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"aot_compile: {e}")

  def compile_at(batch: int) -> dict:
    config.batch_size = batch
    report = aot.compile_step(config, mesh, hbm, FLAGS.tokenizer_variant)
    show(report)
    return report

  if FLAGS.fit:
    best = aot.largest_batch(lambda b: compile_at(b).get("peak_bytes_per_device"),
                             mesh.shape["data"] * mesh.shape["fsdp"], config.batch_size, hbm)
    print(f"largest global batch of {config.stage} {config.variant} that fits {FLAGS.topology} "
          f"on mesh {dict(mesh.shape)}: {best}")
  else:
    compile_at(config.batch_size)


if __name__ == "__main__":
  app.run(main, argv=configs.resolve_argv(sys.argv))
