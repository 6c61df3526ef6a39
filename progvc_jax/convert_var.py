"""Loads VAR's public VQ-VAE weights into a progvc Tokenizer.

VAR's state dict names map onto ours by renaming alone: `quantize` is our
`quantizer`, its `embedding` our `codebook`, `quant_resi.qresi_ls.i` our
`phi.i`, `downsample`/`upsample` our `resample`, and a conv's `weight` our
`kernel` (OIHW -> HWIO) or a GroupNorm's `weight` our `scale`. The
architecture (channels, levels, blocks, attention, codebook size) is read off
the shapes, so no config has to be written by hand.
"""

import re

import numpy as np
from flax import nnx

from progvc_jax.models.tokenizer import Tokenizer

# VAR's training statistic, not a weight.
IGNORED = ("quantize.ema_vocab_hit_SV",)


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads VAR weights from a .npz (VAR's names, optionally under `param/`) or a .pth."""
  if str(path).endswith(".npz"):
    with np.load(path, allow_pickle=False) as data:
      prefix = "param/" if any(k.startswith("param/") for k in data.files) else ""
      return {k[len(prefix):]: np.asarray(data[k], np.float32)
              for k in data.files if k.startswith(prefix)}
  try:
    import torch
  except ImportError as e:
    raise ValueError(f"{path}: reading a .pth needs torch (pip install torch); "
                     "or convert it to an .npz of the same names") from e
  sd = torch.load(path, map_location="cpu", weights_only=True)
  for key in ("model", "state_dict", "vae"):
    if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
      sd = sd[key]
  return {k: v.float().numpy() for k, v in sd.items() if v.is_floating_point()}


def infer_config(sd: dict[str, np.ndarray]) -> dict:
  """Tokenizer keyword arguments that match the shapes of a VAR state dict."""
  try:
    ch = sd["encoder.conv_in.weight"].shape[0]
    levels = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"encoder\.down\.(\d+)\.", k)))
    blocks = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"encoder\.down\.0\.block\.(\d+)\.", k)))
    ch_mult = tuple(sd[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] // ch for i in range(levels))
    vocab, dim = sd["quantize.embedding.weight"].shape
    num_phi = len({k.split(".")[3] for k in sd if k.startswith("quantize.quant_resi.qresi_ls.")})
  except (KeyError, ValueError) as e:
    raise ValueError(f"not a VAR VQ-VAE state dict (could not read its architecture: {e})") from e
  return dict(ch=ch, ch_mult=ch_mult, num_res_blocks=blocks, z_channels=dim, vocab_size=vocab,
              using_sa=any(f"encoder.down.{levels - 1}.attn." in k for k in sd),
              using_mid_sa="encoder.mid.attn_1.norm.weight" in sd,
              norm_groups=32, num_phi=num_phi, phi_ratio=0.5)


def our_path(name: str) -> tuple:
  """Our state path for one of VAR's parameter names."""
  name = name.replace("quantize.embedding.weight", "quantizer.codebook")
  name = name.replace("quantize.quant_resi.qresi_ls.", "quantizer.phi.")
  name = re.sub(r"\.(down|up)sample\.", ".resample.", name)
  parts = [int(p) if p.isdigit() else p for p in name.split(".")]
  if parts[-1] == "weight":
    parts[-1] = "kernel" if re.search(r"conv|qkv|proj_out|nin_shortcut|phi", name) else "scale"
  return tuple(parts)


def _convert(name: str, value: np.ndarray) -> np.ndarray:
  return value.transpose(2, 3, 1, 0) if value.ndim == 4 else value  # OIHW -> HWIO


def load_into(model: Tokenizer, sd: dict[str, np.ndarray]) -> Tokenizer:
  """Copies VAR weights into `model`; unknown, missing or mis-shaped names are an error."""
  state = nnx.state(model, nnx.Param)
  ours = {tuple(path): var for path, var in nnx.to_flat_state(state)}
  problems, seen = [], set()
  for name, value in sd.items():
    if name in IGNORED:
      continue
    path = our_path(name)
    if path not in ours:
      problems.append(f"unknown key {name}")
      continue
    seen.add(path)
    value = _convert(name, value)
    if value.shape != ours[path].shape:
      problems.append(f"shape mismatch for {name}: file {value.shape}, model {ours[path].shape}")
      continue
    ours[path].set_value(np.asarray(value, np.float32))
  problems += [f"missing key {'.'.join(map(str, p))}" for p in sorted(ours, key=str) if p not in seen]
  if problems:
    raise ValueError("VAR weights do not fit the tokenizer: " + "; ".join(problems))
  return model
