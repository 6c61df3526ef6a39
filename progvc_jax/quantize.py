"""Post-training quantization: a float context model -> the integer tables the codec runs.

Export calls `integer_model`: it folds what depends only on the frame type
(adaLN modulation and gates, start/position/level embeddings, input biases)
into per-frame-type weights and tables, calibrates each activation's
fraction bits on real token data (the largest magnitude seen, so nothing is
clipped there), and rounds weights to int8 per output channel with a
power-of-two scale, so every rescale in the codec is a rounding shift.
The result is pure data (integer arrays and a small dict of fraction bits),
fingerprinted into the bundle; models/integer_reference.py defines how it
is evaluated.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from progvc_jax.models import integer, transformer
from progvc_jax.models.progressive import teacher_inputs, windowed
from progvc_jax.models.quantizer import area_matrix, bicubic_matrix, phi_index

X_BITS = 20  # the residual stream's largest calibrated value stays below 2^20
INPUT_BITS = 11  # codebook entries (and so fhat) in at most 12 signed bits
BICUBIC_FRAC = 12
MAX_VOCAB = 4096  # frequencies() leaves room for up to this many symbols


def _frac_for(max_abs: float, limit: float) -> int:
  """The most fraction bits f with max_abs * 2^f <= limit."""
  if max_abs <= 0:
    return 0
  return int(math.floor(math.log2(limit / max_abs)))


def _round(x) -> np.ndarray:
  return np.floor(np.asarray(x, np.float64) + 0.5).astype(np.int64)


def quantize_dense(kernel, bias, in_frac: int, out_frac: int | None, n_in: int = 1) -> dict:
  """int8 kernel with a power-of-two scale per output channel, bias in accumulator units, shifts.

  out_frac None: the output keeps the coarsest channel's precision (q and k,
  which are normalised right after).
  """
  k = np.asarray(kernel, np.float64)
  out_shape = k.shape[n_in:]
  k2 = k.reshape(int(np.prod(k.shape[:n_in])), -1)
  top = np.abs(k2).max(0)
  w_frac = np.array([_frac_for(t, 127.0) if t > 0 else 0 for t in top])
  if out_frac is None:
    out_frac = in_frac + int(w_frac.min())
  w_frac = np.minimum(w_frac, out_frac - in_frac + 30)
  q = np.clip(_round(k2 * 2.0 ** w_frac), -127, 127).astype(np.int8)
  b = np.zeros(k2.shape[1]) if bias is None else np.asarray(bias, np.float64).reshape(-1)
  return dict(kernel=q.reshape(k.shape), bias=_round(b * 2.0 ** (in_frac + w_frac)).astype(np.int32).reshape(out_shape),
              shift=(in_frac + w_frac - out_frac).astype(np.int32).reshape(out_shape))


def _probe(model: transformer.ContextModel, x_next, frame_type, prev) -> dict:
  """Largest magnitudes of the tensors the integer path holds, from a teacher-forced float pass."""
  out = {}

  def note(name, v):
    out[name] = jnp.maximum(out.get(name, 0.0), jnp.max(jnp.abs(v)))

  n, length = x_next.shape[0], model.length
  x = model._inputs(x_next, n, 0, length)
  cond = model._cond(frame_type)
  x = x + jnp.where((frame_type == transformer.P_FRAME)[:, None, None], model._previous(prev, 0, length), 0)
  lv = jnp.asarray(model.levels)
  visible = (lv[:, None] >= lv[None, :])[None, None]
  for i, block in enumerate(model.blocks):
    note("x", x)
    shift, scale, gate, shift2, scale2, gate2 = block.modulation(cond)
    ln = transformer.layer_norm(x)
    note(f"{i}/ln1", ln)
    h = ln * (1 + scale) + shift
    k, v = block.attn.keys_values(h)
    note(f"{i}/v", v)
    s = jnp.einsum("nqhd,nkhd->nhqk", block.attn.queries(h), k)
    p = jax.nn.softmax(jnp.where(visible, s, -1e30), -1)
    o = jnp.einsum("nhqk,nkhd->nqhd", p, v)
    note(f"{i}/o", o)
    x = x + gate * block.attn.out(o)
    note("x", x)
    ln = transformer.layer_norm(x)
    note(f"{i}/ln2", ln)
    g = jax.nn.gelu(block.fc1(ln * (1 + scale2) + shift2), approximate=True)
    note(f"{i}/gelu", g)
    x = x + gate2 * block.fc2(g)
  note("x", x)
  note("head_ln", transformer.layer_norm(x))
  return out


def calibrate(quantizer, model: transformer.ContextModel, token_batches) -> dict:
  """Largest magnitudes over batches of (tokens, frame_type, prev_tokens, grid) per tile.

  token_batches yields (tokens [(N, p_k, p_k)], frame_type (N,), prev tokens or None, the
  frames' tile grid (rows, cols)).
  """
  probe = jax.jit(_probe)
  stats: dict = {}
  for tokens, frame_type, prev_tokens, grid in token_batches:
    x_next, _ = teacher_inputs(quantizer, tokens, grid, model.neighbourhood)
    _, prev = teacher_inputs(quantizer, tokens if prev_tokens is None else prev_tokens)
    prev = windowed(prev, model.schedule, grid, model.neighbourhood)
    for name, value in probe(model, x_next, jnp.asarray(frame_type), prev).items():
      stats[name] = max(stats.get(name, 0.0), float(value))
  if not stats:
    raise ValueError("no calibration data")
  return stats


def _folded(model: transformer.ContextModel, frame_type: int):
  """Per-block modulations (shift, scale, gate, ...) and the head's for one frame type, as float64."""
  cond = model.frame_type[...][frame_type][None]
  blocks = [np.asarray(b.ada(jax.nn.silu(cond)))[0].astype(np.float64) for b in model.blocks]
  head = np.asarray(model.head_ada(jax.nn.silu(cond)))[0].astype(np.float64)
  return blocks, head


def _param(p) -> np.ndarray:
  return np.asarray(p[...], np.float64)


def check_supported(tokenizer, model: transformer.ContextModel) -> None:
  """ValueError if the integer path cannot run these models."""
  if model.context != "additive":
    raise ValueError(f"the integer path supports context='additive' models, not {model.context!r}")
  if tokenizer.quantizer.vocab_size > MAX_VOCAB:
    raise ValueError(f"the integer path supports codebooks of up to {MAX_VOCAB} codes, "
                     f"not {tokenizer.quantizer.vocab_size}")


def integer_model(tokenizer, model: transformer.ContextModel, stats: dict) -> tuple[dict, dict]:
  """(tables, formats) of the integer path for a tokenizer and its context model."""
  check_supported(tokenizer, model)
  q = tokenizer.quantizer
  sched, n = tuple(q.schedule), q.tile
  heads, width = model.blocks[0].attn.heads, model.width
  # fhat as the context model sees it.
  codebook = _param(q.codebook)
  e_frac = _frac_for(np.abs(codebook).max(), 2.0 ** INPUT_BITS)
  kernels = []
  for conv in q.phi:
    k = _param(conv.kernel) * q.phi_ratio
    k[1, 1] += (1.0 - q.phi_ratio) * np.eye(k.shape[2])
    kernels.append((k, _param(conv.bias) * q.phi_ratio))
  # 144 taps of 13-bit values stay inside int32.
  phi_frac = _frac_for(max(np.abs(k).max() for k, _ in kernels), 2.0 ** 31 / (9 * k.shape[2] * 2.0 ** 13))
  tables = dict(
      codebook=_round(codebook * 2.0 ** e_frac).astype(np.int32),
      bicubic={k: _round(bicubic_matrix(n, p).astype(np.float64) * 2 ** BICUBIC_FRAC).astype(np.int32)
               for k, p in enumerate(sched) if p != n},
      phi={j: dict(kernel=_round(k * 2.0 ** phi_frac).astype(np.int32),
                   bias=_round(b * 2.0 ** (phi_frac + e_frac)).astype(np.int32)) for j, (k, b) in enumerate(kernels)},
      area={p: dict(sum=(area_matrix(p, n) > 0).astype(np.int32),
                    count=np.outer((area_matrix(p, n) > 0).sum(1), (area_matrix(p, n) > 0).sum(1)).astype(np.int32))
            for p in sched if p != n},
      exp2=_round(2.0 ** (integer.EXP_FRAC - np.arange(256) / 256)).astype(np.int32),
  )
  # The residual stream and the input embeddings.
  x_frac = _frac_for(stats["x"], 2.0 ** X_BITS)
  levels = np.asarray(model.levels)
  pos_level = _param(model.pos) + _param(model.level)[levels]
  base_i = pos_level + _param(model.embed_in.bias)
  base_i[0] = pos_level[0] + _param(model.start)
  base_p = base_i + pos_level + _param(model.embed_prev.bias)
  tables["base"] = _round(np.stack([base_i, base_p]) * 2.0 ** x_frac).astype(np.int32)
  tables["prev_token"] = _round(_param(model.prev_token) * 2.0 ** x_frac).astype(np.int32)
  n_in = len(model.embed_in.in_shape)  # 2 with a neighbourhood: (window, C)
  tables["embed_in"] = quantize_dense(_param(model.embed_in.kernel), None, e_frac, x_frac, n_in)
  tables["embed_prev"] = quantize_dense(_param(model.embed_prev.kernel), None, e_frac, x_frac, n_in)
  tables["temperature"] = np.stack([
      _round(np.exp(np.minimum(_param(b.attn.log_scale), np.log(100.0))) * np.log2(np.e) * 2 ** integer.Z_FRAC)
      for b in model.blocks]).astype(np.int32)
  # Blocks, with each frame type's modulation folded into its weights.
  formats = dict(heads=heads, neighbourhood=model.neighbourhood, copy_prev=model.copy_gate is not None, e_frac=e_frac, bicubic_frac=BICUBIC_FRAC, phi_frac=phi_frac, x_frac=x_frac,
                 head_ln_frac=_frac_for(stats["head_ln"], 127.0),
                 phi_of_scale=[phi_index(k, len(sched), len(q.phi)) for k in range(len(sched))], blocks=[])
  for i, block in enumerate(model.blocks):
    h_frac = _frac_for(stats[f"{i}/gelu"], 127.0)
    fb = dict(ln1_frac=_frac_for(stats[f"{i}/ln1"], 127.0), ln2_frac=_frac_for(stats[f"{i}/ln2"], 127.0),
              v_frac=_frac_for(stats[f"{i}/v"], 127.0), h_frac=h_frac, g_frac=min(8, h_frac + 4))
    fb["o_frac"] = max(_frac_for(stats[f"{i}/o"], 127.0), fb["v_frac"])
    formats["blocks"].append(fb)
    xs = np.arange(-(1 << (integer.GELU_BITS - 1)), 1 << (integer.GELU_BITS - 1)) / 2.0 ** fb["g_frac"]
    gelu = 0.5 * xs * (1 + np.tanh(np.sqrt(2 / np.pi) * (xs + 0.044715 * xs ** 3)))
    tables.setdefault("gelu", {})[i] = np.clip(_round(gelu * 2.0 ** h_frac), -127, 127).astype(np.int32)
  tables["blocks"] = {i: {} for i in range(len(model.blocks))}
  tables["head"] = {}
  for ft, name in enumerate(integer.FRAME_TYPES):
    mods, head_mod = _folded(model, ft)
    for i, (block, m, fb) in enumerate(zip(model.blocks, mods, formats["blocks"])):
      a = block.attn
      qk, kv = _param(a.q.kernel), _param(a.kv.kernel)
      # h = LN(x) (1 + scale) + shift, so h W + b = LN(x) ((1 + scale) W) + (shift W + b).
      fold = lambda w, b, j: ((1 + m[j + 1])[:, None] * w.reshape(width, -1),
                              m[j] @ w.reshape(width, -1) + b.reshape(-1))
      wq, bq = fold(qk, _param(a.q.bias), 0)
      wk, bk = fold(kv[:, 0], _param(a.kv.bias)[0], 0)
      wv, bv = fold(kv[:, 1], _param(a.kv.bias)[1], 0)
      w1, b1 = fold(_param(block.fc1.kernel), _param(block.fc1.bias), 3)
      gate, gate2 = m[2], m[5]
      tables["blocks"][i][name] = dict(
          q=quantize_dense(wq, bq, fb["ln1_frac"], None),
          k=quantize_dense(wk, bk, fb["ln1_frac"], None),
          v=quantize_dense(wv, bv, fb["ln1_frac"], fb["v_frac"]),
          out=quantize_dense(_param(a.out.kernel).reshape(width, width) * gate, _param(a.out.bias) * gate,
                             fb["o_frac"], x_frac),
          fc1=quantize_dense(w1, b1, fb["ln2_frac"], fb["g_frac"]),
          fc2=quantize_dense(_param(block.fc2.kernel) * gate2, _param(block.fc2.bias) * gate2, fb["h_frac"], x_frac))
    to_z = np.log2(np.e) * 2 ** integer.Z_FRAC  # logits in 1/256 bit
    kernel, bias = _param(model.head.kernel), _param(model.head.bias)
    if model.copy_gate is not None:  # the "same as before" boost is the head's last output
      kernel = np.concatenate([kernel, _param(model.copy_gate.kernel)], 1)
      bias = np.concatenate([bias, _param(model.copy_gate.bias)])
    wh = (1 + head_mod[1])[:, None] * kernel
    bh = head_mod[0] @ kernel + bias
    tables["head"][name] = quantize_dense(wh * to_z, bh * to_z, formats["head_ln_frac"], 0)
  return tables, formats
