"""Ahead-of-time compilation (progvc_jax/aot.py, tools/aot_compile.py): memory reports and batch search."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from progvc_jax import aot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("limit,unit,start,fixed,curve", [
    (1000, 16, 256, 0.9, 0.0), (40, 16, 256, 0.5, 0.0), (15, 16, 256, 0.2, 0.0), (256, 4, 256, 0.3, 0.0),
    (9, 1, 1, 0.0, 0.0), (700, 8, 8, 0.9, 0.0), (700, 8, 64, 0.2, 0.5), (3000, 32, 512, 0.4, 1.0)])
def test_largest_batch_is_the_largest_fitting_multiple_to_within_an_eighth(limit, unit, start, fixed, curve):
  """A fake compiler: peak memory fixed + per-example (optionally growing faster than linearly);
  batches past `limit` do not fit (half the time reported as a refused compile)."""
  hbm = 1 << 30
  per = (hbm * (1 - fixed)) / (limit * (1 + curve))
  probes = []

  def probe(b):
    assert b % unit == 0 and b > 0
    probes.append(b)
    peak = hbm * fixed + per * b * (1 + curve * b / limit)
    return None if peak > hbm and len(probes) % 2 else peak

  best = aot.largest_batch(probe, unit, start, hbm)
  assert best % unit == 0 and best <= limit
  if limit < unit:
    assert best == 0
  else:
    assert best >= unit and limit - best < max(unit, best // 8 + unit)
  assert len(probes) <= 10, probes  # each probe is a compile


@pytest.mark.parametrize("name,message", [("v9-16", "unknown TPU type"), ("v5e-12", "power-of-two"),
                                          ("v5e", "unknown TPU type")])
def test_unknown_or_odd_tpu_types_are_refused(name, message):
  with pytest.raises(ValueError, match=message):
    aot.tpu_topology(name)


SMALLER = {
    "tokenizer": ("--config.model.ch=8", "--config.model.ch_mult=(1, 2)", "--config.model.z_channels=8",
                  "--config.model.norm_groups=8", "--config.model.vocab_size=128", "--config.model.tile=4",
                  "--config.disc.ch=8", "--config.disc.norm_groups=8", "--config.data.crop=32"),
    "context": ("--config.model.depth=1", "--tokenizer_variant", "default"),
}


def _aot_compile(tmp_path, *args):
  out = tmp_path / f"reports{len(list(tmp_path.glob('reports*')))}.jsonl"  # one file per call
  run = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "aot_compile.py"), *args,
                        "--json_out", str(out)], capture_output=True, text=True, cwd=tmp_path, timeout=1800)
  assert run.returncode == 0, run.stderr[-3000:]
  return [json.loads(line) for line in out.read_text().splitlines()]


@pytest.mark.slow
def test_cpu_mesh_reports_with_and_without_scanned_layers(tmp_path):
  # Two layers (tiny has 4) and the default tokenizer's smaller token maps: the compiler's time grows with both.
  args = ("--config", "configs/context.py:tiny", "--devices", "8", "--mesh", "2,2,2", "--batch", "8",
          "--config.model.depth=2", "--tokenizer_variant", "default")
  (scanned,) = _aot_compile(tmp_path, *args, "--config.scan_layers=true")
  (unrolled,) = _aot_compile(tmp_path, *args, "--config.scan_layers=false")
  for r in (scanned, unrolled):
    assert r["platform"] == "cpu" and r["mesh"] == {"data": 2, "fsdp": 2, "model": 2}
    assert r["peak_bytes_per_device"] > r["argument_bytes"] > 0
    assert "fits" not in r  # simulated devices have no memory limit
  assert scanned["scan_layers"] and not unrolled["scan_layers"]
  # XLA counts a loop body once; the report counts every layer either way.
  assert abs(scanned["flops_per_step_per_device"] / unrolled["flops_per_step_per_device"] - 1) < 0.05


def test_fit_needs_a_topology(tmp_path):
  run = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "aot_compile.py"), "--config",
                        "configs/context.py:tiny", "--fit"], capture_output=True, text=True, cwd=tmp_path)
  assert run.returncode != 0 and "--fit needs --topology" in run.stderr.strip().splitlines()[-1]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                    reason='the TPU compiler is not installed (pip install -e ".[tpu]")')
@pytest.mark.parametrize("config", ["tokenizer", "context"])
def test_training_steps_compile_for_a_v5e_slice(tmp_path, config):
  # The tiny configs' code paths with fewer levels and layers: the TPU compiler's time grows with the
  # graph (the tiny tokenizer took 355 s here, this one about 60 s), and the claim is that the steps
  # compile and fit, not that a given size does.
  (r,) = _aot_compile(tmp_path, "--config", f"configs/{config}.py:tiny", "--topology", "v5e-4", "--mesh", "2,2,1",
                      *SMALLER[config])
  assert r["platform"] == "tpu" and r["mesh"] == {"data": 2, "fsdp": 2, "model": 1}
  assert r["hbm_bytes_per_device"] == 16 * 2**30 and r["fits"]
  assert 0 < r["peak_bytes_per_device"] < r["hbm_bytes_per_device"] and r["flops_per_step_per_device"] > 0
