"""The ffmpeg command-line tool that evaluation runs: where it is, what it has, how to call it.

The binary is $PROGVC_FFMPEG when set, else the one shipped in the
imageio-ffmpeg wheel, which carries libvmaf and the anchor encoders (distro
builds often lack libvmaf). PyAV's bundled libraries have no libvmaf either,
so evaluation runs this binary rather than PyAV.
"""

import functools
import os
import subprocess

ENV_VAR = "PROGVC_FFMPEG"
ENCODERS = ("libx264", "libx265", "libsvtav1", "libvvenc")
FILTERS = ("libvmaf", "psnr")


class FFmpegError(RuntimeError):
  """ffmpeg is missing, lacks an encoder or filter, or failed on a command."""


def executable() -> str:
  """Path of the ffmpeg binary to run."""
  path = os.environ.get(ENV_VAR)
  if path:
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
      raise FFmpegError(f"${ENV_VAR}={path!r} is not an executable file")
    return path
  try:
    import imageio_ffmpeg
    return imageio_ffmpeg.get_ffmpeg_exe()
  except (ImportError, RuntimeError) as e:
    raise FFmpegError(f"no ffmpeg binary: set ${ENV_VAR} or install imageio-ffmpeg ({e})") from None


@functools.cache
def _capabilities_of(path: str) -> frozenset[str]:
  found = set()
  # Both listings print one entry per line as "<flags> <name> <description>".
  for listing, names in (("-encoders", ENCODERS), ("-filters", FILTERS)):
    out = subprocess.run([path, "-hide_banner", listing], capture_output=True, text=True, check=False).stdout
    listed = {fields[1] for fields in map(str.split, out.splitlines()) if len(fields) > 1}
    found.update(n for n in names if n in listed)
  return frozenset(found)


def capabilities() -> frozenset[str]:
  """Which of ENCODERS and FILTERS the binary has (asked once per binary)."""
  return _capabilities_of(executable())


def require(name: str) -> None:
  """Raises FFmpegError unless the binary has the encoder or filter `name`."""
  if name not in capabilities():
    raise FFmpegError(f"ffmpeg at {executable()} has no {name}; point ${ENV_VAR} at a build with it")


def run(args: list[str], what: str, cwd: str | None = None) -> str:
  """Runs ffmpeg with `args` (no prompts, errors only) and returns its stderr.

  A non-zero exit raises FFmpegError with `what` and the last line ffmpeg
  printed, which is where it states the cause.
  """
  cmd = [executable(), "-hide_banner", "-nostdin", "-nostats", "-loglevel", "error", "-y", *args]
  proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", cwd=cwd, check=False)
  if proc.returncode != 0:
    lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
    raise FFmpegError(f"{what}: ffmpeg exited with status {proc.returncode}: "
                      f"{lines[-1] if lines else 'no message'}")
  return proc.stderr
