"""Training curves of a tokenizer run and a context-model run, from their TensorBoard logs.

  python tools/plot_training.py --tokenizer runs/default/tokenizer --context runs/default/context \
      --out docs/default_model/training.png [--csv docs/default_model/training.csv]

Left: the tokenizer's evaluation PSNR after each scale (EMA weights, held-out
batches). Right: the context model's evaluation bits per pixel of I- and
P-frames. --csv also writes every evaluated step's figures as a table.
Either stage may instead be read from such a table of an earlier run
(--tokenizer docs/default_model/training.csv), for a model that kept its
tokenizer and retrained only its context model.
"""

import collections
import csv
import glob
import os

from absl import app, flags

flags.DEFINE_string("tokenizer", None, "Tokenizer training workdir, or a --csv table holding its rows.",
                    required=True)
flags.DEFINE_string("context", None, "Context-model training workdir, or a --csv table holding its rows.",
                    required=True)
flags.DEFINE_string("out", "training.png", "Output image.")
flags.DEFINE_string("csv", None, "Also write the evaluated figures to this CSV file.")
FLAGS = flags.FLAGS


def read_scalars(workdir: str, prefix: str = "eval/") -> dict[str, list[tuple[int, float]]]:
  """{tag: [(step, value)]} of the scalars whose tag starts with `prefix`, in step order."""
  import tensorflow as tf  # Deferred: a heavy import, needed only to read the logs' tensor summaries.
  from tensorboard.backend.event_processing import event_accumulator

  files = sorted(glob.glob(os.path.join(workdir, "events.out.tfevents.*")))
  if not files:
    raise app.UsageError(f"no TensorBoard event files in {workdir}")
  out = collections.defaultdict(dict)
  for path in files:  # a resumed run appends a new file; later values win
    acc = event_accumulator.EventAccumulator(path, size_guidance={event_accumulator.TENSORS: 0,
                                                                  event_accumulator.SCALARS: 0})
    acc.Reload()
    for tag in acc.Tags().get("tensors", []):
      if tag.startswith(prefix):
        for e in acc.Tensors(tag):
          value = tf.make_ndarray(e.tensor_proto)
          if value.ndim == 0:  # scalars only; images and histograms are skipped
            out[tag][e.step] = float(value)
    for tag in acc.Tags().get("scalars", []):
      if tag.startswith(prefix):
        for e in acc.Scalars(tag):
          out[tag][e.step] = float(e.value)
  return {tag: sorted(values.items()) for tag, values in out.items()}


def read_table(path: str, stage: str) -> dict[str, list[tuple[int, float]]]:
  """{tag: [(step, value)]} of one stage's rows of a table this tool wrote."""
  out = collections.defaultdict(list)
  with open(path, newline="") as f:
    for row in csv.DictReader(f):
      if row["stage"] == stage:
        out[row["tag"]].append((int(row["step"]), float(row["value"])))
  if not out:
    raise app.UsageError(f"{path} has no {stage} rows")
  return {tag: sorted(points) for tag, points in out.items()}


def read_stage(source: str, stage: str) -> dict[str, list[tuple[int, float]]]:
  return read_table(source, stage) if os.path.isfile(source) else read_scalars(source)


def main(argv):
  del argv
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  tok, ctx = read_stage(FLAGS.tokenizer, "tokenizer"), read_stage(FLAGS.context, "context")
  fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
  scales = sorted((t for t in tok if t.startswith("eval/psnr_scale")), key=lambda t: int(t.rsplit("e", 1)[1]))
  for tag in scales:
    steps, values = zip(*tok[tag])
    a.plot(steps, values, marker=".", label=f"K={tag.rsplit('e', 1)[1]}")
  a.set(xlabel="tokenizer step", ylabel="eval PSNR (dB)", title="tokenizer: PSNR after K scales")
  a.legend(fontsize=8)
  for tag, label in (("eval/bpp_I", "I-frames"), ("eval/bpp_P", "P-frames")):
    if tag in ctx:
      steps, values = zip(*ctx[tag])
      b.plot(steps, values, marker=".", label=label)
  b.set(xlabel="context-model step", ylabel="eval bits per pixel (all scales)", title="context model: rate")
  b.legend(fontsize=8)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
  fig.savefig(FLAGS.out, dpi=100)
  print(f"wrote {FLAGS.out}")

  if FLAGS.csv:
    with open(FLAGS.csv, "w", newline="") as f:
      w = csv.writer(f)
      w.writerow(["stage", "tag", "step", "value"])
      for stage, tags in (("tokenizer", tok), ("context", ctx)):
        for tag, points in sorted(tags.items()):
          for step, value in points:
            w.writerow([stage, tag, step, f"{value:.6g}"])
    print(f"wrote {FLAGS.csv}")


if __name__ == "__main__":
  app.run(main)
