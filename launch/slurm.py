"""Writes (and submits) a SLURM batch script for a multi-node GPU training run.

  python launch/slurm.py --nodes 4 --gpus_per_node 8 --config configs/tokenizer.py:large \
      --workdir /shared/runs/tok [--partition gpu] [--time 24:00:00] [--dry_run] [-- --config.optimizer.lr=1e-4]

One task per GPU: `srun` starts nodes x gpus_per_node copies of
`python -m progvc_jax.train --multihost=on`, and JAX reads the coordinator,
process id and local GPU of each from SLURM's environment. The workdir must
be on a file system all nodes share. SLURM sends SIGTERM two minutes before
the time limit (or on preemption), the trainer saves a checkpoint and exits,
and the requeued or resubmitted job resumes from it. The script is written to --script and
submitted with sbatch; --dry_run prints it instead.
"""

import shlex
import subprocess
import sys

from absl import app, flags

flags.DEFINE_integer("nodes", 1, "Nodes.")
flags.DEFINE_integer("gpus_per_node", 8, "GPUs on each node (one process each).")
flags.DEFINE_string("config", None, "Config file and argument, e.g. configs/tokenizer.py:large.", required=True)
flags.DEFINE_string("workdir", None, "Shared run folder.", required=True)
flags.DEFINE_string("job_name", "progvc", "SLURM job name.")
flags.DEFINE_string("partition", None, "SLURM partition (default: the cluster's).")
flags.DEFINE_string("time", "24:00:00", "Time limit.")
flags.DEFINE_string("script", "progvc.sbatch", "Where to write the batch script.")
flags.DEFINE_bool("dry_run", False, "Print the script instead of writing and submitting it.")
FLAGS = flags.FLAGS

TEMPLATE = """#!/bin/bash
#SBATCH --job-name={job_name}
#SBATCH --nodes={nodes}
#SBATCH --ntasks-per-node={gpus_per_node}
#SBATCH --gpus-per-node={gpus_per_node}
#SBATCH --cpus-per-task=8
#SBATCH --time={time}
#SBATCH --signal=TERM@120
#SBATCH --requeue
#SBATCH --output={job_name}-%j.out
{partition}
srun {train}
"""


def script(nodes: int, gpus_per_node: int, config: str, workdir: str, job_name: str, partition: str | None,
           time: str, extra: list[str]) -> str:
  train = shlex.join(["python", "-m", "progvc_jax.train", "--multihost=on", f"--config={config}",
                      f"--workdir={workdir}", *extra])
  return TEMPLATE.format(job_name=job_name, nodes=nodes, gpus_per_node=gpus_per_node, time=time,
                         partition=f"#SBATCH --partition={partition}" if partition else "", train=train)


def main(argv):
  text = script(FLAGS.nodes, FLAGS.gpus_per_node, FLAGS.config, FLAGS.workdir, FLAGS.job_name, FLAGS.partition,
                FLAGS.time, argv[1:])
  if FLAGS.dry_run:
    print(text, end="")
    return
  with open(FLAGS.script, "w") as f:
    f.write(text)
  sys.exit(subprocess.run(["sbatch", FLAGS.script]).returncode)


if __name__ == "__main__":
  app.run(main)
