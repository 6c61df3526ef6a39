"""Training-step throughput: examples/s, FLOPs per step, achieved FLOP/s and MFU.

  python tools/bench_train.py --variants tiny,base --batch 8 --crop 128 [--out bench.json]

For each variant, compiles the tokenizer's update step on all local devices
(data parallel), runs it on a fixed batch of real photo crops, and prints the
median step time over --steps timed steps after --warmup. FLOPs come from
XLA's cost analysis of the compiled step; MFU needs the device's peak
(--peak_tflops, or known for common accelerators).
"""

import json
import statistics
import time

import jax
import numpy as np
from absl import app, flags

from progvc_jax.configs import tokenizer as tokenizer_config
from progvc_jax import sharding
from progvc_jax.trainers import tokenizer as trainer_lib

flags.DEFINE_string("variants", "tiny,base", "Comma-separated tokenizer variants.")
flags.DEFINE_integer("batch", 8, "Global batch.")
flags.DEFINE_integer("crop", 128, "Square crop size (a multiple of the variant's pixel tile).")
flags.DEFINE_integer("steps", 5, "Timed steps.")
flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
flags.DEFINE_string("dtype", "float32", "Compute dtype: float32 or bfloat16.")
flags.DEFINE_float("peak_tflops", 0.0, "Peak dense TFLOP/s of one device, for MFU (0: guess from the device).")
flags.DEFINE_string("out", None, "Also write the figures to this JSON file.")
FLAGS = flags.FLAGS

# Dense peaks per device (TFLOP/s) for bfloat16 / float32 (TF32 on NVIDIA).
PEAKS = {"H100": (989.0, 494.0), "H200": (989.0, 494.0), "A100": (312.0, 156.0), "v5e": (197.0, 197.0),
         "v4": (275.0, 275.0), "v5p": (459.0, 459.0)}


def peak_flops(dtype: str) -> float | None:
  if FLAGS.peak_tflops:
    return FLAGS.peak_tflops * 1e12
  kind = jax.devices()[0].device_kind
  for name, (bf16, f32) in PEAKS.items():
    if name.lower() in kind.lower():
      return (bf16 if dtype == "bfloat16" else f32) * 1e12
  return None


def photo_batch(n: int, size: int) -> np.ndarray:
  from skimage import data as skdata
  photos = [skdata.astronaut(), skdata.coffee(), skdata.chelsea(), skdata.rocket()]
  out = []
  for i in range(n):
    p = photos[i % len(photos)]
    y, x = (7 * i) % (p.shape[0] - size + 1), (11 * i) % (p.shape[1] - size + 1)
    out.append(p[y:y + size, x:x + size])
  return np.stack(out)[:, None]


def bench(variant: str) -> dict:
  config = tokenizer_config.get_config(variant)
  config.batch_size, config.compute_dtype = FLAGS.batch, FLAGS.dtype
  config.data.crop = FLAGS.crop
  mesh = sharding.make_mesh((-1, 1, 1))
  trainer = trainer_lib.Trainer(config, mesh)
  batch = jax.device_put(photo_batch(FLAGS.batch, FLAGS.crop), sharding.batch_sharding(mesh, 5))
  t0 = time.perf_counter()
  compiled = trainer.step.lower(trainer.abstract, batch).compile()
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", 0.0)) * jax.device_count() if cost else float("nan")
  state = trainer.init(jax.random.key(0))
  for _ in range(FLAGS.warmup):
    state, figures = compiled(state, batch)
  jax.block_until_ready(figures)
  times = []
  for _ in range(FLAGS.steps):
    t0 = time.perf_counter()
    state, figures = compiled(state, batch)
    jax.block_until_ready(figures)
    times.append(time.perf_counter() - t0)
  step_s = statistics.median(times)
  peak = peak_flops(FLAGS.dtype)
  out = dict(variant=variant, device=jax.devices()[0].device_kind, devices=jax.device_count(),
             dtype=FLAGS.dtype, batch=FLAGS.batch, crop=FLAGS.crop, compile_s=round(compile_s, 2),
             median_step_s=step_s, steps_per_s=1 / step_s, examples_per_s=FLAGS.batch / step_s,
             flops_per_step=flops, achieved_tflops=flops / step_s / 1e12,
             mfu=(flops / step_s / (peak * jax.device_count())) if peak else None)
  print(f"{variant}: {out['examples_per_s']:.2f} examples/s ({step_s * 1000:.1f} ms/step, median of "
        f"{FLAGS.steps}), {flops / 1e9:.1f} GFLOP/step, {out['achieved_tflops']:.3f} TFLOP/s"
        + (f", MFU {out['mfu']:.1%}" if out["mfu"] is not None else ""), flush=True)
  return out


def main(argv):
  del argv
  results = [bench(v) for v in FLAGS.variants.split(",")]
  print(json.dumps(results))
  if FLAGS.out:
    with open(FLAGS.out, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  app.run(main)
