"""Ahead-of-time compilation of a training step: memory, FLOPs and compile time before a run.

The step is lowered against abstract inputs (shapes and shardings only) and
compiled for a mesh of simulated CPU devices or of compile-only TPU devices
(a Cloud TPU type such as v5e-16, from libtpu's topology description: the
TPU compiler runs on the CPU; no TPU is needed). Nothing is run.
`tools/aot_compile.py` is the command line.
"""

import time

import jax
import numpy as np

from progvc_jax import checkpointing, sharding

# Generation -> (TensorCores per chip counted in the type's name, torus dimensions, chip config).
TPU_GENERATIONS = {"v4": (2, 3, "megacore"), "v5p": (2, 3, "megacore"), "v5e": (1, 2, "default"),
                   "v5litepod": (1, 2, "default"), "v6e": (1, 2, "default")}
# HBM per chip in GiB, as Cloud TPU documents it (one JAX device per chip, megacore included).
TPU_HBM_GIB = {"v4": 32, "v5p": 95, "v5e": 16, "v5litepod": 16, "v6e": 32}


def tpu_topology(name: str) -> tuple[list, int]:
  """The compile-only devices of a Cloud TPU type such as v5e-16, and each device's HBM in bytes."""
  gen, _, count = name.partition("-")
  if gen not in TPU_GENERATIONS or not count.isdigit():
    raise ValueError(f"unknown TPU type {name!r}; e.g. {', '.join(g + '-16' for g in TPU_GENERATIONS)}")
  cores, dims, chip_config = TPU_GENERATIONS[gen]
  chips = int(count) // cores
  if chips < 1 or chips & (chips - 1):
    raise ValueError(f"TPU type {name!r}: expected a power-of-two number of chips")
  shape = [1] * dims
  while int(np.prod(shape)) < chips:  # the most cube-like torus, as Cloud TPU lays slices out
    shape[shape.index(min(shape))] *= 2
  from jax.experimental import topologies

  topo = topologies.get_topology_desc(
      f"{'v5e' if gen == 'v5litepod' else gen}:{'x'.join(map(str, sorted(shape)))}", "tpu",
      chip_config_name=chip_config, chips_per_host_bounds=(2, 2, 1), num_slices=1)
  return list(topo.devices), TPU_HBM_GIB[gen] * 2**30


def build(config, mesh, tokenizer_variant: str | None = None):
  """The trainer of config's stage on mesh, and the abstract state its step takes.

  For the context stage the tokenizer's shape comes from config.tokenizer when it
  names a checkpoint, else from the tokenizer config `tokenizer_variant` (default:
  the variant of the same name).
  """
  from progvc_jax.configs import tokenizer as tokenizer_config
  from progvc_jax.trainers import context, tokenizer

  if config.stage == "context":
    if config.tokenizer:
      tok_args = checkpointing.load_model_args(config.tokenizer, "tokenizer")
    else:
      tok_args = dict(tokenizer_config.get_config(tokenizer_variant or config.variant).model)
    trainer = context.Trainer(config, mesh, tok_args)
    frozen = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          trainer.tok_abstract, trainer.tok_shardings)
    return trainer, (trainer.abstract, frozen)
  trainer = tokenizer.Trainer(config, mesh)
  return trainer, (trainer.abstract,)


def _out_of_memory(error: Exception) -> bool:
  text = str(error)
  return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def compile_step(config, mesh, hbm_bytes: int | None = None, tokenizer_variant: str | None = None) -> dict:
  """Lowers and compiles config's training step on mesh: a report of its memory, FLOPs and times.

  With hbm_bytes the report says whether the per-device peak fits (`fits`); a step
  the compiler refuses for memory is reported with fits=False and its error.
  """
  trainer, inputs = build(config, mesh, tokenizer_variant)
  crop, t = config.data.crop, config.data.clip_len
  batch = jax.ShapeDtypeStruct((config.batch_size, t, crop, crop, 3), jax.numpy.uint8,
                               sharding=sharding.batch_sharding(mesh, 5))
  report = dict(stage=config.stage, variant=config.variant, mesh=dict(mesh.shape),
                platform=mesh.devices.flat[0].platform, batch=config.batch_size, clip_len=t, crop=crop,
                compute_dtype=config.compute_dtype, remat=config.remat, grad_accum=config.grad_accum,
                scan_layers=bool(config.get("scan_layers", False)))
  t0 = time.perf_counter()
  lowered = trainer.step.lower(*inputs, batch)
  report["lower_s"] = round(time.perf_counter() - t0, 2)
  t0 = time.perf_counter()
  try:
    compiled = lowered.compile()
  except Exception as e:  # XLA's error types differ between versions; only running out of memory is a result
    if hbm_bytes is None or not _out_of_memory(e):
      raise
    report.update(compile_s=round(time.perf_counter() - t0, 2), hbm_bytes_per_device=hbm_bytes, fits=False,
                  error=str(e).strip().splitlines()[0][:300])
    return report
  report["compile_s"] = round(time.perf_counter() - t0, 2)
  mem = compiled.memory_analysis()
  peak = mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes - mem.alias_size_in_bytes
  report.update(
      flops_per_step_per_device=step_flops(config, mesh, compiled, tokenizer_variant, batch),
      argument_bytes=mem.argument_size_in_bytes, output_bytes=mem.output_size_in_bytes,
      temp_bytes=mem.temp_size_in_bytes, alias_bytes=mem.alias_size_in_bytes,
      generated_code_bytes=mem.generated_code_size_in_bytes, peak_bytes_per_device=peak)
  if hbm_bytes is not None:
    report.update(hbm_bytes_per_device=hbm_bytes, fits=peak <= hbm_bytes)
  return report


def _first(cost):
  return cost[0] if isinstance(cost, (list, tuple)) else cost


def step_flops(config, mesh, compiled, tokenizer_variant, batch) -> float | None:
  """FLOPs per device of one step.

  XLA's cost analysis counts a loop's body once, so with scan_layers the count comes
  from the same step lowered with its blocks unrolled (not compiled: the global count
  divided by the devices, within a few percent of the compiled per-device count).
  """
  if not config.get("scan_layers", False):
    cost = _first(compiled.cost_analysis())
    return float(cost["flops"]) if cost and "flops" in cost else None
  unrolled = config.copy_and_resolve_references()
  unrolled.scan_layers = False
  trainer, inputs = build(unrolled, mesh, tokenizer_variant)
  cost = _first(trainer.step.lower(*inputs, batch).cost_analysis())
  return float(cost["flops"]) / mesh.size if cost and "flops" in cost else None


def largest_batch(probe, unit: int, start: int, hbm_bytes: int) -> int:
  """The largest global batch, a multiple of `unit` (the data-parallel devices), that fits hbm_bytes.

  probe(batch) compiles at that batch and gives the per-device peak in bytes, or None when the
  compiler refused it for memory. Each probe is a compile, so the next batch is guessed from
  the two largest that fit (memory grows about linearly in the batch), doubling or halving
  until there are two; bisecting where a guess failed; the answer is within an eighth. 0 when not even `unit` fits.
  """
  peaks = {}  # batch in units -> peak bytes of those that fit
  lo, hi = 0, None  # the largest that fits, the smallest that does not
  n = max(1, -(-start // unit))
  while True:
    peak = probe(n * unit)
    if peak is not None and peak <= hbm_bytes:
      peaks[n], lo = peak, max(lo, n)
    else:
      hi = n if hi is None else min(hi, n)
    if hi is not None and hi - lo <= max(1, lo // 8):
      return lo * unit
    if len(peaks) >= 2:
      (b1, p1), (b2, p2) = sorted(peaks.items())[-2:]
      guess = int(b2 + (hbm_bytes - p2) * (b2 - b1) / (p2 - p1)) if p2 > p1 else 2 * b2
    else:
      guess = 2 * lo if lo else hi // 2
    if guess <= lo:  # the line says lo is the last: check just above it
      guess = lo + max(1, lo // 8)
    n = guess if hi is None else max(lo + 1, min(guess, (lo + hi) // 2))  # bisect at worst
