"""Starts a training run on every worker of a Cloud TPU pod slice.

  python launch/tpu_pod.py --name my-v5e-16 --zone us-west4-a \
      --config configs/tokenizer.py:base --workdir gs://bucket/runs/tok [--dry_run] [-- --config.optimizer.lr=1e-4]

Runs `python -m progvc_jax.train --multihost=on` on all workers at once
through `gcloud compute tpus tpu-vm ssh --worker=all`; JAX finds the pod's
coordinator and process ids itself. Each worker needs the project checked out
at --remote_dir; the workdir must be shared (a gs:// bucket). Arguments
after `--` go to the trainer. --dry_run prints the gcloud command.
"""

import shlex
import subprocess
import sys

from absl import app, flags

flags.DEFINE_string("name", None, "TPU VM name.", required=True)
flags.DEFINE_string("zone", None, "Its zone.", required=True)
flags.DEFINE_string("project", None, "Google Cloud project (default: gcloud's).")
flags.DEFINE_string("config", None, "Config file and argument, e.g. configs/tokenizer.py:base.", required=True)
flags.DEFINE_string("workdir", None, "Shared run folder, e.g. gs://bucket/runs/tok.", required=True)
flags.DEFINE_string("remote_dir", "progvc", "The project checkout on each worker (relative to the home folder).")
flags.DEFINE_bool("dry_run", False, "Print the command instead of running it.")
FLAGS = flags.FLAGS


def command(name: str, zone: str, project: str | None, config: str, workdir: str, remote_dir: str,
            extra: list[str]) -> list[str]:
  train = shlex.join(["python3", "-m", "progvc_jax.train", "--multihost=on", f"--config={config}",
                      f"--workdir={workdir}", *extra])
  argv = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", name, "--zone", zone, "--worker=all"]
  if project:
    argv += ["--project", project]
  return argv + ["--command", f"cd {shlex.quote(remote_dir)} && {train}"]


def main(argv):
  cmd = command(FLAGS.name, FLAGS.zone, FLAGS.project, FLAGS.config, FLAGS.workdir, FLAGS.remote_dir, argv[1:])
  if FLAGS.dry_run:
    print(shlex.join(cmd))
    return
  sys.exit(subprocess.run(cmd).returncode)


if __name__ == "__main__":
  app.run(main)
