"""The codec end to end: export, encode, truncate, decode, exactness across processes, bad input."""

import io
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from progvc_jax import checkpointing
from progvc_jax.codec import bitstream, decoder, encoder
from progvc_jax.codec.model import CodecModel
from progvc_jax.data import samples, video
from progvc_jax.models.tokenizer import Tokenizer
from progvc_jax.models.transformer import I_FRAME, P_FRAME, ContextModel

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOKENIZER = dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, z_channels=8, using_sa=False, using_mid_sa=True,
                 norm_groups=8, vocab_size=128, tile=4)  # pixel tile 8, scales (1, 2, 3, 4)
FRAMES = 3
CALIBRATION = dict(calibration_batches=1)  # export's default is 4; one keeps these tiny models quick


def _params(module, seed, scale):
  """Weights with every path active (adaLN-Zero starts as identity), so the probabilities vary."""
  state = nnx.to_pure_dict(nnx.state(module, nnx.Param))
  leaves, tree = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(tree, [np.asarray(x + scale * jax.random.normal(k, x.shape)) for x, k in zip(leaves, keys)])


def write_checkpoints(folder, seed=0, vocab=128):
  tok_args = dict(TOKENIZER, vocab_size=vocab)
  tok = Tokenizer(**tok_args, rngs=nnx.Rngs(seed))
  ctx_args = dict(vocab_size=vocab, latent_dim=8, schedule=list(tok.schedule), width=32, depth=2, heads=2)
  ctx = ContextModel(**ctx_args, rngs=nnx.Rngs(seed + 1))
  checkpointing.save_params(os.path.join(folder, "tok"), nnx.to_pure_dict(nnx.state(tok, nnx.Param)),
                            "tokenizer", tok_args)
  checkpointing.save_params(os.path.join(folder, "ctx"), _params(ctx, seed, 0.05), "context", ctx_args)
  return os.path.join(folder, "tok"), os.path.join(folder, "ctx")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
  from progvc_jax import export
  folder = tmp_path_factory.mktemp("bundle")
  tok, ctx = write_checkpoints(str(folder))
  path = str(folder / "model.pgvcm")
  export.export(tok, ctx, path, **CALIBRATION)
  return path


@pytest.fixture(scope="module")
def model(model_path):
  return CodecModel.load(model_path)


@pytest.fixture(scope="module")
def clip():
  """The first frames of carphone cut to 170 x 139, which pads to 22 x 18 tiles of 8 pixels."""
  return np.ascontiguousarray(video.read_frames(samples.sample_videos()[1], count=FRAMES)[:, :139, :170])


@pytest.fixture(scope="module")
def full_stream(model, clip):
  return encoder.encode(clip, model, fps=30, gop=2)


@pytest.mark.slow
def test_bundle_is_data_with_a_stable_fingerprint(tmp_path, model_path, model):
  from progvc_jax import export
  tok, ctx = write_checkpoints(str(tmp_path))
  again = export.export(tok, ctx, str(tmp_path / "again.pgvcm"), **CALIBRATION)
  assert again == model.fingerprint  # same weights and arguments: same fingerprint
  tok2, ctx2 = write_checkpoints(str(tmp_path / "other"), seed=5)
  assert export.export(tok2, ctx2, str(tmp_path / "other.pgvcm"), **CALIBRATION) != model.fingerprint
  with pytest.raises(FileExistsError, match="--overwrite"):
    export.export(tok, ctx, str(tmp_path / "again.pgvcm"))
  tok3, _ = write_checkpoints(str(tmp_path / "v64"), vocab=64)
  with pytest.raises(ValueError, match="trained on other codes"):
    export.export(tok3, ctx, str(tmp_path / "mismatch.pgvcm"))


def _version_1_bundle(source: str, path: str) -> None:
  """A float-only bundle as progvc wrote them before the integer path (bundle version 1)."""
  import json
  from progvc_jax.codec import bundle as bundle_lib
  b = bundle_lib.load_bundle(source)
  models = {"tokenizer": b.tokenizer_args, "context": b.context_args}
  arrays = {n: np.asarray(a, np.float32) for n, a in {**bundle_lib._flatten(b.tokenizer_params, "tokenizer"),
                                                       **bundle_lib._flatten(b.context_params, "context")}.items()}
  meta = {"format": bundle_lib.FORMAT, "version": 1, "models": models,
          "fingerprint": bundle_lib.fingerprint(models, arrays, 1).hex()}
  with open(path, "wb") as f:
    np.savez(f, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)


def test_version_1_bundles_are_refused_with_the_fix_and_re_export(tmp_path, model_path, model):
  from progvc_jax import export
  from progvc_jax.codec.bundle import BundleError
  old = str(tmp_path / "v1.pgvcm")
  _version_1_bundle(model_path, old)
  with pytest.raises(BundleError, match=r"version 1, without the integer probability path; re-export it: "
                                        r"python -m progvc_jax.export --bundle"):
    CodecModel.load(old)
  # Re-exported from the same float weights, it is the very bundle export writes from the checkpoints.
  assert export.reexport(old, str(tmp_path / "v2.pgvcm"), **CALIBRATION) == model.fingerprint
  assert CodecModel.load(str(tmp_path / "v2.pgvcm")).fingerprint == model.fingerprint


def test_export_refuses_what_the_integer_path_lacks(tmp_path):
  from progvc_jax import export
  tok, ctx = write_checkpoints(str(tmp_path))
  args, params = checkpointing.load_params(ctx, "context")
  cross = ContextModel(**dict(args, context="cross"), rngs=nnx.Rngs(0))
  checkpointing.save_params(str(tmp_path / "cross"), nnx.to_pure_dict(nnx.state(cross, nnx.Param)), "context",
                            dict(args, context="cross"))
  with pytest.raises(ValueError, match="supports context='additive'"):
    export.export(tok, str(tmp_path / "cross"), str(tmp_path / "x.pgvcm"))
  assert not (tmp_path / "x.pgvcm").exists()


@pytest.mark.slow
def test_round_trip_at_every_scale_count(model, clip):
  for k in range(1, model.num_scales + 1):
    data = encoder.encode(clip, model, fps=30, scales=k, gop=2, rd_lambda=0.0, complete="none")  # nearest codes
    decoded = list(decoder.decode_tokens(model, io.BytesIO(data), complete="none"))
    assert len(decoded) == FRAMES
    for frame, (_, tokens, fhat) in zip(clip, decoded):
      sent = model.tokens(frame, k)
      assert len(tokens) == k
      for a, b in zip(tokens, sent):
        np.testing.assert_array_equal(a, b)
      # The frame is the tokenizer's reconstruction from that prefix.
      ref = model.tokenizer.decode([t.reshape(1, t.shape[0], *(2 * [int(np.sqrt(t.shape[1]))])) for t in sent],
                                   *frame.shape[:2])
      ref = np.clip(np.round((np.asarray(ref[0]) + 1) * 127.5), 0, 255)
      out = model.pixels(fhat, *frame.shape[:2]).astype(np.float64)
      assert np.abs(out - ref).max() <= 1 and np.mean(out != ref) < 1e-3


@pytest.mark.slow
def test_rate_distortion_choice_spends_fewer_bits_and_decodes_to_the_chosen_tokens(model, clip):
  """rd_lambda > 0 trades distortion for bits under the decoder's own probabilities: the higher it is, the
  smaller the stream and the further its frames from the nearest codes', and the decoder recovers
  exactly the tokens the encoder chose (it needs no change). P-frames use rd_lambda times the
  encoder's p_lambda_scale."""
  scale = encoder.DEFAULT_P_LAMBDA_SCALE
  assert scale != 1
  sizes, errors = [], []
  for lam in (0.0, 2.0, 1e4):
    chosen, prev = [], None
    for i, frame in enumerate(clip):
      kind = I_FRAME if i % 2 == 0 else P_FRAME
      coded, prev, _ = encoder.code_frame(model, frame, kind, None if kind == I_FRAME else prev,
                                          model.num_scales, lam if kind == I_FRAME else lam * scale)
      chosen.append([np.asarray(c["tokens"]) for c in prev])
    data = encoder.encode(clip, model, fps=30, gop=2, rd_lambda=lam, complete="none")
    sizes.append(len(data))
    decoded = list(decoder.decode_tokens(model, io.BytesIO(data), complete="none"))
    for (_, tokens, _), sent in zip(decoded, chosen):
      for a, b in zip(tokens, sent):
        np.testing.assert_array_equal(a, b)
    frames = decoder.decode(data, model, complete="none")
    errors.append(float(np.mean((frames.astype(np.float64) - clip) ** 2)))
    if lam == 0.0:
      nearest = [model.tokens(frame) for frame in clip]
      assert all((a == b).all() for n, s in zip(nearest, chosen) for a, b in zip(n, s))
    else:
      assert any((a != b).any() for n, s in zip(nearest, chosen) for a, b in zip(n, s))
  assert sizes[0] > sizes[1] > sizes[2], sizes
  assert sizes[2] < 0.9 * sizes[0], sizes  # 17% smaller measured (this untrained model is near uniform)
  assert errors[0] < errors[2], errors


@pytest.mark.slow
def test_p_frames_take_their_own_rate_distortion_weight(model, clip):
  """p_lambda_scale changes only the P-frames' choice: at 0 they take the nearest codes while the
  I-frames keep theirs."""
  def tokens(data):
    return [[np.asarray(t) for t in tok] for _, tok, _ in decoder.decode_tokens(model, io.BytesIO(data),
                                                                                 complete="none")]
  mixed = tokens(encoder.encode(clip, model, fps=30, gop=2, rd_lambda=2.0, p_lambda_scale=0.0, complete="none"))
  chosen = tokens(encoder.encode(clip, model, fps=30, gop=2, rd_lambda=2.0, complete="none"))
  nearest = [model.tokens(frame) for frame in clip]
  for i, (m, c, n) in enumerate(zip(mixed, chosen, nearest)):
    if i % 2 == 0:  # I-frames: the same choice either way
      assert all((a == b).all() for a, b in zip(m, c))
    else:
      assert all((a == b).all() for a, b in zip(m, n))
      assert any((a != b).any() for a, b in zip(c, n))
  with pytest.raises(ValueError, match="p_lambda_scale must be"):
    encoder.encode(clip, model, fps=30, p_lambda_scale=-1.0)


def test_truncation_equals_encoding_fewer_scales(model, clip, full_stream):
  for k in (1, 2, 3):
    out = io.BytesIO()
    bitstream.truncate(io.BytesIO(full_stream), out, k)
    fewer = encoder.encode(clip, model, fps=30, scales=k, gop=2)
    (cut_header, cut), (few_header, few) = bitstream.read_stream(out.getvalue()), bitstream.read_stream(fewer)
    assert cut == few
    # The encoder of fewer scales names the same completion for the scale counts its stream can have.
    assert [cut_header.completion_of(j) for j in range(1, k + 1)] == [few_header.completion_of(j)
                                                                     for j in range(1, k + 1)]
    a = decoder.decode(out.getvalue(), model, complete="none")
    b = decoder.decode(fewer, model, complete="none")
    np.testing.assert_array_equal(a, b)
    out = io.BytesIO()
    bitstream.truncate(io.BytesIO(encoder.encode(clip, model, fps=30, gop=2, complete="none")), out, k)
    assert out.getvalue() == encoder.encode(clip, model, fps=30, scales=k, gop=2, complete="none")


def test_the_encoder_names_the_completion_that_decodes_best_and_the_decoder_follows_it(model, clip, full_stream):
  from progvc_jax.eval import metrics
  from progvc_jax.eval.completion import parse_setting
  buf = io.BytesIO()
  enc = encoder.Encoder(model, buf, 139, 170, 30, gop=2)
  for frame in clip:
    enc.add(frame)
  enc.finish()
  assert buf.getvalue() == full_stream
  header, _ = bitstream.read_stream(full_stream)
  named, scores = enc.stats["completion"], enc.stats["completion_scores"]
  candidates = encoder.choice_candidates()
  assert candidates == ("none", "mean:t=3/w=0.1", "mean:t=3/w=0.25", "mean:t=3/w=0.5", "mean:t=3")
  assert len(named) == model.num_scales - 1 and set(scores) == {"K=1", "K=2", "K=3"}
  scored = slice(0, min(encoder.CHOICE_FRAMES, 2), encoder.CHOICE_STRIDE)  # the first GOP, if shorter
  for k in (1, 2, 3):
    cut = io.BytesIO()
    bitstream.truncate(io.BytesIO(full_stream), cut, k)
    decoded = {}
    score = scores[f"K={k}"]
    for setting in candidates:
      decoded[setting] = decoder.decode(cut.getvalue(), model, **parse_setting(setting))
      # The scores are the decoder's frames against the source (a weight below 1 mixes the fhat of none and
      # of the whole mean: the same up to float rounding).
      exact = setting in ("none", "mean:t=3")
      assert score[setting]["ssimulacra2"] == pytest.approx(
          metrics.ssimulacra2(clip[scored], decoded[setting][scored]), abs=0 if exact else 0.02)
      assert score[setting]["psnr_y"] == pytest.approx(
          metrics.psnr_y(clip[scored], decoded[setting][scored]), abs=0 if exact else 0.01)
    assert len({s["ssimulacra2"] for s in score.values()}) == len(candidates)
    # The highest SSIMULACRA 2 among those whose luma is no further from the source than none's.
    faithful = [c for c in candidates if score[c]["psnr_y"] >= score["none"]["psnr_y"]]
    best = max(faithful, key=lambda c: score[c]["ssimulacra2"])
    ahead = score[best]["ssimulacra2"] - score["none"]["ssimulacra2"]
    assert named[k - 1] == (best if ahead > encoder.CHOICE_MARGIN else "none")
    assert header.completion_of(k) == named[k - 1]
    # The default decode follows the stream.
    np.testing.assert_array_equal(decoder.decode(cut.getvalue(), model), decoded[named[k - 1]])


def test_the_encoder_names_a_completion_it_is_given(model, clip):
  data = encoder.encode(clip, model, fps=30, gop=2, complete="mean:t=2")
  header, _ = bitstream.read_stream(data)
  assert header.completion == ("mean:t=2",) * 3 and data[4] == 4
  cut = io.BytesIO()
  bitstream.truncate(io.BytesIO(data), cut, 2)
  np.testing.assert_array_equal(decoder.decode(cut.getvalue(), model),
                                decoder.decode(cut.getvalue(), model, complete="mean", temperature=2.0))
  plain = encoder.encode(clip, model, fps=30, gop=2, complete="none")
  assert bitstream.read_stream(plain)[0].completion == () and plain[4] == 3
  assert data[len(header.to_bytes()):] == plain[len(bitstream.read_stream(plain)[0].to_bytes()):]
  for bad, message in (({"complete": "sample"}, "complete must be choose, none, argmax, mean:t=T or mean:t=T/w=W"),
                       ({"complete": "mean:t=3/w=0"}, "complete must be choose"),
                       ({"choice_frames": 0}, "choice_frames must be at least 1")):
    with pytest.raises(ValueError, match=message):
      encoder.encode(clip, model, **bad)


def test_a_weighted_mean_renders_that_share_of_the_expected_residual(model, clip, full_stream):
  cut = io.BytesIO()
  bitstream.truncate(io.BytesIO(full_stream), cut, 2)
  runs = {w: list(decoder.decode_tokens(model, io.BytesIO(cut.getvalue()), complete="mean", temperature=3.0,
                                        weight=w)) for w in (1.0, 0.25)}
  plain = list(decoder.decode_tokens(model, io.BytesIO(cut.getvalue()), complete="none"))
  for (_, tok_1, fhat_1), (_, tok_w, fhat_w), (_, _, fhat_0) in zip(runs[1.0], runs[0.25], plain):
    for a, b in zip(tok_1, tok_w):  # the tokens and so the context do not depend on the weight
      np.testing.assert_array_equal(a, b)
    fhat_0, fhat_1 = np.asarray(fhat_0), np.asarray(fhat_1)
    np.testing.assert_allclose(np.asarray(fhat_w), fhat_0 + 0.25 * (fhat_1 - fhat_0), atol=1e-5)
    assert np.abs(fhat_1 - fhat_0).max() > 1e-2
  # Named by the stream (version 5), it decodes as asked for explicitly; weight 1 is the plain mean.
  data = encoder.encode(clip, model, fps=30, gop=2, complete="mean:t=3/w=0.25")
  assert data[4] == 5 and bitstream.read_stream(data)[0].completion_of(2) == "mean:t=3/w=0.25"
  again = io.BytesIO()
  bitstream.truncate(io.BytesIO(data), again, 2)
  np.testing.assert_array_equal(decoder.decode(again.getvalue(), model),
                                decoder.decode(again.getvalue(), model, complete="mean", temperature=3.0, weight=0.25))
  np.testing.assert_array_equal(decoder.decode(cut.getvalue(), model, complete="mean", weight=1.0),
                                decoder.decode(cut.getvalue(), model, complete="mean"))
  for bad, message in (({"complete": "mean", "weight": 0.0}, "weight of a mean completion must be in"),
                       ({"complete": "mean", "weight": 1.5}, "weight of a mean completion must be in"),
                       ({"complete": "argmax", "weight": 0.5}, "only completion mode 'mean' takes a weight")):
    with pytest.raises(ValueError, match=message):
      decoder.decode(cut.getvalue(), model, **bad)


def test_completion_fills_missing_scales_repeatably(model, full_stream):
  cut = io.BytesIO()
  bitstream.truncate(io.BytesIO(full_stream), cut, 2)
  runs = [list(decoder.decode_tokens(model, io.BytesIO(cut.getvalue()), complete="sample", seed=s)) for s in (0, 0, 1)]
  exact = list(decoder.decode_tokens(model, io.BytesIO(full_stream), complete="none"))
  for frames in runs:
    for (_, tokens, _), (_, ref, _) in zip(frames, exact):
      assert len(tokens) == model.num_scales
      for k in range(2):  # received scales are exact
        np.testing.assert_array_equal(tokens[k], ref[k])
  for (_, a, _), (_, b, _) in zip(runs[0], runs[1]):
    for x, y in zip(a, b):
      np.testing.assert_array_equal(x, y)  # seeded: a decode repeats exactly
  assert any((x != y).any() for (_, a, _), (_, b, _) in zip(runs[0], runs[2]) for x, y in zip(a[2:], b[2:]))


def test_mean_completion_keeps_the_argmax_tokens_and_changes_only_the_pixels(model, full_stream):
  cut = io.BytesIO()
  bitstream.truncate(io.BytesIO(full_stream), cut, 2)
  runs = {mode: list(decoder.decode_tokens(model, io.BytesIO(cut.getvalue()), complete=mode))
          for mode in ("argmax", "mean")}
  for (_, tok_a, fhat_a), (_, tok_m, fhat_m) in zip(runs["argmax"], runs["mean"]):
    assert len(tok_m) == model.num_scales
    for a, m in zip(tok_a, tok_m):  # the context model follows the argmax, on P-frames too
      np.testing.assert_array_equal(a, m)
    assert np.abs(np.asarray(fhat_a) - np.asarray(fhat_m)).max() > 1e-3
  frames = decoder.decode(cut.getvalue(), model, complete="mean")
  assert frames.dtype == np.uint8 and frames.shape[1:] == (139, 170, 3)


def test_real_bits_match_the_cross_entropy(model, clip, tmp_path):
  stats = encoder.encode_file(model, iter(clip), str(tmp_path / "a.pgvc"), 30, gop=2)
  payload_bits = 8 * stats["payload_bytes"]
  assert abs(payload_bits - stats["bits_cross_entropy"]) <= 0.01 * stats["bits_cross_entropy"]
  assert stats["bytes"] == stats["payload_bytes"] + stats["container_bytes"]


def test_a_stream_from_another_model_is_refused(tmp_path, full_stream):
  from progvc_jax import export
  tok, ctx = write_checkpoints(str(tmp_path), seed=7)
  other = CodecModel.load(export.export(tok, ctx, str(tmp_path / "o.pgvcm"), **CALIBRATION) and str(tmp_path / "o.pgvcm"))
  with pytest.raises(bitstream.StreamError, match="made with model"):
    decoder.decode(full_stream, other)


@pytest.mark.filterwarnings("ignore:the stream ends early")  # a cut stream decodes, with this warning
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_streams_decode_or_fail_cleanly(model, full_stream, data):
  raw = bytearray(full_stream)
  for _ in range(data.draw(st.integers(1, 4))):
    op = data.draw(st.sampled_from(["flip", "cut", "delete", "insert"]))
    pos = data.draw(st.integers(0, max(len(raw) - 1, 0)))
    if op == "flip" and raw:
      raw[pos] ^= 1 << data.draw(st.integers(0, 7))
    elif op == "cut":
      del raw[pos:]
    elif op == "delete":
      del raw[pos:pos + data.draw(st.integers(1, 16))]
    else:
      raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
  try:
    frames = decoder.decode(bytes(raw), model, complete="none")
  except bitstream.StreamError:
    return
  assert frames.dtype == np.uint8 and frames.shape[1:] == (139, 170, 3)


def test_command_line_and_python_api_complete_with_one_default():
  import inspect
  from progvc_jax.codec import DEFAULT_COMPLETION, cli
  args = cli.parser().parse_args(["decode", "in.pgvc", "out.y4m"])
  assert {k: getattr(args, k) for k in DEFAULT_COMPLETION} == DEFAULT_COMPLETION
  defaults = {k: p.default for k, p in inspect.signature(decoder.decode_tokens).parameters.items()}
  assert {k: defaults[k] for k in DEFAULT_COMPLETION} == DEFAULT_COMPLETION


# The command line.
def progvc(*args, timeout=600):
  return subprocess.run([sys.executable, "-m", "progvc_jax.codec.cli", *map(str, args)], capture_output=True,
                        text=True, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def cli_runs(model_path, tmp_path_factory):
  """`progvc encode` of a clip, `truncate` to 2 scales, `decode` of both, `info`."""
  d = tmp_path_factory.mktemp("cli")
  src = d / "clip.y4m"
  video.write_video(str(src), video.read_frames(samples.sample_videos()[1], count=FRAMES), 30)
  runs = {
      "encode": progvc("encode", src, d / "a.pgvc", "--model", model_path, "--gop", 2),
      "truncate": progvc("truncate", d / "a.pgvc", d / "b.pgvc", "--scales", 2),
      "decode_a": progvc("decode", d / "a.pgvc", d / "a.y4m", "--model", model_path),
      "decode_b": progvc("decode", d / "b.pgvc", d / "b.mp4", "--model", model_path, "--complete", "none"),
      "info": progvc("info", d / "a.pgvc"),
  }
  return d, runs


@pytest.mark.slow
def test_command_line_encode_truncate_decode_info(cli_runs):
  d, runs = cli_runs
  for name, run in runs.items():
    assert run.returncode == 0, (name, run.stderr[-2000:])
  assert "bpp" in runs["encode"].stdout
  header, _ = bitstream.read_stream((d / "a.pgvc").read_bytes())
  named = ", ".join(f"K={k} {header.completion_of(k)}" for k in (1, 2, 3)) if header.completion else "none"
  assert f"completion it names: {named}" in runs["encode"].stdout
  assert "choosing the completion" in runs["encode"].stderr  # the progress bar says why it waits
  assert f"completion it names: {named}" in runs["info"].stdout
  for out in ("a.y4m", "b.mp4"):
    info = video.probe(str(d / out))
    assert (info.width, info.height, info.num_frames) == (176, 144, FRAMES)
  info = runs["info"].stdout
  assert "bytes per scale" in info and "container's own bytes" in info and "176x144" in info
  header, frames = bitstream.read_stream((d / "a.pgvc").read_bytes())
  per_scale = bitstream.stats(header, frames)["bytes_per_scale"]
  assert " ".join(f"{k + 1}:{b}" for k, b in enumerate(per_scale)) in info
  _, cut = bitstream.read_stream((d / "b.pgvc").read_bytes())
  assert [f.scales for f in cut] == [2] * FRAMES


@pytest.mark.parametrize("case", ["flipped", "magic", "version", "no_bundle", "corrupt_bundle",
                                  "bad_video", "empty_video", "other_model", "bad_rd_lambda", "bad_complete",
                                  "bad_weight"])
@pytest.mark.slow
def test_bad_input_gives_one_line_error_and_no_output(case, cli_runs, model_path, tmp_path):
  d, _ = cli_runs
  good = (d / "a.pgvc").read_bytes()
  stream, model, out = tmp_path / "in.pgvc", model_path, tmp_path / "out.y4m"
  args = None
  if case == "flipped":
    bad = bytearray(good)
    for i in range(len(bad) // 2, len(bad), 7):
      bad[i] ^= 0x5A
    stream.write_bytes(bytes(bad))
  elif case == "magic":
    stream.write_bytes(b"XXXX" + good[4:])
  elif case == "version":
    stream.write_bytes(good[:4] + bytes([99]) + good[5:])
  elif case == "no_bundle":
    stream.write_bytes(good)
    model = tmp_path / "missing.pgvcm"
  elif case == "corrupt_bundle":
    stream.write_bytes(good)
    raw = bytearray(open(model_path, "rb").read())
    raw[len(raw) // 2] ^= 0xFF
    model = tmp_path / "corrupt.pgvcm"
    model.write_bytes(bytes(raw))
  elif case == "other_model":
    from progvc_jax import export
    stream.write_bytes(good)
    tok, ctx = write_checkpoints(str(tmp_path), seed=9)
    model = tmp_path / "other.pgvcm"
    export.export(tok, ctx, str(model), **CALIBRATION)
  elif case == "bad_video":
    src = tmp_path / "bad.mp4"
    src.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    args = ("encode", src, tmp_path / "out.pgvc", "--model", model)
    out = tmp_path / "out.pgvc"
  elif case == "empty_video":
    src = tmp_path / "empty.y4m"
    src.write_bytes(b"YUV4MPEG2 W176 H144 F30:1 Ip A1:1 C420jpeg\n")
    args = ("encode", src, tmp_path / "out.pgvc", "--model", model)
    out = tmp_path / "out.pgvc"
  elif case == "bad_rd_lambda":
    out = tmp_path / "out.pgvc"
    args = ("encode", d / "clip.y4m", out, "--model", model, "--rd-lambda", "-1")
  elif case == "bad_complete":
    out = tmp_path / "out.pgvc"
    args = ("encode", d / "clip.y4m", out, "--model", model, "--complete", "sample")
  elif case == "bad_weight":
    stream.write_bytes(good)
    args = ("decode", stream, out, "--model", model, "--complete", "mean", "--weight", "0")
  run = progvc(*(args or ("decode", stream, out, "--model", model, "--complete", "none")))
  assert run.returncode != 0
  lines = run.stderr.strip().splitlines()
  assert lines and lines[-1].startswith("progvc: error: "), run.stderr[-2000:]
  assert "Traceback" not in run.stderr
  assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.endswith(".partial")]


@pytest.mark.slow
def test_command_line_decodes_a_cut_stream_and_cuts_to_a_budget(cli_runs, model_path, tmp_path):
  d, _ = cli_runs
  good = (d / "a.pgvc").read_bytes()
  (tmp_path / "cut.pgvc").write_bytes(good[:len(good) * 2 // 3])
  run = progvc("decode", tmp_path / "cut.pgvc", tmp_path / "cut.y4m", "--model", model_path, "--complete", "none")
  assert run.returncode == 0, run.stderr[-2000:]
  assert "progvc: note: the stream ends early" in run.stderr
  assert ("repeat the last frame" in run.stderr) == (" 0 not at all" not in run.stderr)
  assert video.probe(str(tmp_path / "cut.y4m")).num_frames == FRAMES
  budget = len(good) * 3 // 4
  run = progvc("truncate", d / "a.pgvc", tmp_path / "b.pgvc", "--bytes", budget, "--layout", "frames")
  assert run.returncode == 0, run.stderr[-2000:]
  header, frames = bitstream.read_stream((tmp_path / "b.pgvc").read_bytes())
  assert header.layout == bitstream.FRAMES and len(frames) == FRAMES
  assert (tmp_path / "b.pgvc").stat().st_size <= budget and f"{(tmp_path / 'b.pgvc').stat().st_size} bytes" in run.stdout
  run = progvc("truncate", d / "a.pgvc", tmp_path / "c.pgvc", "--bytes", 10)
  assert run.returncode == 1 and run.stderr.startswith("progvc: error: 10 bytes cannot hold this stream")
  assert not (tmp_path / "c.pgvc").exists()
  run = progvc("info", tmp_path / "cut.pgvc")
  assert run.returncode == 0 and "layout layered" in run.stdout and "ends early" in run.stdout


@pytest.mark.slow
def test_command_line_decodes_from_a_pipe_gop_by_gop(cli_runs, model_path, tmp_path):
  """`progvc decode - -`: the first GOP's frames come out before the rest of the stream goes in."""
  import threading
  import time
  d, _ = cli_runs
  data = (d / "a.pgvc").read_bytes()
  header, frames = bitstream.read_stream(data)
  first_gop = len(header.to_bytes()) + bitstream.gop_bytes(frames[:2], bitstream.LAYERED)  # GOP 2: frames 0, 1
  proc = subprocess.Popen([sys.executable, "-m", "progvc_jax.codec.cli", "decode", "-", "-", "--model", model_path,
                           "--complete", "none"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, cwd=ROOT)
  out = bytearray()

  def pump():
    while chunk := proc.stdout.read1(1 << 16):
      out.extend(chunk)
  reader = threading.Thread(target=pump, daemon=True)
  reader.start()
  proc.stdin.write(data[:first_gop])
  proc.stdin.flush()
  waited = 0
  while out.count(b"FRAME\n") < 2 and proc.poll() is None and waited < 600:  # a guard against hanging only
    time.sleep(0.5)
    waited += 0.5
  assert out.count(b"FRAME\n") == 2, (bytes(out[:200]), proc.poll())
  proc.stdin.write(data[first_gop:])
  proc.stdin.close()
  assert proc.wait(timeout=600) == 0, proc.stderr.read().decode()[-2000:]
  reader.join()
  run = progvc("decode", d / "a.pgvc", tmp_path / "a.y4m", "--model", model_path, "--complete", "none")
  assert run.returncode == 0
  assert bytes(out) == (tmp_path / "a.y4m").read_bytes()  # the same Y4M as a file


def test_rate_control_keeps_the_most_chunks_that_fit(model, clip, full_stream):
  header, frames = bitstream.read_stream(full_stream)
  assert header.layout == bitstream.LAYERED  # the default
  gop_seconds = 2 / 30

  def first_gop(kept):  # the first GOP (frames 0 and 1) with kept[i] scales of frame i
    return [bitstream.Frame(f.kind, f.chunks[:n]) for f, n in zip(frames[:2], kept)]

  for layout in ("layered", "frames"):
    for kept in ((1, 1), (2, 1), (2, 2), (3, 2)):  # scale-major: frame 0 gains scale k before frame 1 does
      size = bitstream.gop_bytes(first_gop(kept), bitstream.LAYOUTS[layout])
      kbps = (size + 0.5) * 8 / gop_seconds / 1000  # just enough for these chunks, not for one more
      _, got = bitstream.read_stream(encoder.encode(clip, model, fps=30, gop=2, target_kbps=kbps, layout=layout,
                                                    complete="none"))
      assert tuple(f.scales for f in got[:2]) == kept, (layout, kept)
      for a, b in zip(got[:2], frames[:2]):
        assert [c.payload for c in a.chunks] == [c.payload for c in b.chunks[:a.scales]]
  _, tiny = bitstream.read_stream(encoder.encode(clip, model, fps=30, gop=2, target_kbps=0.001))
  assert [f.scales for f in tiny] == [1] * FRAMES  # nothing fits: one scale
  with pytest.raises(ValueError, match="either scales or target_kbps"):
    encoder.encode(clip, model, scales=2, target_kbps=10)


def test_encoding_streams_frame_by_frame(model, clip):
  """Frames leave the encoder as they come in the frame-major layout; the layered layout and rate
  control hold one GOP at most, so memory does not grow with the length of the video."""
  for kwargs, held in (({"scales": 2, "layout": "frames", "complete": "none"}, 0),
                       ({"target_kbps": 50.0, "layout": "frames", "complete": "none"}, 3),
                       ({"scales": 2, "complete": "none"}, 3), ({"target_kbps": 50.0}, 3),
                       ({"scales": 2, "layout": "frames", "choice_frames": 2}, 1)):  # the header waits for 2
    buf = io.BytesIO()
    enc = encoder.Encoder(model, buf, 139, 170, 30, gop=3, **kwargs)
    written = []
    for i in range(7):
      enc.add(clip[i % FRAMES])
      written.append(0 if enc.writer is None else enc.writer.frames - len(enc.writer.held))
    enc.finish()
    assert all(i + 1 - w <= held for i, w in enumerate(written)), written
    assert max(i + 1 - w for i, w in enumerate(written)) == held, written
    assert len(decoder.decode(buf.getvalue(), model, complete="none")) == 7


@pytest.mark.slow
def test_python_api(model_path, clip):
  from progvc_jax import codec
  data = codec.encode(clip, model_path, scales=2, gop=2)
  frames = codec.decode(data, model_path, complete="none")
  assert frames.shape == clip.shape and frames.dtype == np.uint8
  if not os.path.exists(codec.cli.DEFAULT_MODEL):
    with pytest.raises(ValueError, match="no default model"):
      codec.encode(clip)
