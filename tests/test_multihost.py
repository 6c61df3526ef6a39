"""Multi-host training on CPU processes: two processes match one, preemption saves and resumes, launchers."""

import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from progvc_jax import checkpointing, sharding
from progvc_jax.train import multihost_requested
from progvc_jax.trainers import tokenizer as trainer_lib
from tests.trainers.test_tokenizer_trainer import SMALL, small_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Every run shares one schedule (total_steps) and mesh, so the single-process
# runs compile the step once; --stop_at ends each where the test needs.
RUN = {**SMALL, "total_steps": 100, "mesh": (2, 4, 1), "log_every": 1, "eval_every": 1000, "ckpt_every": 1000}
FLAGS = ["--config", os.path.join(ROOT, "configs", "tokenizer.py") + ":tiny,runlocal",
         *(f"--config.{k}={v}" for k, v in RUN.items())]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def start(workdir, *extra, two_processes=False, log=None):
  args = ["--workdir", str(workdir), *FLAGS, *extra]
  env = dict(os.environ)
  if two_processes:
    argv = [sys.executable, os.path.join(ROOT, "launch", "local.py"), "--num_processes=2",
            "--devices_per_process=4", f"--port={free_port()}", "--", *args]
    # Both processes compile: when one loads the step from the disk cache and
    # the other compiles it, the first waits past gloo's 30 s set-up deadline.
    env["JAX_ENABLE_COMPILATION_CACHE"] = "false"
  else:
    argv = [sys.executable, "-m", "progvc_jax.train", *args]
  return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log or subprocess.PIPE,
                          text=True)


def finish(proc) -> str:
  _, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-3000:]
  return err


def restored(workdir, step):
  trainer = trainer_lib.Trainer(small_config(**RUN), sharding.make_mesh(RUN["mesh"]))
  manager = checkpointing.train_manager(str(workdir), 3)
  return jax.device_get(checkpointing.restore_train(manager, trainer.abstract, None, step=step))


def assert_close(a, b, noisy_steps=1):
  # The two runs see the same examples in another order, so sums round
  # differently; Adam can turn that noise into up to a step (lr) per element,
  # so `noisy_steps` steps of drift are allowed.
  assert int(a["step"]) == int(b["step"])
  for x, y in zip(jax.tree.leaves(a["params"]), jax.tree.leaves(b["params"])):
    np.testing.assert_allclose(x, y, atol=noisy_steps * RUN["optimizer.lr"], rtol=0)


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
  err_two = finish(start(tmp_path / "two", "--stop_at=4", "--config.mesh_dcn=(2, 1, 1)", two_processes=True))
  assert "process 0 of 2" in err_two and "process 1 of 2" not in err_two  # only process 0 logs
  assert len(re.findall(r"step 4/100", err_two)) == 1
  # One process, uninterrupted, checkpoints steps 4 and 5.
  finish(start(tmp_path / "one", "--stop_at=5", "--config.ckpt_every=4"))
  assert sorted(os.listdir(tmp_path / "one" / "checkpoints"), key=int) == ["4", "5"]
  # One process restores the two-process checkpoint onto its own mesh ...
  assert_close(restored(tmp_path / "two", 4), restored(tmp_path / "one", 4))
  # ... and trains on from it, at the same place in the data.
  err = finish(start(tmp_path / "two", "--stop_at=5"))
  assert "starting at step 4 of 100" in err
  assert_close(restored(tmp_path / "two", 5), restored(tmp_path / "one", 5), noisy_steps=2)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_the_next_run_resumes(tmp_path):
  log_path = tmp_path / "log"
  with open(log_path, "w") as log:
    proc = start(tmp_path / "run", log=log)
    deadline = time.time() + 300
    while not re.search(r"step \d+/100", log_path.read_text()):
      assert proc.poll() is None and time.time() < deadline, log_path.read_text()[-3000:]
      time.sleep(0.5)
    logged = int(re.search(r"step (\d+)/100", log_path.read_text()).group(1))
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0, log_path.read_text()[-3000:]
  saved = int(re.search(r"preempted: saved step (\d+)", log_path.read_text()).group(1))
  assert logged <= saved < 100
  assert os.listdir(tmp_path / "run" / "checkpoints") == [str(saved)]
  err = finish(start(tmp_path / "run", f"--stop_at={saved + 1}"))
  assert f"starting at step {saved} of 100" in err
  assert sorted(os.listdir(tmp_path / "run" / "checkpoints"), key=int)[-1] == str(saved + 1)


def test_multihost_flag():
  assert not multihost_requested("auto", False, {})
  assert multihost_requested("auto", True, {})
  assert multihost_requested("auto", False, {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"})
  assert multihost_requested("auto", False, {"SLURM_PROCID": "0", "SLURM_NTASKS": "8"})
  assert not multihost_requested("auto", False, {"SLURM_PROCID": "0", "SLURM_NTASKS": "1"})
  assert multihost_requested("on", False, {}) and not multihost_requested("off", True, {})


def launcher(name, *args) -> str:
  run = subprocess.run([sys.executable, os.path.join(ROOT, "launch", name), "--dry_run", *args],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
  assert run.returncode == 0, run.stderr
  return run.stdout


def test_launcher_dry_runs():
  out = launcher("local.py", "--num_processes=2", "--devices_per_process=4", "--port=23456", "--",
                 "--config=configs/tokenizer.py:tiny", "--workdir=/tmp/w")
  lines = out.splitlines()
  assert len(lines) == 2
  for i, line in enumerate(lines):
    assert "XLA_FLAGS=--xla_force_host_platform_device_count=4" in line
    assert "JAX_PLATFORMS=cpu" in line and "JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo" in line
    assert line.endswith(f"-m progvc_jax.train --multihost=on --coordinator=127.0.0.1:23456 --num_processes=2 "
                         f"--process_id={i} --config=configs/tokenizer.py:tiny --workdir=/tmp/w")

  out = launcher("tpu_pod.py", "--name=pod", "--zone=us-west4-a", "--config=configs/tokenizer.py:base",
                 "--workdir=gs://b/run", "--", "--config.optimizer.lr=0.0001")
  assert out.strip() == ("gcloud compute tpus tpu-vm ssh pod --zone us-west4-a --worker=all --command "
                         "'cd progvc && python3 -m progvc_jax.train --multihost=on "
                         "--config=configs/tokenizer.py:base --workdir=gs://b/run --config.optimizer.lr=0.0001'")

  out = launcher("slurm.py", "--nodes=2", "--gpus_per_node=4", "--partition=gpu",
                 "--config=configs/tokenizer.py:large", "--workdir=/shared/run")
  assert out.startswith("#!/bin/bash\n")
  for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4",
               "#SBATCH --partition=gpu", "#SBATCH --signal=TERM@120",
               "srun python -m progvc_jax.train --multihost=on --config=configs/tokenizer.py:large "
               "--workdir=/shared/run"):
    assert line in out.splitlines()
