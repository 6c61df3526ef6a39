"""The progvc encoder: frames -> tile tokens -> range-coded chunks -> container.

Frames are coded one at a time (memory does not grow with the video): the
tokenizer gives every tile's K token maps; the context model's incremental
step (the decoder's own function) gives the probabilities of scale k, with
which scale k's tokens are range coded into one chunk for all tiles of the
frame. Those probabilities are integer frequencies (models/integer.py), so
any machine decodes the stream. The first frame of each GOP is an I-frame, the rest P-frames on the
previous frame.

Scale counts: `scales` sends the first K' scales of every frame. With
`target_kbps` each GOP is coded at all K scales and cut to the most chunks,
scale-major, whose exact byte count fits the GOP's budget
(bitstream.cut_gop: the first frames at k scales, the rest at k - 1;
dropping chunks is all truncation does, so these sizes are exact); a GOP
that does not fit even at one scale is sent at one scale.

Completion: the stream names how a decoder should fill the scales a cut
frame lacks (bitstream.Header.completion). By default ("choose") the encoder
decides for each scale count k: it decodes its first frames cut to k scales
with each candidate (`none`, and `mean:t=3` at the weights CHOICE_WEIGHTS)
and keeps the one with the highest SSIMULACRA 2 against the source, `none`
unless another is ahead by more than CHOICE_MARGIN (choose_completion); the
header is written once that is known, after the first CHOICE_FRAMES frames
(or the first GOP, if shorter).

Layout (bitstream): LAYERED by default, so that any prefix of the file
decodes (the GOPs it reaches, the last one at the scales that arrived);
FRAMES for low latency.
"""

import dataclasses
import fractions
import io
import os
import uuid
from typing import Callable, Iterable, Iterator

import numpy as np

from progvc_jax.codec import bitstream, entropy
from progvc_jax.codec.model import CodecModel
from progvc_jax.models.transformer import I_FRAME, P_FRAME

DEFAULT_GOP = 30
DEFAULT_LAYOUT = "layered"
# The default rate-distortion weight of token choice (code_frame, CodecModel.rd_choice) on I-frames,
# and the factor P-frames multiply it by: about the best BD-rate at equal MS-SSIM on carphone and bikes
# (the shipped model, against the nearest codes; README, "The default model"). P-frames take a larger
# weight because their tokens are cheap where they repeat the previous frame, and an I-frame's
# quality is inherited by the P-frames that follow it.
DEFAULT_RD_LAMBDA = 0.05
DEFAULT_P_LAMBDA_SCALE = 2.0  # `progvc encode --help` says "twice" (cli.py does not import this module to parse)
# The completion the encoder names in the stream: "choose", or one setting for every scale count.
DEFAULT_COMPLETE = "choose"
# What "choose" compares, on the first CHOICE_FRAMES frames: `none`, and `mean` at CHOICE_TEMPERATURE with
# each of CHOICE_WEIGHTS (the share of the expected residual the pixels get). Whole (weight 1), mean:t=3 is
# ahead of none on ColorVideoVDP at every K of carphone and bikes but behind on SSIMULACRA 2 where the prefix
# is very coarse, and behind on both on bigbuckbunny at K = 1 to 3 (README, "Completing the scales that were
# not sent"); a smaller weight keeps the frame nearer `none`'s and is ahead at most of those points.
# A completion's gain over a GOP's first frames shrinks along the GOP's P-frames (carphone at K = 3: +0.03
# SSIMULACRA 2 over 4 frames, -0.39 over 8, -1.0 over 12), so the choice looks at 8, scoring every
# CHOICE_STRIDE-th; and `none` (which decodes fastest) is kept unless another beats it by more than
# CHOICE_MARGIN. A candidate whose luma is further from the source than `none`'s (lower PSNR-Y) is not taken:
# on a very coarse prefix SSIMULACRA 2 goes far below its scale (-400 on bigbuckbunny at K = 1) and there
# rewards completions that ColorVideoVDP, like PSNR-Y, scores below `none`.
CHOICE_TEMPERATURE = 3.0
CHOICE_WEIGHTS = (0.1, 0.25, 0.5, 1.0)
CHOICE_FRAMES = 8
CHOICE_STRIDE = 2
CHOICE_MARGIN = 0.05  # SSIMULACRA 2 points


def _frames_checked(frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
  shape = None
  for i, f in enumerate(frames):
    f = np.asarray(f)
    if f.dtype != np.uint8 or f.ndim != 3 or f.shape[2] != 3:
      raise ValueError(f"frame {i}: expected uint8 (H, W, 3), got {f.dtype} {f.shape}")
    if shape is None:
      shape = f.shape
    elif f.shape != shape:
      raise ValueError(f"frame {i}: size {f.shape[:2]} differs from the first frame's {shape[:2]}")
    yield f


def code_frame(model: CodecModel, frame: np.ndarray, kind: int, prev, scales: int,
               rd_lambda: float = DEFAULT_RD_LAMBDA):
  """One frame's chunks at `scales` scales.

  rd_lambda > 0 chooses each scale's tokens for distortion plus rd_lambda
  times their bits under the decoder's probabilities (CodecModel.rd_choice),
  so that tokens the context model expects, such as the previous frame's, win
  where they are almost as close as the nearest code. The decoder is the same.
  Returns (Frame, this frame's context for the next, cross-entropy bits of each scale).
  """
  grid = model.tile_grid(*frame.shape[:2])
  if rd_lambda > 0:
    f = model.latent_tiles(frame)
    state = {"fhat": np.zeros(f.shape, np.float32)}
  else:
    tokens = model.tokens(frame, scales)
  chunks, bits = [], []

  def choose(k, weights):
    if rd_lambda > 0:
      chosen, state["fhat"] = model.rd_choice(k, f, state["fhat"], weights, rd_lambda)
    else:
      chosen = tokens[k]
    weights = np.asarray(weights).reshape(-1, weights.shape[-1])
    sym = chosen.reshape(-1)
    chunks.append(bitstream.Chunk(entropy.encode_chunk(sym, weights), bitstream.token_checksum(sym)))
    bits.append(entropy.cross_entropy_bits(sym, weights))
    return chosen

  _, ctx, _ = model.steps.run(grid[0] * grid[1], kind, prev, choose, scales=scales, grid=grid)
  return bitstream.Frame(kind, chunks), ctx, bits


def choice_candidates(temperature: float = CHOICE_TEMPERATURE,
                      weights: tuple[float, ...] = CHOICE_WEIGHTS) -> tuple[str, ...]:
  """The completions choose_completion compares: "none", then "mean:t=T/w=W" for each weight (canonical)."""
  return ("none",) + tuple(bitstream.canonical_completion(f"mean:t={temperature:g}/w={w:g}") for w in weights)


def choose_completion(model: CodecModel, header: bitstream.Header, coded: list[bitstream.Frame],
                      sources: list[np.ndarray], temperature: float = CHOICE_TEMPERATURE,
                      weights: tuple[float, ...] = CHOICE_WEIGHTS, stride: int = CHOICE_STRIDE,
                      margin: float = CHOICE_MARGIN) -> tuple[tuple[str, ...], dict]:
  """For each scale count k below the model's maximum (and at most the scales coded), the candidate
  (choice_candidates) whose decode of `coded` cut to k scales scores the highest mean SSIMULACRA 2 against
  `sources` (the frames coded, from an I-frame) over every stride-th frame, among those whose PSNR-Y is not
  below `none`'s; `none` unless that beats it by more than `margin`.

  One decode per k, the decoder's own with the whole mean, gives both ends: its fhat, and `none`'s from the
  k scales' tokens it yields (a mean completion's tokens and context follow the argmax, so the scales sent
  and the next frame's context are those of a decode with `none`; CodecModel.fhat sums them as that decode
  does). The weight w's fhat is none's + w * (whole mean's - none's): the decoder's frames up to float rounding.

  Returns (completion per k = 1..K-1, "none" where no frame can have k scales;
  {"K=k": {candidate: {"ssimulacra2": score, "psnr_y": score}}}).
  """
  from progvc_jax.codec import decoder
  from progvc_jax.eval import metrics
  names = choice_candidates(temperature, weights)
  scored = range(0, len(coded), stride)
  source = np.stack([sources[i] for i in scored])
  most = min(f.scales for f in coded)
  chosen, scores = [], {}
  for k in range(1, model.num_scales):
    if k > most:
      chosen.append("none")
      continue
    stream = bitstream.write_stream(header, [bitstream.Frame(f.kind, f.chunks[:k]) for f in coded])
    fhat = {"none": [], "mean": []}
    frames = decoder.decode_tokens(model, io.BytesIO(stream), complete="mean", temperature=temperature,
                                   partial=False)
    for i, (_, tokens, f) in enumerate(frames):
      if i % stride == 0:
        fhat["mean"].append(np.asarray(f))
        fhat["none"].append(np.asarray(model.fhat(tokens[:k])))
    scores[f"K={k}"] = {}
    for name, w in zip(names, (0.0,) + tuple(weights)):
      mixed = fhat["mean"] if w == 1 else fhat["none"] if w == 0 else \
          [a + np.float32(w) * (b - a) for a, b in zip(fhat["none"], fhat["mean"])]
      decoded = np.stack([model.pixels(f, header.height, header.width) for f in mixed])
      scores[f"K={k}"][name] = {"ssimulacra2": metrics.ssimulacra2(source, decoded),
                                "psnr_y": metrics.psnr_y(source, decoded)}
    score = scores[f"K={k}"]
    faithful = [n for n in names if score[n]["psnr_y"] >= score["none"]["psnr_y"]]
    best = max(faithful, key=lambda n: score[n]["ssimulacra2"])
    chosen.append(best if score[best]["ssimulacra2"] > score["none"]["ssimulacra2"] + margin else "none")
  return tuple(chosen), scores


class Encoder:
  """Streams frames into a container file object.

  Usage: `enc = Encoder(model, f, height, width, fps, ...)`, `enc.add(frame)` per
  frame, `enc.finish()`. `stats` holds bytes and cross-entropy bits.
  """

  def __init__(self, model: CodecModel, f, height: int, width: int, fps: float | fractions.Fraction, *,
               scales: int | None = None, target_kbps: float | None = None, gop: int = DEFAULT_GOP,
               frame_count: int = 0, rd_lambda: float = DEFAULT_RD_LAMBDA,
               p_lambda_scale: float = DEFAULT_P_LAMBDA_SCALE, layout: str = DEFAULT_LAYOUT,
               complete: str = DEFAULT_COMPLETE, choice_frames: int = CHOICE_FRAMES):
    """rd_lambda: the token choice's weight of bits on I-frames (0: the nearest codes); P-frames use
    rd_lambda * p_lambda_scale. layout: "layered" (a layered GOP is written when it ends) or "frames".
    complete: "choose" (choose_completion on the first choice_frames frames, at most a GOP), or the
    completion the stream names for every scale count ("none", "argmax", "mean:t=T", "mean:t=T/w=W")."""
    if scales is not None and target_kbps is not None:
      raise ValueError("give either scales or target_kbps, not both")
    k = model.num_scales
    if scales is not None and not 1 <= scales <= k:
      raise ValueError(f"scales must be in 1..{k} for this model, got {scales}")
    if target_kbps is not None and not target_kbps > 0:
      raise ValueError(f"target_kbps must be positive, got {target_kbps}")
    if not 0 <= rd_lambda < float("inf"):
      raise ValueError(f"rd_lambda must be a finite number >= 0, got {rd_lambda}")
    if not 0 <= p_lambda_scale < float("inf"):
      raise ValueError(f"p_lambda_scale must be a finite number >= 0, got {p_lambda_scale}")
    if gop < 1:
      raise ValueError(f"gop must be at least 1, got {gop}")
    if layout not in bitstream.LAYOUTS:
      raise ValueError(f"layout must be one of {', '.join(bitstream.LAYOUTS)}, got {layout!r}")
    if complete != "choose":
      try:
        complete = bitstream.canonical_completion(complete)
      except bitstream.StreamError:
        raise ValueError(f"complete must be choose, none, argmax, mean:t=T or mean:t=T/w=W (0.01 <= T <= 100, "
                         f"0.01 <= W <= 1), got {complete!r}") from None
    if choice_frames < 1:
      raise ValueError(f"choice_frames must be at least 1, got {choice_frames}")
    rate = fractions.Fraction(fps).limit_denominator(1001)
    if rate <= 0:
      raise ValueError(f"fps must be positive, got {fps}")
    self.model, self.gop, self.rate = model, gop, rate
    self.rd_lambda = {I_FRAME: float(rd_lambda), P_FRAME: float(rd_lambda) * float(p_lambda_scale)}
    self.scales = k if scales is None else scales
    self.budget = None if target_kbps is None else target_kbps * 1000 / 8 / float(rate)  # bytes a frame
    self.header = bitstream.Header(width=width, height=height, fps_num=rate.numerator, fps_den=rate.denominator,
                                   frame_count=frame_count, gop=gop, tile=model.tile, downsample=model.downsample,
                                   schedule=model.schedule, vocab_size=model.vocab_size, colour=0,
                                   fingerprint=model.fingerprint, layout=bitstream.LAYOUTS[layout])
    self.f, self.writer = f, None
    self.height, self.width = height, width
    rows, cols = model.tile_grid(height, width)
    self.tiles = rows * cols
    self.count, self.prev, self.pending = 0, None, []
    self.stats = {"bits_cross_entropy": 0.0, "tokens": 0}
    self.probe: list[np.ndarray] | None = None  # the source frames choose_completion will score
    if complete == "choose":
      self.probe, self.choice_frames = [], min(choice_frames, gop)
    else:
      self._start((complete,) * (k - 1))

  def _start(self, completion: tuple[str, ...]) -> None:
    """Writes the header, naming `completion`."""
    self.header = dataclasses.replace(self.header, completion=completion)
    self.writer = bitstream.Writer(self.f, self.header)
    self.stats["completion"] = list(completion)

  def _choose(self) -> None:
    coded = [c for c, _ in self.pending[:len(self.probe)]]
    completion, scores = choose_completion(self.model, self.header, coded, self.probe)
    self.stats["completion_scores"] = scores
    self.probe = None
    self._start(completion)

  def add(self, frame: np.ndarray) -> None:
    if frame.shape[:2] != (self.height, self.width):
      raise ValueError(f"frame {self.count}: size {frame.shape[:2]} differs from {(self.height, self.width)}")
    kind = I_FRAME if self.count % self.gop == 0 else P_FRAME
    if kind == I_FRAME:
      self._flush_gop()
    full = self.model.num_scales if self.budget is not None else self.scales
    coded, self.prev, bits = code_frame(self.model, frame, kind, self.prev, full, self.rd_lambda[kind])
    self.pending.append((coded, bits))
    self.count += 1
    if self.probe is not None:
      self.probe.append(frame)
      if len(self.probe) == self.choice_frames:
        self._choose()
    if self.budget is None:
      self._flush_gop()

  def _flush_gop(self) -> None:
    if not self.pending or self.writer is None:  # the header waits for choose_completion
      return
    frames = [bitstream.Frame(coded.kind, coded.chunks[:self.scales]) for coded, _ in self.pending]
    if self.budget is not None:
      frames, _ = bitstream.cut_gop(frames, self.budget * len(frames), self.writer.header.layout)
    for frame, (_, bits) in zip(frames, self.pending):
      self.writer.write(frame)
      self.stats["bits_cross_entropy"] += sum(bits[:frame.scales])
      self.stats["tokens"] += self.tiles * sum(p * p for p in self.model.schedule[:frame.scales])
    if self.budget is not None:
      self.writer.end_gop()  # the GOP is whole: nothing waits for the next I-frame
    self.pending = []

  def finish(self) -> None:
    if self.count == 0:
      raise ValueError("no frames to encode")
    if self.writer is None:
      self._choose()  # fewer frames than choice_frames
    self._flush_gop()
    self.writer.finish()


def encode_file(model: CodecModel, frames: Iterable[np.ndarray], path: str, fps: float, *,
                progress: Callable[[int], None] | None = None, **kwargs) -> dict:
  """Encodes frames into the file `path`, written whole or not at all; returns the encoder's stats."""
  folder, name = os.path.split(os.path.abspath(path))
  tmp = os.path.join(folder, f".{name}.{uuid.uuid4().hex[:8]}.partial")
  try:
    with open(tmp, "wb") as f:
      enc = None
      for frame in _frames_checked(frames):
        if enc is None:
          enc = Encoder(model, f, frame.shape[0], frame.shape[1], fps, **kwargs)
        enc.add(frame)
        if progress:
          progress(enc.count)
      if enc is None:
        raise ValueError("the video has no frames")
      enc.finish()
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return dict(enc.stats, frames=enc.count, bytes=os.path.getsize(path),
              container_bytes=enc.writer.container_bytes, payload_bytes=enc.writer.payload_bytes)


def encode(frames: np.ndarray, model: CodecModel, *, fps: float = 25.0, **kwargs) -> bytes:
  """Python API: uint8 frames (T, H, W, 3) -> a progvc stream."""
  buf = io.BytesIO()
  enc = None
  for frame in _frames_checked(frames):
    if enc is None:
      enc = Encoder(model, buf, frame.shape[0], frame.shape[1], fps, **kwargs)
    enc.add(frame)
  if enc is None:
    raise ValueError("no frames to encode")
  enc.finish()
  return buf.getvalue()
