"""The `progvc` command: encode, decode, truncate and inspect progvc streams.

  progvc encode IN.(mp4|mkv|y4m|avi) OUT.pgvc [--model BUNDLE] [--scales K | --target-kbps R] [--gop N]
  progvc decode IN.pgvc OUT.(y4m|mp4|mkv|avi) [--model BUNDLE] [--complete sample|argmax|none] [--seed S] [--tile-batch N]
  progvc truncate IN.pgvc OUT.pgvc --scales K [--frames A:B]
  progvc info IN.pgvc

Errors are one line on stderr and a non-zero exit status; outputs are written
to a temporary file and renamed when complete, so a failure never leaves a
partial file where an output should be.
"""

import argparse
import os
import sys
import uuid

DEFAULT_MODEL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "default.pgvcm")


class UserError(ValueError):
  """A problem the user can fix, reported as one line."""


def default_model():
  from progvc_jax.codec.model import CodecModel
  if not os.path.isfile(DEFAULT_MODEL):
    raise UserError("no default model is installed with this progvc; pass --model BUNDLE")
  return CodecModel.load(DEFAULT_MODEL)


def _model(path: str | None):
  from progvc_jax.codec.model import CodecModel
  return default_model() if path is None else CodecModel.load(path)


def _progress(total: int | None, unit: str, desc: str):
  from tqdm import tqdm
  return tqdm(total=total, unit=unit, desc=desc, file=sys.stderr, mininterval=0.5, dynamic_ncols=True)


def _positive(text: str) -> int:
  value = int(text)
  if value < 1:
    raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
  return value


def cmd_encode(args) -> None:
  from progvc_jax.codec import encoder
  from progvc_jax.data import video
  info = video.probe(args.input)
  model = _model(args.model)
  fps = info.fps if info.fps > 0 else 25.0
  with _progress(info.num_frames, "frame", "encode") as bar:
    stats = encoder.encode_file(model, video.iter_frames(args.input), args.output, fps, scales=args.scales,
                                target_kbps=args.target_kbps, gop=args.gop,
                                **({} if args.rd_lambda is None else {"rd_lambda": args.rd_lambda}),
                                progress=lambda n: bar.update(n - bar.n))
  pixels = info.width * info.height * stats["frames"]
  seconds = stats["frames"] / fps
  print(f"{args.output}: {stats['frames']} frames {info.width}x{info.height}, {stats['bytes']} bytes, "
        f"{8 * stats['bytes'] / pixels:.4f} bpp, {8 * stats['bytes'] / seconds / 1000:.1f} kbit/s")


def cmd_decode(args) -> None:
  from progvc_jax.codec import bitstream, decoder
  from progvc_jax.data import video
  model = _model(args.model)
  with open(args.input, "rb") as f:
    header = bitstream.Reader(f).header
  with open(args.input, "rb") as f, _progress(header.frame_count, "frame", "decode") as bar:
    frames = decoder.decode_frames(model, f, complete=args.complete, seed=args.seed, temperature=args.temperature,
                                   top_k=args.top_k, top_p=args.top_p, tile_batch=args.tile_batch)

    def counted():
      for frame in frames:
        yield frame
        bar.update(1)
    video.write_video(args.output, counted(), header.fps_num / header.fps_den)


def cmd_truncate(args) -> None:
  frames = None
  if args.frames:
    try:
      a, b = (int(v) for v in args.frames.split(":"))
    except ValueError:
      raise UserError(f"--frames must be A:B (frame indices, B excluded), got {args.frames!r}") from None
    frames = (a, b)
  _atomic(args.output, lambda out: _truncate(args.input, out, args.scales, frames))


def _truncate(src_path, out, scales, frames):
  from progvc_jax.codec import bitstream
  with open(src_path, "rb") as src:
    bitstream.truncate(src, out, scales, frames)


def _atomic(path: str, write) -> None:
  folder, name = os.path.split(os.path.abspath(path))
  tmp = os.path.join(folder, f".{name}.{uuid.uuid4().hex[:8]}.partial")
  try:
    with open(tmp, "wb") as out:
      write(out)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def cmd_info(args) -> None:
  from progvc_jax.codec import bitstream
  with open(args.input, "rb") as f:
    header, frames = bitstream.read_stream(f.read())
  s = bitstream.stats(header, frames)
  fps = header.fps_num / header.fps_den
  pixels = header.width * header.height * max(len(frames), 1)
  kinds = "".join("IP"[fr.kind] for fr in frames)
  print(f"progvc stream {args.input}")
  print(f"  size {header.width}x{header.height}, {fps:.3f} fps, {len(frames)} frames, GOP {header.gop}")
  print(f"  model {header.fingerprint.hex()}: latent tile {header.tile} (x{header.downsample} pixels), "
        f"{header.num_scales} scales {list(header.schedule)}, {header.vocab_size} codes")
  print(f"  {s['total_bytes']} bytes, {8 * s['total_bytes'] / pixels:.4f} bpp, "
        f"{8 * s['total_bytes'] / max(len(frames), 1) * fps / 1000:.1f} kbit/s; container's own bytes "
        f"{s['container_bytes']} ({100 * s['container_share']:.2f}%)")
  print("  bytes per scale (payload, all frames): "
        + " ".join(f"{k + 1}:{b}" for k, b in enumerate(s["bytes_per_scale"])))
  print("  frames (type, scales sent, bytes):")
  for i, (fr, b) in enumerate(zip(frames, s["bytes_per_frame"])):
    print(f"    {i:5d} {kinds[i]} {fr.scales:2d} {b}")


def set_environment() -> None:
  """The codec's defaults, before jax is imported: the CPU, and a cache of compiled steps."""
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  # Compiled per-scale steps are kept between runs: a second run at the same size starts at once.
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
      os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "progvc", "jax"))


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="progvc", description="progressive generative video codec")
  sub = p.add_subparsers(dest="command", required=True)
  e = sub.add_parser("encode", help="encode a video into a progvc stream")
  e.add_argument("input")
  e.add_argument("output")
  e.add_argument("--model", help="codec bundle (default: the model shipped with progvc)")
  rate = e.add_mutually_exclusive_group()
  rate.add_argument("--scales", type=int, help="scales to send for every frame (default: all)")
  rate.add_argument("--target-kbps", type=float, help="bitrate target; picks the scales of each GOP")
  e.add_argument("--gop", type=int, default=30, help="an I-frame every N frames (default 30)")
  e.add_argument("--rd-lambda", type=float, default=None,
                 help="weight of bits against distortion when choosing tokens on I-frames (P-frames use twice "
                      "it): higher spends fewer bits on details the model does not expect; 0 takes the "
                      "nearest code (default: the encoder's)")
  e.set_defaults(run=cmd_encode)
  d = sub.add_parser("decode", help="decode a progvc stream into a video file")
  d.add_argument("input")
  d.add_argument("output")
  d.add_argument("--model", help="codec bundle (default: the model shipped with progvc)")
  d.add_argument("--complete", choices=("sample", "argmax", "none"), default="sample",
                 help="how to fill the scales that were not sent: generate them (sample, argmax) or decode the prefix as it is (none); default sample")
  d.add_argument("--seed", type=int, default=0, help="seed of --complete sample")
  d.add_argument("--temperature", type=float, default=1.0)
  d.add_argument("--top-k", type=int, default=0)
  d.add_argument("--top-p", type=float, default=1.0)
  d.add_argument("--tile-batch", type=_positive, default=None,
                 help="run the context model on at most this many tiles at once (less memory; same result)")
  d.set_defaults(run=cmd_decode)
  t = sub.add_parser("truncate", help="drop fine-scale chunks without decoding")
  t.add_argument("input")
  t.add_argument("output")
  t.add_argument("--scales", type=int, required=True, help="keep at most this many scales per frame")
  t.add_argument("--frames", help="cut only frames A:B (end at an I-frame)")
  t.set_defaults(run=cmd_truncate)
  i = sub.add_parser("info", help="print a stream's header and sizes")
  i.add_argument("input")
  i.set_defaults(run=cmd_info)
  return p


def main(argv=None) -> int:
  args = parser().parse_args(argv)
  set_environment()
  from progvc_jax.codec.bitstream import StreamError
  from progvc_jax.codec.bundle import BundleError
  from progvc_jax.data.video import VideoError
  for name in ("input",):
    path = getattr(args, name)
    if not os.path.isfile(path):
      print(f"progvc: error: {path} does not exist", file=sys.stderr)
      return 1
  try:
    args.run(args)
  except BrokenPipeError:  # `progvc info ... | head`: the reader has what it wanted
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
  except (UserError, StreamError, BundleError, VideoError, ValueError, OSError) as e:
    print(f"progvc: error: {e}", file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    print("progvc: interrupted", file=sys.stderr)
    return 130
  return 0


if __name__ == "__main__":
  sys.exit(main())
