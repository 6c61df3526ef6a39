"""The `progvc` command: encode, decode, truncate and inspect progvc streams.

  progvc encode IN.(mp4|mkv|y4m|avi) OUT.pgvc [--model BUNDLE] [--scales K | --target-kbps R] [--gop N]
                [--layout layered|frames] [--complete choose|none|argmax|mean:t=T[/w=W]]
  progvc decode IN.pgvc|- OUT.(y4m|mp4|mkv|avi)|- [--model BUNDLE] [--complete stream|sample|argmax|mean|none]
                [--seed S]
                [--tile-batch N]
  progvc truncate IN.pgvc OUT.pgvc (--scales K [--frames A:B] | --bytes N | --kbps R) [--layout layered|frames]
  progvc info IN.pgvc

Errors are one line on stderr and a non-zero exit status; outputs are written
to a temporary file and renamed when complete, so a failure never leaves a
partial file where an output should be. `decode -` reads the stream from
standard input and `decode IN -` writes Y4M to standard output, frame by
frame; a stream that ends early decodes, with a note on stderr.
"""

import argparse
import contextlib
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
  # The completion choice runs while the frame after this count is added: the bar says so meanwhile.
  choosing = min(encoder.CHOICE_FRAMES, args.gop) - 1 if args.complete == "choose" else None

  def progress(n: int) -> None:
    bar.set_postfix_str("", refresh=False)
    bar.update(n - bar.n)
    if n == choosing:
      bar.set_postfix_str("choosing the completion (decoding and scoring the first frames)")  # shown at once

  with _progress(info.num_frames, "frame", "encode") as bar:
    stats = encoder.encode_file(model, video.iter_frames(args.input), args.output, fps, scales=args.scales,
                                target_kbps=args.target_kbps, gop=args.gop, layout=args.layout,
                                complete=args.complete,
                                **({} if args.rd_lambda is None else {"rd_lambda": args.rd_lambda}),
                                progress=progress)
  pixels = info.width * info.height * stats["frames"]
  seconds = stats["frames"] / fps
  print(f"{args.output}: {stats['frames']} frames {info.width}x{info.height}, {stats['bytes']} bytes, "
        f"{8 * stats['bytes'] / pixels:.4f} bpp, {8 * stats['bytes'] / seconds / 1000:.1f} kbit/s")
  print(f"  completion it names: {_completion_text(stats['completion'])}")


def _completion_text(completion) -> str:
  """'K=1 none, K=2 mean:t=3, ...' (a frame with K scales is completed so), or 'none'."""
  if not completion or all(c == "none" for c in completion):
    return "none"
  return ", ".join(f"K={k} {c}" for k, c in enumerate(completion, 1))


def cmd_decode(args) -> None:
  from progvc_jax.codec import decoder
  from progvc_jax.data import video
  model = _model(args.model)
  with (open(args.input, "rb") if args.input != "-" else _stdin()) as f:
    reader = decoder.open_stream(f)
    header = reader.header
    with _progress(header.frame_count, "frame", "decode") as bar:
      frames = decoder.decode_frames(model, reader, complete=args.complete, seed=args.seed,
                                     temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                                     weight=args.weight, tile_batch=args.tile_batch)

      def counted():
        for frame in frames:
          yield frame
          bar.update(1)
      video.write_video(args.output, counted(), header.fps_num / header.fps_den)
  if reader.cut is not None:
    repeat = "; those repeat the last frame decoded" if reader.cut.missing else ""
    print(f"progvc: note: {reader.cut.describe()}{repeat}", file=sys.stderr)


def _stdin():
  return contextlib.nullcontext(sys.stdin.buffer)  # not closed when done


def cmd_truncate(args) -> None:
  from progvc_jax.codec import bitstream
  frames = None
  if args.frames:
    if args.scales is None:
      raise UserError("--frames goes with --scales")
    try:
      a, b = (int(v) for v in args.frames.split(":"))
    except ValueError:
      raise UserError(f"--frames must be A:B (frame indices, B excluded), got {args.frames!r}") from None
    frames = (a, b)
  layout = None if args.layout is None else bitstream.LAYOUTS[args.layout]
  kept = {}

  def write(out):
    with open(args.input, "rb") as src:
      kept.update(bitstream.truncate(src, out, args.scales, frames, max_bytes=args.bytes, kbps=args.kbps,
                                     layout=layout))
  _atomic(args.output, write)
  note = ""
  if kept.get("gops_over_budget"):
    note = f"; {kept['gops_over_budget']} of {kept['gops']} GOPs do not fit at one scale and keep one"
  print(f"{args.output}: {kept['bytes']} bytes{note}")


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
    header, frames, cut = bitstream.read_prefix(f.read())
  s = bitstream.stats(header, frames)
  fps = header.fps_num / header.fps_den
  pixels = header.width * header.height * max(len(frames), 1)
  kinds = "".join("IP"[fr.kind] for fr in frames)
  print(f"progvc stream {args.input}")
  layout = bitstream.LAYOUT_NAMES[header.layout]
  print(f"  size {header.width}x{header.height}, {fps:.3f} fps, {header.frame_count} frames, GOP {header.gop}, "
        f"layout {layout}" + (" (each GOP scale by scale: any prefix decodes)" if layout == "layered" else ""))
  if cut is not None:
    print(f"  {cut.describe()}")
  print(f"  model {header.fingerprint.hex()}: latent tile {header.tile} (x{header.downsample} pixels), "
        f"{header.num_scales} scales {list(header.schedule)}, {header.vocab_size} codes")
  print(f"  completion it names: {_completion_text(header.completion)}")
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
  e.add_argument("--layout", choices=("layered", "frames"), default="layered",
                 help="layered (default): each GOP scale by scale, so any prefix of the file decodes (the GOP "
                      "it ends in at fewer scales); frames: frame after frame, for low latency")
  e.add_argument("--rd-lambda", type=float, default=None,
                 help="weight of bits against distortion when choosing tokens on I-frames (P-frames use twice "
                      "it): higher spends fewer bits on details the model does not expect; 0 takes the "
                      "nearest code (default: the encoder's)")
  e.add_argument("--complete", default="choose",
                 help="the completion the stream names for a decoder to fill the scales a cut frame lacks: "
                      "choose (default: for each scale count, whichever of none and mean:t=3 at the weights "
                      "0.1, 0.25, 0.5, 1 scores highest on SSIMULACRA 2 over the first 8 frames without losing "
                      "PSNR-Y, none unless it is ahead by more than 0.05; the header is written after them), "
                      "or one of none, argmax, mean:t=T, mean:t=T/w=W (the share W of the expected residual) "
                      "for every scale count")
  e.set_defaults(run=cmd_encode)
  d = sub.add_parser("decode", help="decode a progvc stream into a video file")
  d.add_argument("input", help="the stream; - reads it from standard input")
  d.add_argument("output", help="the video (.y4m, .mp4, .mkv, .avi); - writes Y4M to standard output")
  d.add_argument("--model", help="codec bundle (default: the model shipped with progvc)")
  from progvc_jax.codec import DEFAULT_COMPLETION as best
  d.add_argument("--complete", choices=("stream", "sample", "argmax", "mean", "none"), default=best["complete"],
                 help="how to fill the scales that were not sent: as the stream names for the frame's scale "
                      "count (stream: the encoder's choice, none if it names nothing), generate them (sample, "
                      "argmax), render the model's expected code (mean) or decode the prefix as it is (none); "
                      f"default {best['complete']}")
  d.add_argument("--seed", type=int, default=0, help="seed of --complete sample")
  d.add_argument("--temperature", type=float, default=best["temperature"],
                 help=f"--complete sample or mean (stream: the stream's): sharpen (<1) or flatten (>1) the model's probabilities; "
                      f"default {best['temperature']:g}")
  d.add_argument("--top-k", type=int, default=best["top_k"],
                 help=f"--complete sample: draw from the k most probable codes only (0: all); default {best['top_k']}")
  d.add_argument("--top-p", type=float, default=best["top_p"],
                 help="--complete sample: draw from the fewest codes whose probability reaches p; "
                      f"default {best['top_p']:g}")
  d.add_argument("--weight", type=float, default=best["weight"],
                 help="--complete mean: the share of the expected residual the frame gets, in (0, 1] (lower "
                      f"keeps it nearer none); default {best['weight']:g}")
  d.add_argument("--tile-batch", type=_positive, default=None,
                 help="run the context model on at most this many tiles at once (less memory; same result)")
  d.set_defaults(run=cmd_decode)
  t = sub.add_parser("truncate", help="drop fine-scale chunks without decoding")
  t.add_argument("input")
  t.add_argument("output")
  cut = t.add_mutually_exclusive_group(required=True)
  cut.add_argument("--scales", type=int, help="keep at most this many scales per frame")
  cut.add_argument("--bytes", type=_positive,
                   help="make the file at most N bytes: each GOP keeps the most chunks, scale by scale, that fit "
                        "its share")
  cut.add_argument("--kbps", type=float, help="cut each GOP to at most this bitrate, scale by scale")
  t.add_argument("--frames", help="with --scales: cut only frames A:B (end at an I-frame)")
  t.add_argument("--layout", choices=("layered", "frames"), help="write in this layout (default: the input's)")
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
    if not (path == "-" and args.command == "decode") and not os.path.isfile(path):
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
