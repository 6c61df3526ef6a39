"""launch/sweep.py expands a config's sweep into one training command a run."""

import os
import shlex
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(*args):
  return subprocess.run([sys.executable, os.path.join(ROOT, "launch", "sweep.py"), *args],
                        capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_tokenizer_sweep_expands(tmp_path):
  out = tmp_path / "runs.sh"
  res = run("--config", "configs/tokenizer.py:base", "--workdir", "gs://b/sweep", "--out", str(out))
  assert res.returncode == 0, res.stderr
  lines = [l for l in out.read_text().splitlines() if l.startswith("python")]
  assert len(lines) == 6  # 3 learning rates x 2 codebook sizes
  argvs = [shlex.split(l) for l in lines]
  workdirs = {a for argv in argvs for a in argv if a.startswith("--workdir=")}
  assert len(workdirs) == 6
  combos = {tuple(sorted(a for a in argv if a.startswith("--config.") and "=" in a)) for argv in argvs}
  assert ("--config.model.vocab_size=8192", "--config.optimizer.lr=0.0001") in combos
  assert all(argv[:3] == ["python", "-m", "progvc_jax.train"] for argv in argvs)


def test_missing_sweep_is_a_clear_error(tmp_path):
  cfg = tmp_path / "c.py"
  cfg.write_text("def get_config(arg=None):\n  return None\n")
  res = run("--config", str(cfg), "--workdir", "/tmp/x")
  assert res.returncode != 0 and "defines no get_sweep" in res.stderr
