"""Helpers shared by the configs: parsing of `--config file.py:arg` strings."""

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
