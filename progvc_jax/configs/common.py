"""Helpers shared by the configs: parsing of `--config file.py:arg` strings, and the fields every stage has."""

import ml_collections


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses "name,key=value,flag" into a ConfigDict over `defaults`.

  A bare word sets the boolean of that name when `defaults` has one, and is
  otherwise taken as the `variant`. Values take the type of their default.
  """
  out = ml_collections.ConfigDict(dict(defaults))
  for item in filter(None, (arg or "").split(",")):
    key, eq, value = item.partition("=")
    if not eq:
      if isinstance(defaults.get(key), bool):
        out[key] = True
      elif "variant" in defaults:
        out.variant = key
      else:
        raise ValueError(f"config argument {key!r} is not one of {sorted(defaults)}")
      continue
    if key not in defaults:
      raise ValueError(f"config argument {key!r} is not one of {sorted(defaults)}")
    kind = type(defaults[key])
    if kind is bool:
      if value.lower() not in ("true", "false", "1", "0"):
        raise ValueError(f"config argument {key}={value!r} is not a boolean")
      out[key] = value.lower() in ("true", "1")
    else:
      try:
        out[key] = kind(value)
      except ValueError:
        raise ValueError(f"config argument {key}={value!r} is not a {kind.__name__}") from None
  return out


def new_config(stage: str, arg: ml_collections.ConfigDict, steps: int, batch: int) -> ml_collections.ConfigDict:
  """The fields every stage starts with: stage, variant, seed, run length, global batch, micro-batches, dtype.

  `arg.steps` and `arg.batch` override the variant's schedule when set; `runlocal`
  makes a 20-step run of batch 4 to check a setup.
  """
  if arg.runlocal:
    steps, batch = 20, 4
  c = ml_collections.ConfigDict()
  c.stage = stage
  c.variant = arg.variant
  c.seed = 0
  c.total_steps = arg.steps or steps
  c.batch_size = arg.batch or batch  # global, over all processes (clips)
  c.grad_accum = 1  # micro-batches per step; the batch is split into this many
  c.grad_accum_loop = "auto"  # "unroll", "scan" (lax.scan), or "auto": unrolled on CPU, scanned elsewhere
  c.compute_dtype = "float32"  # or "bfloat16" (parameters and optimizer state stay float32)
  # What each block keeps for the backward pass: "none", "block" (recompute each block from its
  # input), or a jax.checkpoint_policies name such as "dots_with_no_batch_dims_saveable".
  c.remat = "none"
  return c


def add_mesh(c: ml_collections.ConfigDict) -> None:
  """Mesh sizes (data, fsdp, model; -1 takes the remaining devices), their DCN split, and axis rules."""
  c.mesh = (-1, 1, 1)
  c.mesh_dcn = (1, 1, 1)  # ways each axis splits across slices (multi-slice / multi-host DCN)
  # Logical axis name -> mesh axis (or None: replicated).
  c.sharding_rules = dict(conv_in="fsdp", conv_out="model", embed="fsdp", vocab="model",
                          mlp="model", heads="model", norm=None)
  # Activations at block boundaries: an ordered list of (logical axis, mesh axes), later pairs for
  # the same name being fallbacks (MaxText's logical_axis_rules). The batch splits over both
  # data-parallel axes, or over one where it does not divide by both; heads, MLP hidden units and
  # conv channels split over the model axis (as their weights do); the rest stay whole.
  c.activation_rules = (("batch", ("data", "fsdp")), ("batch", "data"), ("batch", "fsdp"),
                        ("heads", "model"), ("mlp", "model"), ("channels", "model"), ("vocab", "model"),
                        ("length", None), ("embed", None), ("spatial", None))


def data_fields(clip_len: int, crop: int, runlocal: bool) -> dict:
  """The input pipeline's config: the embedded samples plus extra videos, or a TFDS dataset."""
  return dict(clip_len=clip_len, crop=crop, num_photo_clips=256,
              still_share=0.0,  # share of photo clips with a still camera (static scenes)
              # share of clips recoloured (hue turned, chroma scaled up to this factor or down by it)
              colour_share=0.0, colour_max_saturation=1.5,
              worker_count=0 if runlocal else 2,
              videos=(),  # extra video files, read with the embedded samples
              # A TFDS dataset (array_record) to read instead, e.g. from progvc_jax.data.build.
              tfds_name="", tfds_data_dir="", tfds_split="train", tfds_video_key="video")


def add_loop(c: ml_collections.ConfigDict, tiny: bool, runlocal: bool, eval_batches: int) -> None:
  """How often the loop logs, evaluates and checkpoints, and how many checkpoints it keeps."""
  c.log_every = 10 if tiny else 100
  c.eval_every = 100 if tiny else 5000
  c.eval_batches = eval_batches
  c.ckpt_every = 200 if tiny else 5000
  c.keep_ckpts = 3
  if runlocal:
    c.log_every, c.eval_every, c.ckpt_every, c.eval_batches = 5, 10, 10, 1
