"""Runs a multi-process training job on this machine: N CPU processes on 127.0.0.1.

  python launch/local.py --num_processes 2 --devices_per_process 4 -- \
      --config configs/tokenizer.py:tiny,runlocal --workdir /tmp/run --config.mesh='(2,4,1)'

Each process simulates --devices_per_process CPU devices and joins the others
through JAX's multi-controller runtime (process 0 coordinates, collectives run
over gloo), so the multi-host code paths - one global mesh, per-process input
shards, checkpoints written by every process - can be tried without a cluster.
The arguments after `--` go to `python -m progvc_jax.train`. Waits for all
processes and exits with the first non-zero status among them (0 if none);
SIGTERM and SIGINT are passed on to them. --dry_run prints the commands.
"""

import os
import shlex
import signal
import subprocess
import sys

from absl import app, flags

flags.DEFINE_integer("num_processes", 2, "Processes to start.")
flags.DEFINE_integer("devices_per_process", 4, "Simulated CPU devices in each process.")
flags.DEFINE_integer("port", 12355, "Coordinator port on 127.0.0.1.")
flags.DEFINE_bool("dry_run", False, "Print the commands instead of running them.")
FLAGS = flags.FLAGS


def process_env(devices: int, base=os.environ) -> dict[str, str]:
  """The environment of one process: CPU only, `devices` simulated devices, gloo collectives."""
  xla = [f for f in base.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
  return dict(XLA_FLAGS=" ".join([*xla, f"--xla_force_host_platform_device_count={devices}"]),
              JAX_PLATFORMS="cpu", JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo")


def commands(num_processes: int, devices: int, port: int, train_args: list[str]) -> list[tuple[dict, list[str]]]:
  """(environment additions, argv) of each process."""
  env = process_env(devices)
  return [(env, [sys.executable, "-m", "progvc_jax.train", "--multihost=on", f"--coordinator=127.0.0.1:{port}",
                 f"--num_processes={num_processes}", f"--process_id={i}", *train_args])
          for i in range(num_processes)]


def run(cmds: list[tuple[dict, list[str]]]) -> int:
  procs = [subprocess.Popen(argv, env={**os.environ, **env}) for env, argv in cmds]

  def forward(signum, frame):
    del frame
    for p in procs:
      if p.poll() is None:
        p.send_signal(signum)

  signal.signal(signal.SIGTERM, forward)
  signal.signal(signal.SIGINT, forward)
  codes = [p.wait() for p in procs]
  return next((c for c in codes if c != 0), 0)


def main(argv):
  cmds = commands(FLAGS.num_processes, FLAGS.devices_per_process, FLAGS.port, argv[1:])
  if FLAGS.dry_run:
    for env, args in cmds:
      print(shlex.join([f"{k}={v}" for k, v in env.items()] + args))
    return
  sys.exit(run(cmds))


if __name__ == "__main__":
  app.run(main)
