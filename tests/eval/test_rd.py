"""tools/eval_rd.py end to end on a tiny bundle: every promised point, plots, strip, BD table."""

import csv
import json
import os
import subprocess
import sys

import pytest

from progvc_jax import export
from tests.codec.test_codec import write_checkpoints

pytestmark = pytest.mark.slow  # every test here compiles training steps or runs a subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  from progvc_jax.data import samples, video
  d = tmp_path_factory.mktemp("rd")
  tok, ctx = write_checkpoints(str(d))
  export.export(tok, ctx, str(d / "m.pgvcm"), calibration_batches=1)
  clip = d / "clip.y4m"
  video.write_video(str(clip), video.read_frames(samples.sample_videos()[1], count=3), 30)
  out = d / "out"
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "eval_rd.py"), "--model", str(d / "m.pgvcm"),
                         "--video", str(clip), "--out", str(out), "--frames", "3", "--gop", "2",
                         "--modes", "none,sample", "--kbps", "40"],
                        capture_output=True, text=True, cwd=ROOT, timeout=900)
  return proc, out


def test_every_promised_point_is_written(run):
  proc, out = run
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = list(csv.DictReader(open(out / "points.csv")))
  got = {(r["codec"], r["mode"], r["setting"]) for r in rows}
  want = {("progvc", m, f"K={k}") for m in ("none", "sample") for k in range(1, 5)}
  want |= {("progvc", "rate", "kbps=40")}
  want |= {(c, "", f"crf={q}") for c in ("x264", "x265") for q in (22, 27, 32, 37, 42, 47)}
  assert got == want and len(rows) == len(want)
  for r in rows:
    assert float(r["bpp"]) > 0 and float(r["psnr_rgb"]) > 5 and 0 < float(r["ms_ssim"]) <= 1
    assert r["vmaf"] != ""
  # bpp comes from the real files: progvc's K=2 point is the size of its truncated stream.
  k2 = next(r for r in rows if r["codec"] == "progvc" and r["setting"] == "K=2" and r["mode"] == "none")
  assert int(k2["bytes"]) == os.path.getsize(out / "progvc_K2.pgvc")
  # The rate rises with the scales kept; at all scales every completion mode is the same point.
  bpp = {(r["mode"], r["setting"]): float(r["bpp"]) for r in rows if r["codec"] == "progvc"}
  assert bpp[("none", "K=1")] < bpp[("none", "K=2")] < bpp[("none", "K=4")] == bpp[("sample", "K=4")]
  results = json.load(open(out / "results.json"))
  assert len(results["points"]) == len(want)
  assert {(b["metric"], b["test"], b["reference"]) for b in results["bd"]} >= {("psnr_rgb", "progvc-none", "x264")}
  for name in ("rd_psnr_rgb.png", "rd_psnr_y.png", "rd_ms_ssim.png", "rd_vmaf.png", "strip.png"):
    assert (out / name).stat().st_size > 1000
  assert "rd:" in proc.stderr  # progress bar
