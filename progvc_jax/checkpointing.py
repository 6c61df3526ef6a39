"""Checkpoints: training runs (state + data iterator) and parameter checkpoints.

Training checkpoints live in WORKDIR/checkpoints/<step>/ and hold two items
saved together by one Orbax CheckpointManager, asynchronously, keeping the
last N: `state` (the whole train state, restored onto whatever mesh the
restoring run has) and `data` (the grain iterator's position), so a restarted
run resumes at the same step with the same data order.

A parameter checkpoint is a folder with `progvc.json` (what model, with which
constructor arguments) and `params/` (an Orbax checkpoint of the weights as a
plain nested dict). A training workdir carries the same `progvc.json`, so
wherever weights are read (`load_params`: a frozen tokenizer for the context
model, an initial tokenizer, export) either folder works; from a workdir the
EMA weights of its latest checkpoint are read.
"""

import json
import os
import shutil

import grain
import jax
from etils import epath
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

FORMAT = "progvc-params"


def _plain_saves_on_cpu() -> None:
  """On CPU, saves copy each array whole instead of splitting the copy among its replicas.

  Orbax's replica-parallel save runs a small slicing program per array, which
  on CPU devices costs more than it saves: the first save of the small tokenizer
  on 8 host devices took 13.8 s with it and 2.3 s without. Accelerators keep
  Orbax's default.
  """
  if jax.default_backend() == "cpu":
    ocp.type_handlers.register_type_handler(jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False),
                                            override=True)


def train_manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  """The run's CheckpointManager: asynchronous saves, the last `keep` kept."""
  _plain_saves_on_cpu()
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), "checkpoints"),
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True,
                                           create=True),
      item_names=("state", "data"))


def save_train(manager: ocp.CheckpointManager, step: int, state, data_iter) -> None:
  """Starts an asynchronous save of the train state and the data iterator."""
  args = {"state": ocp.args.StandardSave(state)}
  if data_iter is not None:
    args["data"] = grain.checkpoint.CheckpointSave(data_iter)
  manager.save(step, args=ocp.args.Composite(**args))


def restore_train(manager: ocp.CheckpointManager, abstract_state, data_iter, step: int | None = None):
  """Restores the latest (or given) step onto the shardings of `abstract_state`.

  `abstract_state` holds jax.ShapeDtypeStruct leaves with the shardings the
  restoring run wants, so a checkpoint from one mesh restores onto another.
  The data iterator is moved to its saved position in place, also when the
  checkpoint was saved by another number of processes: every process takes
  the same number of batches of one global stream (data/pipeline.py), so the
  position carries over as long as the global batch is the same. Returns the
  state, or None when there is no checkpoint.
  """
  step = manager.latest_step() if step is None else step
  if step is None:
    return None
  args = {"state": ocp.args.StandardRestore(abstract_state)}
  data_dir = epath.Path(manager.directory) / str(step) / "data"
  own = data_dir / f"process_{jax.process_index()}-of-{jax.process_count()}.json"
  saved = sorted(data_dir.glob("process_*-of-*.json")) if data_dir.exists() else []
  if data_iter is not None and (own.exists() or not saved):
    args["data"] = grain.checkpoint.CheckpointRestore(data_iter)
  state = manager.restore(step, args=ocp.args.Composite(**args))["state"]
  if data_iter is not None and saved and not own.exists():
    data_iter.set_state(json.loads(saved[0].read_text()))
  return state


def save_params(directory: str, params: dict, kind: str, model: dict) -> None:
  """Writes a parameter checkpoint; the folder appears only once complete."""
  directory = os.path.abspath(directory)
  if os.path.exists(directory):
    raise FileExistsError(f"{directory} already exists")
  tmp = directory + ".partial"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  try:
    with ocp.StandardCheckpointer() as ckpt:
      ckpt.save(os.path.join(tmp, "params"), jax.tree.map(np.asarray, params))
      ckpt.wait_until_finished()
    with open(os.path.join(tmp, "progvc.json"), "w") as f:
      json.dump({"format": FORMAT, "kind": kind, "model": model}, f, indent=1)
    os.rename(tmp, directory)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def write_run_info(workdir: str, kind: str, model: dict) -> None:
  """Records in a training workdir what model it trains (read back by load_params)."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "progvc.json")
  with open(path + ".tmp", "w") as f:
    json.dump({"format": FORMAT, "kind": kind, "model": _jsonable(model)}, f, indent=1)
  os.replace(path + ".tmp", path)


def _jsonable(tree):
  if isinstance(tree, dict):
    return {k: _jsonable(v) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)):
    return [_jsonable(v) for v in tree]
  return tree


def _from_bundle(path: str, kind: str) -> tuple[dict, dict]:
  """(arguments, float params) of one of a codec bundle's two models ("tokenizer" or "context")."""
  from progvc_jax.codec import bundle as bundle_lib  # the codec's reader, only where a bundle is named
  b = bundle_lib.load_bundle(path, float_only=True)
  if kind not in ("tokenizer", "context"):
    raise ValueError(f"a codec bundle holds a tokenizer and a context model, not a {kind!r}")
  args, params = (b.tokenizer_args, b.tokenizer_params) if kind == "tokenizer" else (b.context_args, b.context_params)
  return dict(args), _int_keys(params)


def load_model_args(directory: str, kind: str) -> dict:
  """The model constructor arguments a parameter checkpoint, training workdir or codec bundle
  (a .pgvcm file: its float weights) records."""
  if os.path.isfile(directory):
    return _from_bundle(directory, kind)[0]
  meta_path = os.path.join(directory, "progvc.json")
  try:
    with open(meta_path) as f:
      meta = json.load(f)
  except FileNotFoundError:
    raise FileNotFoundError(f"{directory} is not a progvc parameter checkpoint (no progvc.json)") from None
  except json.JSONDecodeError as e:
    raise ValueError(f"{meta_path} is corrupt: {e}") from None
  if meta.get("format") != FORMAT or meta.get("kind") != kind:
    raise ValueError(f"{directory} holds a {meta.get('kind')!r} checkpoint, not a {kind!r} one")
  return meta["model"]


def load_params(directory: str, kind: str) -> tuple[dict, dict]:
  """Returns (model constructor arguments, params as a nested dict of numpy arrays).

  `directory` is a parameter checkpoint, a training workdir (then the EMA
  weights of its latest checkpoint) or a codec bundle file.
  """
  if os.path.isfile(directory):
    return _from_bundle(directory, kind)
  model_args = load_model_args(directory, kind)
  directory = os.path.abspath(directory)
  if os.path.isdir(os.path.join(directory, "params")):
    with ocp.StandardCheckpointer() as ckpt:
      params = ckpt.restore(os.path.join(directory, "params"))
    return model_args, _int_keys(params)
  manager = ocp.CheckpointManager(os.path.join(directory, "checkpoints"), item_names=("state", "data"))
  step = manager.latest_step()
  if step is None:
    raise FileNotFoundError(f"{directory} is a training workdir without a finished checkpoint yet")
  path = os.path.join(directory, "checkpoints", str(step), "state")
  with ocp.PyTreeCheckpointer() as ckpt:
    ema = ckpt.metadata(path).item_metadata.tree["ema"]
    as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), ema)
    state = ckpt.restore(path, args=ocp.args.PyTreeRestore(
        item={"ema": ema}, restore_args={"ema": as_numpy}, partial_restore=True))
  return model_args, _int_keys(state["ema"])


def _int_keys(tree):
  """Orbax stores the integer keys of NNX lists as strings; this turns them back."""
  if isinstance(tree, dict):
    return {int(k) if isinstance(k, str) and k.isdigit() else k: _int_keys(v) for k, v in tree.items()}
  return tree


def load_params_like(directory: str, kind: str, like: dict) -> dict:
  """The checkpoint's params, checked name by name and shape by shape against `like`."""
  return fit_params(load_params(directory, kind)[1], like, directory, kind)


def fit_params(params: dict, like: dict, directory: str, kind: str) -> dict:
  """Loaded params (from `directory`) in the structure of `like`, checked name by name and shape by shape."""
  ours = dict(jax.tree_util.tree_flatten_with_path(like)[0])
  theirs = dict(jax.tree_util.tree_flatten_with_path(params)[0])
  bad = sorted(jax.tree_util.keystr(k) for k in set(ours) | set(theirs)
               if k not in ours or k not in theirs or ours[k].shape != theirs[k].shape)
  if bad:
    raise ValueError(f"{directory} does not fit the configured {kind}: {', '.join(bad[:5])}")
  return jax.tree_util.tree_map_with_path(lambda k, _: theirs[k], like)


def load_module(directory: str, kind: str, cls) -> nnx.Module:
  """Builds `cls(**model)` from the checkpoint's arguments and fills in its weights."""
  module = cls(**load_model_args(directory, kind), rngs=nnx.Rngs(0))
  state = nnx.state(module, nnx.Param)
  nnx.replace_by_pure_dict(state, load_params_like(directory, kind, nnx.to_pure_dict(state)))
  nnx.update(module, state)
  return module
