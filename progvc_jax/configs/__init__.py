"""The training configs that ship with progvc: `tokenizer` and `context` (ml_collections).

`--config configs/tokenizer.py:base` names a config file. In a checkout,
configs/ holds thin files that import these; where progvc is installed
without a checkout, `resolve` maps such a path, when no file is there, to
the packaged file of the same name, so the commands in the README work from
any directory.
"""

import os

PACKAGED = ("tokenizer.py", "context.py")


def resolve(spec: str) -> str:
  """'PATH.py[:ARG]' -> the same spec, with PATH replaced by the packaged config when PATH is missing."""
  path, colon, arg = spec.partition(":")
  if os.path.exists(path) or os.path.basename(path) not in PACKAGED:
    return spec
  return os.path.join(os.path.dirname(os.path.abspath(__file__)), os.path.basename(path)) + colon + arg


def resolve_argv(argv: list[str], flag: str = "--config") -> list[str]:
  """Resolves the config file in `--config PATH` and `--config=PATH` (leaving `--config.x=...` alone)."""
  out = list(argv)
  for i, a in enumerate(out):
    if a == flag and i + 1 < len(out):
      out[i + 1] = resolve(out[i + 1])
    elif a.startswith(flag + "="):
      out[i] = flag + "=" + resolve(a[len(flag) + 1:])
  return out
