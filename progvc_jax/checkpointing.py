"""Parameter checkpoints: one model's weights and the arguments that build it.

A parameter checkpoint is a folder with `progvc.json` (what model, with which
constructor arguments) and `params/` (an Orbax checkpoint of the weights as a
plain nested dict). The trainers start from one (a converted VAR tokenizer, a
frozen tokenizer for the context model) and export reads them.
"""

import json
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

FORMAT = "progvc-params"


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


def load_params(directory: str, kind: str) -> tuple[dict, dict]:
  """Returns (model constructor arguments, params as a nested dict)."""
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
  with ocp.StandardCheckpointer() as ckpt:
    params = ckpt.restore(os.path.abspath(os.path.join(directory, "params")))
  return meta["model"], params


def load_module(directory: str, kind: str, cls) -> nnx.Module:
  """Builds `cls(**model)` and fills it with the checkpoint's weights."""
  model_args, params = load_params(directory, kind)
  module = cls(**model_args, rngs=nnx.Rngs(0))
  state = nnx.state(module, nnx.Param)
  try:
    nnx.replace_by_pure_dict(state, params)
  except (KeyError, ValueError) as e:
    raise ValueError(f"{directory}: weights do not fit {cls.__name__}({model_args}): {e}") from None
  nnx.update(module, state)
  return module
