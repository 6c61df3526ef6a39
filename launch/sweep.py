"""Expands a config file's sweep into concrete training commands.

  python launch/sweep.py --config configs/tokenizer.py:base --workdir gs://bucket/sweep [--out runs.sh]

The config file defines `get_sweep(add)`, which calls `add(**overrides)` once
per run, with dotted config keys (`add(**{"optimizer.lr": 1e-4})`). Each run
gets its own workdir named after its overrides. The commands are printed, or
written to --out as a shell script, one run a line.
"""

import importlib.util
import os
import shlex
import sys

from absl import app, flags

flags.DEFINE_string("config", None, "Config file and argument, e.g. configs/tokenizer.py:base.", required=True)
flags.DEFINE_string("workdir", None, "Parent folder of the runs' workdirs.", required=True)
flags.DEFINE_string("out", None, "Write the commands to this file instead of printing them.")
FLAGS = flags.FLAGS


def load_sweep(config_path: str):
  spec = importlib.util.spec_from_file_location("sweep_config", config_path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_sweep"):
    raise ValueError(f"{config_path} defines no get_sweep(add)")
  runs = []
  module.get_sweep(lambda **overrides: runs.append(overrides))
  return runs


def run_name(overrides: dict) -> str:
  return ",".join(f"{k.split('.')[-1]}={v}" for k, v in sorted(overrides.items())) or "default"


def commands(config: str, workdir: str) -> list[str]:
  path = config.split(":", 1)[0]
  if not os.path.exists(path):
    raise FileNotFoundError(f"config file {path} not found")
  out = []
  for overrides in load_sweep(path):
    args = ["python", "-m", "progvc_jax.train", f"--config={config}",
            f"--workdir={workdir.rstrip('/')}/{run_name(overrides)}"]
    args += [f"--config.{k}={v}" for k, v in sorted(overrides.items())]
    out.append(shlex.join(args))
  return out


def main(argv):
  del argv
  try:
    lines = commands(FLAGS.config, FLAGS.workdir)
  except (OSError, ValueError) as e:
    sys.exit(f"sweep: {e}")
  if FLAGS.out:
    with open(FLAGS.out, "w") as f:
      f.write("#!/usr/bin/env bash\nset -e\n" + "\n".join(lines) + "\n")
    print(f"wrote {len(lines)} runs to {FLAGS.out}")
  else:
    print("\n".join(lines))


if __name__ == "__main__":
  app.run(main)
