"""BD figures of one progvc model's rate-distortion run against another's, on the same clip.

  python tools/eval_rd.py --model OLD.pgvcm --video CLIP --out runs/rd_old --anchors= --modes none
  python tools/eval_rd.py --model NEW.pgvcm --video CLIP --out runs/rd_new --anchors= --modes none
  python tools/compare_rd.py --reference runs/rd_old --test runs/rd_new [--json OUT] [--pairs none:argmax]

Reads both runs' points.csv and prints, for each progvc curve both have and
each metric, the BD-rate and BD-quality of the test run against the
reference (negative BD-rate: fewer bits for the same quality), or why it is
undefined, and the rate change at every K. From each run's all-scales
stream it also gives the mean payload of I- and P-frames and their ratio.
`--pairs REF:TEST,...` compares the reference's curve of one completion
mode with the test's of another (e.g. the shipped model's default `none`
against a new model's `argmax`) instead of each mode with itself.
"""

import csv
import json
import os
import sys

from absl import app, flags

from progvc_jax.eval import bd
from progvc_jax.eval.rd import METRICS, bd_line

flags.DEFINE_string("reference", None, "eval_rd output folder of the reference model.", required=True)
flags.DEFINE_string("test", None, "eval_rd output folder of the model under test.", required=True)
flags.DEFINE_string("json", None, "Also write the figures to this file.")
flags.DEFINE_list("pairs", [], "REF_MODE:TEST_MODE curves to compare (default: each mode both runs have with itself).")
FLAGS = flags.FLAGS


def read_points(folder: str) -> list[dict]:
  path = os.path.join(folder, "points.csv")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{folder} has no points.csv (is it an eval_rd output folder?)")
  with open(path, newline="") as f:
    return [row for row in csv.DictReader(f) if row["codec"] == "progvc" and row["mode"] != "rate"]


def curves(points: list[dict]) -> dict[str, dict[str, dict]]:
  """{mode: {setting: row}} of progvc's ladder."""
  out: dict[str, dict[str, dict]] = {}
  for row in points:
    out.setdefault(row["mode"], {})[row["setting"]] = row
  return out


def frame_bytes(folder: str) -> dict | None:
  """Mean range-coded payload bytes of I- and P-frames in the run's all-scales stream (None without one)."""
  from progvc_jax.codec import bitstream
  path = os.path.join(folder, "progvc_all_scales.pgvc")
  if not os.path.isfile(path):
    return None
  sizes = {bitstream.I_FRAME: [], bitstream.P_FRAME: []}
  with open(path, "rb") as f:
    for frame in bitstream.Reader(f):
      sizes[frame.kind].append(sum(len(c.payload) for c in frame.chunks))
  mean = {k: sum(v) / len(v) if v else float("nan") for k, v in sizes.items()}
  return {"I_bytes": mean[bitstream.I_FRAME], "P_bytes": mean[bitstream.P_FRAME],
          "P_over_I": mean[bitstream.P_FRAME] / mean[bitstream.I_FRAME]}


def parse_pairs(items: list[str]) -> list[tuple[str, str]]:
  pairs = []
  for item in items:
    a, sep, b = item.partition(":")
    if not sep or not a or not b:
      raise ValueError(f"--pairs takes REF_MODE:TEST_MODE, e.g. none:argmax; got {item!r}")
    pairs.append((a, b))
  return pairs


def compare(reference: list[dict], test: list[dict], pairs: list[tuple[str, str]] | None = None) -> dict:
  """BD figures of the test's curves against the reference's: each mode both have with itself, or the
  given (reference mode, test mode) pairs (a mode missing from either run is a KeyError)."""
  ref, new = curves(reference), curves(test)
  out = {"bd": [], "per_k": []}
  if pairs is None:
    pairs = [(m, m) for m in sorted(set(ref) & set(new))]
  for ref_mode, test_mode in pairs:
    for run, mode in (("reference", ref_mode), ("test", test_mode)):
      if mode not in (ref if run == "reference" else new):
        raise KeyError(f"the {run} run has no progvc curve of mode {mode!r}")
    r_curve, t_curve = ref[ref_mode], new[test_mode]
    mode = ref_mode if ref_mode == test_mode else f"{ref_mode}:{test_mode}"
    settings = [s for s in r_curve if s in t_curve]
    for s in settings:
      a, b = float(r_curve[s]["bpp"]), float(t_curve[s]["bpp"])
      out["per_k"].append({"mode": mode, "setting": s, "bpp_reference": a, "bpp_test": b,
                           "rate_change_percent": 100.0 * (b / a - 1.0)})
    for metric in METRICS:
      # Runs from before a metric existed have no column for it.
      rows = [(r_curve[s], t_curve[s]) for s in settings if r_curve[s].get(metric) and t_curve[s].get(metric)]
      if not rows:
        continue
      entry = {"mode": mode, "metric": metric}
      ra, qa = [float(r[0]["bpp"]) for r in rows], [float(r[0][metric]) for r in rows]
      rb, qb = [float(r[1]["bpp"]) for r in rows], [float(r[1][metric]) for r in rows]
      try:
        entry["bd_rate_percent"] = bd.bd_rate(ra, qa, rb, qb)
        entry["bd_quality"] = bd.bd_quality(ra, qa, rb, qb)
      except ValueError as e:
        entry["note"] = str(e)
      out["bd"].append(entry)
  return out


def main(argv):
  del argv
  try:
    pairs = parse_pairs(FLAGS.pairs) if FLAGS.pairs else None
    result = compare(read_points(FLAGS.reference), read_points(FLAGS.test), pairs)
  except (FileNotFoundError, ValueError) as e:
    sys.exit(f"compare_rd: {e}")
  except KeyError as e:
    sys.exit(f"compare_rd: {e.args[0]}")
  if not result["per_k"]:
    sys.exit("compare_rd: the two runs share no progvc points")
  for row in result["per_k"]:
    print(f"  {row['mode']:6s} {row['setting']:5s}: {row['bpp_reference']:.5f} -> {row['bpp_test']:.5f} bpp "
          f"({row['rate_change_percent']:+.1f}%)")
  for row in result["bd"]:
    print(bd_line(row, f"{row['mode']:6s} {row['metric']:8s}"))
  for name, folder in (("reference", FLAGS.reference), ("test", FLAGS.test)):
    fb = frame_bytes(folder)
    if fb:
      result[f"frames_{name}"] = fb
      print(f"  {name:9s}: I-frames {fb['I_bytes']:.0f} B, P-frames {fb['P_bytes']:.0f} B, "
            f"P/I {fb['P_over_I']:.3f}")
  if FLAGS.json:
    with open(FLAGS.json, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  app.run(main)
