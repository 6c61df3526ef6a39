"""A rate-distortion run: progvc's ladder and ffmpeg anchors on one clip, metrics, BD deltas, plots.

progvc's ladder comes from one encode at all scales and its truncations to
every K (files on disk: bpp from real sizes), each decoded with every
completion mode asked for; `--target-kbps` encodes add rate-control points.
Anchors are x264/x265 (and optionally SVT-AV1, VVC) CRF ladders on the same
frames. Every point is scored against the source frames; BD-rate and
BD-quality compare each progvc curve with each anchor, per metric.
"""

import csv
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import jax
import numpy as np

from progvc_jax.codec import bitstream, decoder, encoder
from progvc_jax.codec.model import CodecModel
from progvc_jax.eval import anchors, bd, ffmpeg, metrics, plots

METRICS = ("psnr_rgb", "psnr_y", "ms_ssim", "vmaf", "vmaf_neg", "ssimulacra2", "cvvdp", "lpips")


@dataclass
class Point:
  codec: str      # "progvc" or an anchor name
  mode: str       # completion mode for progvc ("none", "sample", "argmax", or "rate" for --target-kbps)
  setting: str    # "K=3", "crf=32", "kbps=200"
  bytes: int
  bpp: float
  scores: dict = field(default_factory=dict)

  @property
  def curve(self) -> str:
    return self.codec if self.codec != "progvc" else f"progvc-{self.mode}"


def score(src: np.ndarray, dec: np.ndarray, *, fps: float, use_vmaf: bool = True, use_ssimulacra2: bool = True,
          use_cvvdp: bool = False, lpips_path: str | None = None) -> dict:
  """Every metric asked for, as {name in METRICS: clip score}; VMAF gives vmaf and vmaf_neg in one run."""
  out = {"psnr_rgb": metrics.psnr_rgb(src, dec), "psnr_y": metrics.psnr_y(src, dec),
         "ms_ssim": metrics.ms_ssim(src, dec)}
  if use_vmaf:
    both = metrics.vmaf_models_frames(src, dec, (metrics.VMAF_MODEL, metrics.VMAF_NEG_MODEL))
    out["vmaf"] = float(np.mean(both[metrics.VMAF_MODEL]))
    out["vmaf_neg"] = float(np.mean(both[metrics.VMAF_NEG_MODEL]))
  if use_ssimulacra2:
    out["ssimulacra2"] = metrics.ssimulacra2(src, dec)
  if use_cvvdp:
    out["cvvdp"] = metrics.cvvdp(src, dec, fps)
  if lpips_path:
    out["lpips"] = metrics.lpips(src, dec, lpips_path)
  return out


def plan(model: CodecModel, modes: Sequence[str], kbps: Sequence[float], codecs: Sequence[str]) -> list[tuple]:
  """Every point the run will produce, in order: (codec, mode, setting value)."""
  jobs = []
  for k in range(1, model.num_scales + 1):
    jobs += [("progvc", mode, k) for mode in modes]
  jobs += [("progvc", "rate", r) for r in kbps]
  for codec in codecs:
    jobs += [(codec, "", q) for q in anchors.crf_ladder(codec)]
  return jobs


def run(model: CodecModel, frames: np.ndarray, fps: float, out: str, *, modes: Sequence[str] = ("none",),
        kbps: Sequence[float] = (), codecs: Sequence[str] = ("x264", "x265"), gop: int = 30, seed: int = 0,
        use_vmaf: bool = True, use_ssimulacra2: bool = True, use_cvvdp: bool = False,
        lpips_path: str | None = None, rd_lambda: float | None = None,
        p_lambda_scale: float | None = None, progress: Callable[[str], None] | None = None) -> dict:
  """Runs every point of `plan`, writes points.csv, results.json, rd_<metric>.png and strip.png to `out`.

  use_vmaf scores VMAF and VMAF NEG; use_cvvdp ColorVideoVDP (the perceptual extra).

  rd_lambda: the encoder's rate-distortion weight on I-frames (None: encoder.DEFAULT_RD_LAMBDA);
  p_lambda_scale: P-frames' weight over it (None: encoder.DEFAULT_P_LAMBDA_SCALE).
  The encoder chooses the completion its streams name (its default) only where a mode follows the
  stream (`stream`); otherwise they name `none` and the choice's decodes are saved.
  """
  rd_lambda = encoder.DEFAULT_RD_LAMBDA if rd_lambda is None else float(rd_lambda)
  p_lambda_scale = encoder.DEFAULT_P_LAMBDA_SCALE if p_lambda_scale is None else float(p_lambda_scale)
  enc_args = {"rd_lambda": rd_lambda, "p_lambda_scale": p_lambda_scale,
              "complete": encoder.DEFAULT_COMPLETE if "stream" in modes else "none"}
  os.makedirs(out, exist_ok=True)
  t, height, width = frames.shape[:3]
  if use_vmaf:
    ffmpeg.require("libvmaf")
  if use_cvvdp:
    metrics.require_cvvdp()  # fails now, not after the encodes, if the extra is missing
  missing = [c for c in codecs if c not in anchors.available_codecs()]
  if missing:
    raise ffmpeg.FFmpegError(f"ffmpeg at {ffmpeg.executable()} cannot encode {', '.join(missing)}")
  bpp = lambda n: metrics.bits_per_pixel(n, width, height, t)  # noqa: E731
  points, decoded, all_scales = [], {}, None
  full = os.path.join(out, "progvc_all_scales.pgvc")
  encoder.encode_file(model, iter(frames), full, fps, gop=gop, **enc_args)
  for codec, mode, value in plan(model, modes, kbps, codecs):
    if progress:
      progress(f"{codec} {mode} {value}".replace("  ", " "))
    if codec == "progvc" and value == model.num_scales and all_scales is not None:
      # Nothing to complete at all scales: every mode decodes the same frames.
      p, dec = all_scales
      points.append(Point("progvc", mode, p.setting, p.bytes, p.bpp, dict(p.scores)))
      decoded[(points[-1].curve, p.setting)] = dec[t // 2]
      continue
    if codec == "progvc" and mode != "rate":
      path = os.path.join(out, f"progvc_K{value}.pgvc")
      if not os.path.exists(path):
        with open(full, "rb") as src, open(path, "wb") as dst:
          bitstream.truncate(src, dst, value)
      with open(path, "rb") as f:
        dec = np.stack(list(decoder.decode_frames(model, f, complete=mode, seed=seed)))
      point = Point("progvc", mode, f"K={value}", os.path.getsize(path), bpp(os.path.getsize(path)))
    elif codec == "progvc":
      path = os.path.join(out, f"progvc_{value:g}kbps.pgvc")
      encoder.encode_file(model, iter(frames), path, fps, gop=gop, target_kbps=value, **enc_args)
      with open(path, "rb") as f:
        dec = np.stack(list(decoder.decode_frames(model, f, complete=modes[0], seed=seed)))
      point = Point("progvc", "rate", f"kbps={value:g}", os.path.getsize(path), bpp(os.path.getsize(path)))
    else:
      a = anchors.encode_anchor(codec, frames, fps, value, out)
      dec = a.frames_decoded
      point = Point(codec, "", f"crf={value}", a.bytes, bpp(a.bytes))
    point.scores = score(frames, dec, fps=fps, use_vmaf=use_vmaf, use_ssimulacra2=use_ssimulacra2,
                         use_cvvdp=use_cvvdp, lpips_path=lpips_path)
    points.append(point)
    if codec == "progvc" and value == model.num_scales and mode != "rate":
      all_scales = (point, dec)
    decoded[(point.curve, point.setting)] = dec[t // 2]

  results = {"frames": t, "size": [width, height], "fps": fps, "points": [asdict(p) for p in points],
             "bd": bd_table(points), "rd_lambda": rd_lambda, "p_lambda_scale": p_lambda_scale}
  _write_csv(points, os.path.join(out, "points.csv"))
  with open(os.path.join(out, "results.json"), "w") as f:
    json.dump(results, f, indent=1)
  for metric in METRICS:
    curves = curves_of(points, metric)
    if curves:
      plots.rd_plot(curves, metric, os.path.join(out, f"rd_{metric}.png"))
  plots.frame_strip(strip_rows(frames[t // 2], points, decoded, model.num_scales),
                    os.path.join(out, "strip.png"))
  return results


def same_tokenizer(a: CodecModel, b: CodecModel) -> bool:
  """Whether two bundles hold the same tokenizer (arguments and every weight)."""
  pa, pb = a.bundle.tokenizer_params, b.bundle.tokenizer_params
  return (a.bundle.tokenizer_args == b.bundle.tokenizer_args
          and jax.tree.structure(pa) == jax.tree.structure(pb)
          and all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb))))


def chunk_checksums(path: str) -> list[list[int]]:
  with open(path, "rb") as f:
    return [[c.checksum for c in frame.chunks] for frame in bitstream.Reader(f)]


def rates_with_scores_from(model: CodecModel, reference: CodecModel, frames: np.ndarray, fps: float, out: str,
                           scores_from: str, *, gop: int = 30) -> dict:
  """progvc's `none` ladder of a model whose tokenizer is the reference's: real file sizes of its own
  encode and truncations, scores taken from the reference's run in `scores_from`.

  With the same tokenizer and nearest-code tokens (rd_lambda = 0, in both runs:
  the reference run must have used it too) the tokens, and so the frames decoded
  at each K, are the reference's: only the context model's probabilities, the
  rate, differ. Checked:
  the tokenizers' weights are equal, and every chunk's token checksum matches the
  reference run's stream. Saves the decodes and metrics (most of a run at 720p).
  """
  if not same_tokenizer(model, reference):
    raise ValueError(f"{model.path} and {reference.path} hold different tokenizers: scores cannot be shared")
  ref_stream = os.path.join(scores_from, "progvc_all_scales.pgvc")
  ref_points = os.path.join(scores_from, "points.csv")
  if not (os.path.isfile(ref_stream) and os.path.isfile(ref_points)):
    raise ValueError(f"{scores_from} is not an eval_rd output folder (no progvc_all_scales.pgvc or points.csv)")
  ref_results = os.path.join(scores_from, "results.json")
  if os.path.isfile(ref_results):
    with open(ref_results) as f:
      ref_lambda = json.load(f).get("rd_lambda", 0.0)  # runs older than the option chose the nearest codes
    if ref_lambda != 0:
      raise ValueError(f"{scores_from} was encoded with rd_lambda {ref_lambda}, whose tokens depend on the "
                       f"context model: scores can be shared only from a run with --rd_lambda 0")
  os.makedirs(out, exist_ok=True)
  t, height, width = frames.shape[:3]
  full = os.path.join(out, "progvc_all_scales.pgvc")
  encoder.encode_file(model, iter(frames), full, fps, gop=gop, rd_lambda=0.0, complete="none")
  if chunk_checksums(full) != chunk_checksums(ref_stream):
    raise ValueError(f"the tokens differ from those of {ref_stream} (other frames or GOP?)")
  with open(ref_points, newline="") as f:
    scored = {row["setting"]: row for row in csv.DictReader(f) if row["codec"] == "progvc" and row["mode"] == "none"}
  points = []
  for k in range(1, model.num_scales + 1):
    path = os.path.join(out, f"progvc_K{k}.pgvc")
    with open(full, "rb") as src, open(path, "wb") as dst:
      bitstream.truncate(src, dst, k)
    row = scored.get(f"K={k}")
    if row is None:
      raise ValueError(f"{ref_points} has no progvc none point at K={k}")
    size = os.path.getsize(path)
    points.append(Point("progvc", "none", f"K={k}", size, metrics.bits_per_pixel(size, width, height, t),
                        {m: float(row[m]) for m in METRICS if row.get(m)}))
  results = {"frames": t, "size": [width, height], "fps": fps, "points": [asdict(p) for p in points],
             "bd": [], "scores_from": os.path.abspath(scores_from), "rd_lambda": 0.0}
  _write_csv(points, os.path.join(out, "points.csv"))
  with open(os.path.join(out, "results.json"), "w") as f:
    json.dump(results, f, indent=1)
  return results


def curves_of(points: Sequence[Point], metric: str) -> dict[str, tuple[list, list]]:
  out: dict[str, tuple[list, list]] = {}
  for p in points:
    if metric in p.scores and p.mode != "rate":
      c = out.setdefault(p.curve, ([], []))
      c[0].append(p.bpp)
      c[1].append(p.scores[metric])
  return out


def bd_table(points: Sequence[Point]) -> list[dict]:
  """BD-rate and BD-quality of every progvc curve against every anchor, per metric."""
  rows = []
  for metric in METRICS:
    curves = curves_of(points, metric)
    for test in (c for c in curves if c.startswith("progvc")):
      for ref in (c for c in curves if not c.startswith("progvc")):
        row = {"metric": metric, "reference": ref, "test": test}
        (ra, qa), (rb, qb) = curves[ref], curves[test]
        try:
          row["bd_rate_percent"] = bd.bd_rate(ra, qa, rb, qb)
          row["bd_quality"] = bd.bd_quality(ra, qa, rb, qb)
        except ValueError as e:
          row["note"] = str(e)
        rows.append(row)
  return rows


def bd_line(row: dict, label: str) -> str:
  """A BD table row as one printed line: the label, then BD-rate and BD-quality or why they are undefined."""
  if "bd_rate_percent" in row:
    return f"  {label}: BD-rate {row['bd_rate_percent']:+.1f}%, BD-quality {row['bd_quality']:+.4f}"
  return f"  {label}: {row['note']}"


def strip_rows(source: np.ndarray, points: Sequence[Point], decoded: dict, num_scales: int):
  """Source, progvc at a few K (first completion mode), and the x265 (else x264) point nearest
  in bpp to progvc's middle K."""
  rows = [("source", source)]
  ks = sorted({max(1, num_scales // 3), max(1, 2 * num_scales // 3), num_scales})
  first = next(p.mode for p in points if p.codec == "progvc")
  shown = []
  for k in ks:
    p = next(p for p in points if p.codec == "progvc" and p.mode == first and p.setting == f"K={k}")
    rows.append((f"progvc K={k} {p.bpp:.3f} bpp", decoded[(p.curve, p.setting)]))
    shown.append(p)
  mid = shown[len(shown) // 2]
  anchors_ = [p for p in points if p.codec == "x265"] or [p for p in points if p.codec == "x264"]
  if anchors_:
    pick = min(anchors_, key=lambda p: abs(np.log(p.bpp / mid.bpp)))
    rows.append((f"{pick.codec} {pick.setting} {pick.bpp:.3f} bpp", decoded[(pick.curve, pick.setting)]))
  return rows


def _write_csv(points: Sequence[Point], path: str) -> None:
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["codec", "mode", "setting", "bytes", "bpp", *METRICS])
    for p in points:
      w.writerow([p.codec, p.mode, p.setting, p.bytes, f"{p.bpp:.6f}",
                  *(f"{p.scores[m]:.6f}" if m in p.scores else "" for m in METRICS)])
