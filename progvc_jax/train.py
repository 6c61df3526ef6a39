"""Training entry point: `python -m progvc_jax.train --config configs/tokenizer.py:tiny --workdir DIR`
(or configs/context.py:tiny with `--config.tokenizer=TOKENIZER_WORKDIR`).

`configs/tokenizer.py` and `configs/context.py` are found in any directory: a
path with no file behind it names the config packaged in progvc_jax/configs.

Parses flags and hands over to the trainer of the config's stage. Rerunning
with the same workdir resumes from its latest checkpoint; on SIGTERM the run
saves a checkpoint at the next step boundary and exits with status 0.

Multi-host: every host runs this same command and JAX's multi-controller
runtime joins them (`jax.distributed.initialize`) into one set of global
devices, one mesh and one global batch, each host feeding its own shard.
--multihost=on joins with the --coordinator/--num_processes/--process_id
flags where given, the rest auto-detected by JAX (Cloud TPU pods, SLURM,
Open MPI, JAX_COORDINATOR_ADDRESS). --multihost=auto (the default) joins
only when one of those flags is given, JAX_COORDINATOR_ADDRESS is set, or
SLURM runs this as one of several tasks; --multihost=off never joins.
Only process 0 logs below warnings and writes summaries.
"""

import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from progvc_jax import configs
from progvc_jax.trainers import context as context_trainer
from progvc_jax.trainers import tokenizer as tokenizer_trainer

TRAINERS = {"tokenizer": tokenizer_trainer, "context": context_trainer}

config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/tokenizer.py:tiny.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints and summaries go.", required=True)
flags.DEFINE_integer("stop_at", None, "End this run after that step with a checkpoint (a time-boxed job).")
flags.DEFINE_enum("multihost", "auto", ["auto", "on", "off"], "Join JAX's multi-process runtime (see above).")
flags.DEFINE_string("coordinator", None, "host:port of process 0, which every process connects to.")
flags.DEFINE_integer("num_processes", None, "Number of processes in the run.")
flags.DEFINE_integer("process_id", None, "This process's index, 0 .. num_processes - 1.")
FLAGS = flags.FLAGS


def multihost_requested(mode: str, explicit: bool, environ=os.environ) -> bool:
  """Whether to call jax.distributed.initialize (see the module docstring)."""
  if mode != "auto":
    return mode == "on"
  slurm_tasks = int(environ.get("SLURM_STEP_NUM_TASKS", environ.get("SLURM_NTASKS", "1")))
  return explicit or "JAX_COORDINATOR_ADDRESS" in environ or ("SLURM_PROCID" in environ and slurm_tasks > 1)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # Before anything else touches jax: the runtime must know all processes
  # before it creates its devices.
  explicit = (FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id) != (None, None, None)
  if multihost_requested(FLAGS.multihost, explicit):
    jax.distributed.initialize(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id)
  if jax.process_index() > 0:
    logging.set_verbosity(logging.WARNING)
  config = FLAGS.config
  if config is None:
    sys.exit("train: --config is required, e.g. --config configs/tokenizer.py:tiny")
  if config.stage not in TRAINERS:
    sys.exit(f"train: unknown stage {config.stage!r}; choose from {sorted(TRAINERS)}")
  logging.info("config:\n%s", config)
  logging.info("%d devices (%s), process %d of %d", jax.device_count(), jax.devices()[0].platform,
               jax.process_index(), jax.process_count())
  TRAINERS[config.stage].train_and_evaluate(config, FLAGS.workdir, stop_at=FLAGS.stop_at)


if __name__ == "__main__":
  app.run(main, argv=configs.resolve_argv(sys.argv))
