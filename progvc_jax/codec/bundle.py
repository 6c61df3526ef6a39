"""Codec bundles: the exported tokenizer and context model in one data-only file.

A bundle is an uncompressed .npz (a zip of .npy arrays) holding
  meta                    JSON (as uint8): format, version, both models'
                          constructor arguments, the integer path's
                          fraction bits, and the fingerprint;
  tokenizer/<param path>  the tokenizer's EMA weights, float32;
  context/<param path>    the context model's EMA weights, float32;
  integer/<table path>    the integer probability path (quantize.py), int8
                          weights and int32 tables: what the codec codes with.
It is read with `np.load(allow_pickle=False)`, so loading one never unpickles
or executes anything from it. The fingerprint is a hash of the arguments and
every array (name, dtype, shape, bytes); every stream records it, and a
bundle whose contents no longer match its fingerprint is refused as corrupt.
"""

import hashlib
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass

import numpy as np
from flax import nnx

from progvc_jax.models.tokenizer import Tokenizer
from progvc_jax.models.transformer import ContextModel

FORMAT, VERSION = "progvc-bundle", 2
FLOAT_VERSIONS = (1,)  # bundles with float weights only: re-export them (export.py --bundle)
_INT_DTYPES = (np.dtype(np.int8), np.dtype(np.int32))
PARTS = {"tokenizer": Tokenizer, "context": ContextModel}


class BundleError(ValueError):
  """A bundle that is missing, corrupt, or not a progvc bundle."""


def _flatten(tree: dict, prefix: str) -> dict:
  """{"a": {"0": x}} -> {"prefix/a/0": x}."""
  out = {}
  for key, value in tree.items():
    name = f"{prefix}/{key}"
    out.update(_flatten(value, name) if isinstance(value, dict) else {name: value})
  return out


def _unflatten(arrays: dict[str, np.ndarray], prefix: str) -> dict:
  tree: dict = {}
  for name, value in arrays.items():
    parts = name.split("/")
    if parts[0] != prefix:
      continue
    node = tree
    for p in parts[1:-1]:
      node = node.setdefault(int(p) if p.isdigit() else p, {})
    node[int(parts[-1]) if parts[-1].isdigit() else parts[-1]] = value
  return tree


def fingerprint(models: dict, arrays: dict[str, np.ndarray], version: int = VERSION) -> bytes:
  """8 bytes identifying the models' arguments and weights exactly."""
  h = hashlib.sha256(json.dumps({"format": FORMAT, "version": version, "models": models},
                                sort_keys=True).encode())
  for name in sorted(arrays):
    a = arrays[name]
    h.update(f"{name}|{a.dtype.str}|{a.shape}".encode())
    h.update(np.ascontiguousarray(a).tobytes())
  return h.digest()[:8]


# Context-model arguments added after bundles were first written, at the value those bundles had.
# Written into every new bundle and filled in when an older one is read, so that exporting and
# re-exporting the same weights give the same bundle.
CONTEXT_ADDED = dict(neighbourhood=1, copy_prev=False)


def write_bundle(path: str, tokenizer_args: dict, tokenizer_params: dict, context_args: dict,
                 context_params: dict, integer_formats: dict, integer_tables: dict) -> bytes:
  """Writes a bundle atomically (a temporary file renamed into place); returns its fingerprint."""
  models = json.loads(json.dumps({"tokenizer": tokenizer_args, "context": {**CONTEXT_ADDED, **context_args},
                                  "integer": integer_formats}))
  arrays = {name: np.ascontiguousarray(np.asarray(value, np.float32)) for name, value in
            {**_flatten(tokenizer_params, "tokenizer"), **_flatten(context_params, "context")}.items()}
  for name, value in _flatten(integer_tables, "integer").items():
    value = np.asarray(value)
    if value.dtype not in _INT_DTYPES:
      raise ValueError(f"integer table {name} is {value.dtype}, not int8 or int32")
    arrays[name] = np.ascontiguousarray(value)
  fp = fingerprint(models, arrays)
  meta = {"format": FORMAT, "version": VERSION, "models": models, "fingerprint": fp.hex()}
  folder = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(prefix=".bundle-", suffix=".npz", dir=folder)
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; a bundle is a shareable file
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return fp


@dataclass
class Bundle:
  """A loaded bundle: constructor arguments and weights of both models."""
  path: str
  fingerprint: bytes
  tokenizer_args: dict
  context_args: dict
  tokenizer_params: dict
  context_params: dict
  integer_formats: dict | None = None  # None in a float-only (version 1) bundle
  integer_tables: dict | None = None

  def tokenizer(self) -> Tokenizer:
    return _build(Tokenizer, self.tokenizer_args, self.tokenizer_params, self.path, "tokenizer")

  def context_model(self) -> ContextModel:
    return _build(ContextModel, self.context_args, self.context_params, self.path, "context model")


def _build(cls, args: dict, params: dict, path: str, what: str):
  try:
    abstract = nnx.eval_shape(lambda: cls(**args, rngs=nnx.Rngs(0)))
  except (TypeError, ValueError) as e:
    raise BundleError(f"{path}: its {what} arguments are invalid: {e}") from None
  graphdef, state = nnx.split(abstract)
  want = {k: v.shape for k, v in _flatten(nnx.to_pure_dict(state), "").items()}
  have = {k: v.shape for k, v in _flatten(params, "").items()}
  if want != have:
    bad = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
    raise BundleError(f"{path}: its {what} weights do not fit its arguments ({', '.join(bad[:3])})")
  nnx.replace_by_pure_dict(state, params)
  return nnx.merge(graphdef, state)


def load_bundle(path: str, *, float_only: bool = False) -> Bundle:
  """Reads and verifies a bundle; any problem is a BundleError with a one-line message.

  float_only: also accept version-1 bundles, which hold the float models
  without the integer path (for re-export); the codec never passes it.
  """
  if not os.path.isfile(path):
    raise BundleError(f"model bundle {path} does not exist")
  try:
    with np.load(path, allow_pickle=False) as z:
      arrays = {name: z[name] for name in z.files}
  except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
    raise BundleError(f"{path} is not a readable progvc model bundle ({type(e).__name__}: {e})") from None
  try:
    meta = json.loads(arrays.pop("meta").tobytes().decode())
    if meta.get("format") != FORMAT:
      raise BundleError(f"{path} is not a progvc model bundle")
    version = meta.get("version")
    if version in FLOAT_VERSIONS and not float_only:
      raise BundleError(f"{path} is bundle version {version}, without the integer probability path; re-export "
                        f"it: python -m progvc_jax.export --bundle {path} --out NEW.pgvcm")
    if version != VERSION and version not in FLOAT_VERSIONS:
      raise BundleError(f"{path} is bundle version {version}; this progvc reads version {VERSION}")
    models, recorded = meta["models"], bytes.fromhex(meta["fingerprint"])
    tok_args, ctx_args = dict(models["tokenizer"]), {**CONTEXT_ADDED, **models["context"]}
    formats = models.get("integer") if version == VERSION else None
  except BundleError:
    raise
  except (KeyError, ValueError, TypeError, AttributeError, UnicodeDecodeError) as e:
    raise BundleError(f"{path} has no valid bundle description ({type(e).__name__}: {e})") from None
  for name, a in arrays.items():
    if a.dtype not in (_INT_DTYPES if name.startswith("integer/") else (np.dtype(np.float32),)):
      raise BundleError(f"{path}: {name} is {a.dtype}, not a weight or table type")
  if fingerprint(models, arrays, version) != recorded:
    raise BundleError(f"{path} is corrupt: its contents do not match its fingerprint {recorded.hex()}")
  if version == VERSION and (not isinstance(formats, dict) or not any(n.startswith("integer/") for n in arrays)):
    raise BundleError(f"{path} has no integer probability path")
  return Bundle(path=path, fingerprint=recorded, tokenizer_args=tok_args, context_args=ctx_args,
                tokenizer_params=_unflatten(arrays, "tokenizer"), context_params=_unflatten(arrays, "context"),
                integer_formats=formats, integer_tables=_unflatten(arrays, "integer") if formats else None)
