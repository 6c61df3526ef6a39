"""VAR's VQ-VAE, loaded through the converter, gives VAR's own outputs.

The reference vectors (tests/fixtures/var_vqvae_ch32_v4096.npz) were computed
with VAR's PyTorch code for a small model of VAR's architecture.
"""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from progvc_jax import checkpointing, convert_var
from progvc_jax.models.tokenizer import Tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VECTORS = os.path.join(ROOT, "tests", "fixtures", "var_vqvae_ch32_v4096.npz")


def nhwc(a):
  return np.asarray(a).transpose(0, 2, 3, 1)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  out = tmp_path_factory.mktemp("var") / "tokenizer"
  run = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "convert_var_vqvae.py"),
                        "--var", VECTORS, "--out", str(out)], capture_output=True, text=True)
  assert run.returncode == 0, run.stderr
  return checkpointing.load_module(str(out), "tokenizer", Tokenizer), np.load(VECTORS)


@pytest.mark.slow
def test_var_outputs_match(converted):
  model, ref = converted
  assert model.schedule == tuple(ref["meta/patch_nums"])
  f = jax.jit(model.latent)(nhwc(ref["input/x_NCHW"]))
  np.testing.assert_allclose(np.asarray(f), nhwc(ref["expect/f_NCHW"]), atol=1e-4, rtol=0)

  tokens = model.quantizer.encode(f)
  for k, t in enumerate(tokens):
    np.testing.assert_array_equal(np.asarray(t).reshape(2, -1), ref[f"expect/idx_scale{k}"],
                                  err_msg=f"tokens of scale {k + 1}")
  fhats = model.quantizer.fhat_prefixes(tokens)
  for k, fh in enumerate(fhats):
    np.testing.assert_allclose(np.asarray(fh), nhwc(ref["expect/fhat_all_scales_SNCHW"][k]), atol=1e-4, rtol=0)
  np.testing.assert_allclose(np.asarray(model.quantizer.next_scale_inputs(tokens)), ref["expect/var_input_NLC"],
                             atol=1e-4, rtol=0)
  pixels = jax.jit(model.pixels)
  np.testing.assert_allclose(np.asarray(pixels(fhats[-1])), nhwc(ref["expect/rec_full_NCHW"]), atol=1e-3, rtol=0)
  np.testing.assert_allclose(np.asarray(pixels(fhats[3])), nhwc(ref["expect/rec_prefix4_NCHW"]), atol=1e-3, rtol=0)


@pytest.mark.slow
def test_frame_api_matches_var(converted):
  model, ref = converted
  tokens = model.encode(nhwc(ref["input/x_NCHW"]))
  assert [t.shape for t in tokens] == [(2, 1, p, p) for p in model.schedule]
  np.testing.assert_array_equal(np.asarray(tokens[-1]).reshape(2, -1), ref["expect/idx_scale9"])
  rec = model.decode(tokens[:4], 256, 256)
  np.testing.assert_allclose(np.asarray(rec), nhwc(ref["expect/rec_prefix4_NCHW"]), atol=1e-3, rtol=0)


def test_inferred_architecture():
  cfg = convert_var.infer_config(convert_var.load_state_dict(VECTORS))
  assert cfg["ch"] == 32 and cfg["ch_mult"] == (1, 1, 2, 2, 4) and cfg["num_res_blocks"] == 2
  assert cfg["vocab_size"] == 4096 and cfg["z_channels"] == 32 and cfg["num_phi"] == 4
  assert cfg["using_sa"] and cfg["using_mid_sa"]


@pytest.mark.slow
def test_bad_state_dicts_are_reported_by_name():
  sd = convert_var.load_state_dict(VECTORS)
  model = Tokenizer(**convert_var.infer_config(sd), rngs=nnx.Rngs(0))
  bad = dict(sd)
  del bad["decoder.conv_out.bias"]
  bad["encoder.extra.weight"] = np.zeros(3, np.float32)
  bad["quant_conv.weight"] = np.zeros((32, 16, 3, 3), np.float32)
  with pytest.raises(ValueError) as e:
    convert_var.load_into(model, bad)
  msg = str(e.value)
  assert "missing key decoder.conv_out.bias" in msg
  assert "unknown key encoder.extra.weight" in msg
  assert "shape mismatch for quant_conv.weight" in msg
  with pytest.raises(ValueError, match="not a VAR VQ-VAE state dict"):
    convert_var.infer_config({"foo": np.zeros(1)})


@pytest.mark.slow
def test_converter_cli_errors(tmp_path):
  missing = tmp_path / "nope.npz"
  run = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "convert_var_vqvae.py"),
                        "--var", str(missing), "--out", str(tmp_path / "out")], capture_output=True, text=True)
  assert run.returncode != 0
  assert "nope.npz" in run.stderr and "Traceback" not in run.stderr
  assert not (tmp_path / "out").exists()
