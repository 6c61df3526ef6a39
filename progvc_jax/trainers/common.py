"""What every progvc trainer shares: the training loop, optimizer, EMA, guards, batches,
progress and preemption.

A trainer builds its compiled pieces (init, step, evaluation) and hands them to
`run`, which owns the rest of a run: input, resumption, metrics, checkpoints,
preemption and the loop itself.
"""

import functools
import signal
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from clu import metric_writers, metrics

from progvc_jax import checkpointing, sharding

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(config):
  """The config's compute_dtype as a JAX dtype, or a ValueError naming the choices."""
  if config.compute_dtype not in DTYPES:
    raise ValueError(f"compute_dtype must be one of {sorted(DTYPES)}, got {config.compute_dtype!r}")
  return DTYPES[config.compute_dtype]


def with_activation_sharding(fn, mesh, config):
  """fn, traced with the config's activation rules in force (see sharding.constrain)."""
  rules = config.get("activation_rules") or ()

  @functools.wraps(fn)
  def traced(*args):
    with sharding.activation_sharding(mesh, rules):
      return fn(*args)
  return traced


def make_mesh(config):
  """The run's device mesh, after checking that the batch splits over processes and micro-batches."""
  mesh = sharding.make_mesh(config.mesh, dcn=config.mesh_dcn)
  if config.batch_size % (jax.process_count() * config.grad_accum):
    raise ValueError(f"batch_size {config.batch_size} must divide by processes x grad_accum")
  logging.info("mesh %s on %d devices, %d processes", dict(mesh.shape), jax.device_count(), jax.process_count())
  return mesh


def run(config, workdir: str, mesh, *, abstract, init, step, evaluate, figures, stop_at: int | None = None):
  """Trains from scratch or resumes from the latest checkpoint in `workdir`; returns the last state.

  abstract: the train state's shapes and shardings, to restore a checkpoint into.
  init(): a fresh train state, when `workdir` holds no checkpoint.
  step(state, batch) -> (state, figures): one update on a global batch of clips.
  evaluate(state, batches, writer, step): writes the evaluation figures.
  figures: the names of the step figures, averaged between log steps.
  stop_at: end this run after that step with a checkpoint (a time-boxed job);
    the next run resumes from it.
  """
  # Input: this process's share of the training stream, and fixed evaluation batches.
  pid, nproc = jax.process_index(), jax.process_count()
  train_iter = iter(make_input(config, config.seed, pid, nproc, config.data.worker_count))
  eval_iter = iter(make_input(config, config.seed + 1, pid, nproc, 0, augment=False))
  eval_batches = [next(eval_iter) for _ in range(config.eval_batches)]

  # Checkpoints: resume (the input iterator too), or start fresh.
  manager = checkpointing.train_manager(workdir, config.keep_ckpts)
  state = checkpointing.restore_train(manager, abstract, train_iter)
  if state is None:
    state = init()
  first = int(state["step"])
  logging.info("starting at step %d of %d", first, config.total_steps)

  writer = metric_writers.create_default_writer(workdir, just_logging=pid > 0)
  log = LogWindow(figures, writer, Progress(config.total_steps, config.batch_size, first), config.log_every)

  last = config.total_steps if stop_at is None else min(stop_at, config.total_steps)
  preemption = Preemption(manager)
  try:
    for n in range(first + 1, last + 1):
      with jax.profiler.StepTraceAnnotation("train", step_num=n):
        state, step_figures = step(state, device_batch(mesh, next(train_iter)))
      log.add(step_figures)
      if n % config.log_every == 0 or n == config.total_steps:
        log.write(n)
      if n % config.eval_every == 0 or n == config.total_steps:
        evaluate(state, [device_batch(mesh, b) for b in eval_batches], writer, n)
      preempted = preemption.requested(n)
      if n % config.ckpt_every == 0 or n == last or preempted:
        checkpointing.save_train(manager, n, state, train_iter)
      if preempted:
        logging.warning("preempted: saved step %d, stopping; rerun to resume", n)
        break
  finally:
    preemption.close()
    manager.wait_until_finished()
    writer.flush()
  return state


def make_input(config, seed: int, shard_index: int, shard_count: int, worker_count: int, *,
               augment: bool = True):
  """This process's grain iterator of uint8 clip batches (B / processes, T, crop, crop, 3)
  over the TFDS dataset `config.data.tfds_name` if set, else over the embedded
  dataset and `config.data.videos`. augment=False leaves out the colour jitter (evaluation
  batches show the data as it is)."""
  local = config.batch_size // shard_count
  colour = dict(colour_share=config.data.get("colour_share", 0.0) if augment else 0.0,
                colour_max_saturation=config.data.get("colour_max_saturation", 1.5))
  if config.data.get("tfds_name"):
    from progvc_jax.data import tfds_pipeline  # Deferred: only training reads datasets.

    return tfds_pipeline.make_tfds_dataset(
        config.data.tfds_name, config.data.tfds_data_dir, split=config.data.tfds_split,
        clip_len=config.data.clip_len, crop=(config.data.crop, config.data.crop),
        batch_size=local, seed=seed, shard_index=shard_index, shard_count=shard_count,
        worker_count=worker_count, video_key=config.data.tfds_video_key, **colour)
  from progvc_jax.data import pipeline  # video decoding is needed only when training

  return pipeline.default_dataset(
      extra_videos=tuple(config.data.videos), clip_len=config.data.clip_len,
      crop=(config.data.crop, config.data.crop), batch_size=local, seed=seed,
      num_photo_clips=config.data.num_photo_clips, still_share=config.data.get("still_share", 0.0),
      shard_index=shard_index, shard_count=shard_count, worker_count=worker_count, **colour)


def make_optimizer(cfg, total_steps: int, lr: float | None = None) -> optax.GradientTransformation:
  """AdamW with linear warmup and cosine decay, after global-norm clipping."""
  peak = cfg.lr if lr is None else lr
  warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1), end_value=peak * cfg.end_lr_factor)
  return optax.chain(
      optax.clip_by_global_norm(cfg.grad_clip),
      optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay))


def ema_update(ema, params, decay: float):
  return jax.tree.map(lambda e, p: e * decay + p.astype(e.dtype) * (1.0 - decay), ema, params)


def all_finite(*trees) -> jax.Array:
  leaves = [x for t in trees for x in jax.tree.leaves(t)]
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def select(pred: jax.Array, on_true, on_false):
  """Tree-wise where: keeps the old state when an update is rejected."""
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def split_micro(x: jax.Array, accum: int) -> jax.Array:
  """(B, ...) -> (accum, B / accum, ...) for gradient accumulation."""
  if x.shape[0] % accum:
    raise ValueError(f"batch {x.shape[0]} does not split into {accum} micro-batches")
  return x.reshape(accum, x.shape[0] // accum, *x.shape[1:])


ACCUM_LOOPS = ("auto", "unroll", "scan")


def accum_scan(config) -> bool:
  """Whether micro-batches run under lax.scan: `config.grad_accum_loop`, where "auto" scans off CPU.

  Unrolled, XLA:CPU runs the micro-batches about 30 times faster than as a loop
  body; on accelerators a scan compiles one body whatever the count and holds
  one micro-batch's activations at a time.
  """
  loop = config.get("grad_accum_loop", "auto")
  if loop not in ACCUM_LOOPS:
    raise ValueError(f"grad_accum_loop must be one of {ACCUM_LOOPS}, got {loop!r}")
  return loop == "scan" or (loop == "auto" and jax.default_backend() != "cpu")


def accumulate(part, micro: jax.Array, scan: bool):
  """Runs part(i, micro[i]) -> (summed, kept) over the micro-batches.

  Returns the sum of `summed` and the `kept` trees stacked (count, ...), by a
  Python loop (unrolled into the program) or by lax.scan.
  """
  n = micro.shape[0]
  if not scan:
    sums, kept = None, []
    for i in range(n):
      summed, keep = part(i, micro[i])
      sums = summed if sums is None else jax.tree.map(jnp.add, sums, summed)
      kept.append(keep)
    return sums, jax.tree.map(lambda *xs: jnp.stack(xs), *kept)
  shapes = jax.eval_shape(part, 0, micro[0])[0]
  zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)

  def body(sums, xs):
    summed, keep = part(*xs)
    return jax.tree.map(jnp.add, sums, summed), keep

  return jax.lax.scan(body, zeros, (jnp.arange(n), micro))


def device_batch(mesh, local: np.ndarray) -> jax.Array:
  """This process's rows of the global batch -> one global array sharded over the batch axes."""
  return jax.make_array_from_process_local_data(sharding.batch_sharding(mesh, local.ndim), local)


def to_unit_range(frames: jax.Array) -> jax.Array:
  """uint8 pixels -> float32 in [-1, 1]."""
  return frames.astype(jnp.float32) / 127.5 - 1.0


class Preemption:
  """Tells the loop when to save a checkpoint and stop because the job is being preempted.

  The notice is SIGTERM (what TPU maintenance, SLURM and Kubernetes send).
  One process: a handler sets a flag, and a second SIGTERM stops at once. Several
  processes must stop at the same step, so JAX's preemption service (enabled by
  jax.distributed.initialize, which then owns SIGTERM) agrees on one; Orbax's
  `reached_preemption(step)` asks it, and must be called at every step.
  """

  def __init__(self, manager: ocp.CheckpointManager):
    self.manager, self.flag, self.previous = manager, threading.Event(), None
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self.previous = signal.signal(signal.SIGTERM, self._notice) or signal.SIG_DFL

  def _notice(self, signum, frame) -> None:
    del frame
    self.flag.set()
    signal.signal(signum, self.previous)
    self.previous = None

  def requested(self, step: int) -> bool:
    if jax.process_count() > 1:
      return self.manager.reached_preemption(step)
    return self.flag.is_set()

  def close(self) -> None:
    """Gives SIGTERM back to whoever had it before."""
    if self.previous is not None:
      signal.signal(signal.SIGTERM, self.previous)
      self.previous = None


class LogWindow:
  """Averages the step figures between logging steps and writes them with progress.

  Stops the run (FloatingPointError) when `nonfinite` steps fill 3 windows in a
  row: the NaN/inf guard has skipped every update for that long.
  """

  def __init__(self, names, writer, progress: "Progress", log_every: int):
    self.collection = metrics.Collection.create(**{k: metrics.Average.from_output(k) for k in names})
    self.writer, self.progress, self.log_every = writer, progress, log_every
    self.window, self.nonfinite_run = None, 0

  def add(self, figures: dict) -> None:
    update = self.collection.single_from_model_output(**figures)
    self.window = update if self.window is None else self.window.merge(update)

  def write(self, step: int) -> dict:
    scalars = {k: float(v) for k, v in self.window.compute().items()}
    self.window = None
    self.nonfinite_run = self.nonfinite_run + 1 if scalars.get("nonfinite") == 1.0 else 0
    scalars.update(self.progress.report(step, scalars))
    self.writer.write_scalars(step, scalars)
    if self.nonfinite_run >= 3:
      raise FloatingPointError(f"step {step}: the loss or gradients were not finite for "
                               f"{3 * self.log_every} steps; lower optimizer.lr or use float32")
    return scalars


class Progress:
  """A log line every `every` steps: loss figures, steps/s, examples/s and ETA."""

  def __init__(self, total_steps: int, batch_size: int, first_step: int):
    self.total, self.batch = total_steps, batch_size
    self.t0, self.s0 = time.time(), first_step

  def report(self, step: int, scalars: dict) -> dict:
    dt = max(time.time() - self.t0, 1e-9)
    rate = (step - self.s0) / dt
    self.t0, self.s0 = time.time(), step
    eta = (self.total - step) / rate if rate > 0 else float("inf")
    figures = dict(steps_per_sec=rate, examples_per_sec=rate * self.batch)
    text = " ".join(f"{k}={v:.4g}" for k, v in scalars.items())
    logging.info("step %d/%d %s | %.2f steps/s %.1f ex/s | ETA %s", step, self.total, text, rate,
                 rate * self.batch, _hms(eta))
    return figures


def _hms(seconds: float) -> str:
  if not np.isfinite(seconds):
    return "?"
  s = int(seconds)
  return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
