"""What an installed progvc holds: every subpackage and the configs, and no top-level module but progvc_jax."""

import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from progvc_jax import configs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_config_paths_resolve_to_the_packaged_configs(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # no configs/ folder here
  packaged = os.path.join(os.path.dirname(configs.__file__), "tokenizer.py")
  assert configs.resolve("configs/tokenizer.py:base,runlocal") == packaged + ":base,runlocal"
  assert configs.resolve("configs/context.py") == packaged.replace("tokenizer", "context")
  assert configs.resolve("mine/other.py:tiny") == "mine/other.py:tiny"  # not ours: left for the flag to report
  (tmp_path / "configs").mkdir()
  (tmp_path / "configs" / "tokenizer.py").write_text("")
  assert configs.resolve("configs/tokenizer.py:tiny") == "configs/tokenizer.py:tiny"  # a file there wins
  argv = ["train", "--config", "configs/context.py:tiny", "--config.batch_size=2", "--config=configs/context.py"]
  assert configs.resolve_argv(argv) == ["train", "--config", packaged.replace("tokenizer", "context") + ":tiny",
                                        "--config.batch_size=2", "--config=" + packaged.replace("tokenizer", "context")]


@pytest.mark.slow
def test_the_wheel_holds_every_package_and_nothing_else_at_the_top(tmp_path):
  # Built from a copy: a build folder left in the checkout would leak stale modules into later wheels.
  source = tmp_path / "source"
  shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".*", "build", "dist", "*.egg-info", "__pycache__"))
  run = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp_path), str(source)], capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-2000:]
  (wheel,) = tmp_path.glob("progvc-*.whl")
  names = zipfile.ZipFile(wheel).namelist()
  tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
  assert tops == {"progvc_jax"}
  sources = {os.path.dirname(os.path.relpath(os.path.join(d, f), ROOT))
             for d, _, files in os.walk(os.path.join(ROOT, "progvc_jax")) for f in files if f.endswith(".py")}
  for package in sources:
    assert f"{package}/__init__.py" in names, package
  for data in ("progvc_jax/assets/default.pgvcm", "progvc_jax/configs/tokenizer.py", "progvc_jax/trainers/common.py"):
    assert data in names
