"""Apache Beam for progvc's corpus pipelines (the dataset build, batch encoding): importing it, and the
pipeline options a command line gives.

Beam is an optional extra (`pip install "progvc[beam]"`); nothing else in
progvc imports it. Options come as Beam's own examples take them: the
command's flags first, then any Beam flags (`--runner DataflowRunner
--project P --region R --temp_location gs://...`, `--name value` or
`--name=value`). A flag neither the command nor Beam knows is an error, not
silently dropped as Beam would.
"""

INSTALL = 'pip install "progvc[beam]"'


class BeamMissing(ImportError):
  """Apache Beam is not installed."""


def import_beam():
  """The apache_beam module; BeamMissing, saying how to install it, where it is not installed."""
  try:
    import apache_beam
  except ImportError:
    raise BeamMissing(f"Apache Beam is not installed: {INSTALL}") from None
  return apache_beam


def pipeline_options(runner: str, args: list[str]):
  """Beam's PipelineOptions for `runner` and the other Beam flags in args.

  The DirectRunner runs as Beam's FnApiRunner: Beam's DirectRunner would
  first try its Prism runner, downloading it from GitHub, which runs the
  workers in the launching process and does not read the --direct_*
  options. With several workers (--direct_num_workers N, 0 for
  one per CPU) and no --direct_running_mode, the workers are processes
  (multi_processing): Beam's default mode runs them in one process, one at a
  time, while decoding, PNG and the codec's models each want a core of their
  own. Raises ValueError for flags Beam does not know.
  """
  import_beam()
  from apache_beam.options import pipeline_options as beam_options
  options = beam_options.PipelineOptions([f"--runner={runner}", *args])
  unknown = set(options.get_all_options(retain_unknown_options=True)) - set(
      beam_options.PipelineOptions([]).get_all_options())
  if unknown:
    flags = [a.split("=")[0] for a in args if a.startswith("--")
             and a[2:].split("=")[0].replace("-", "_") in unknown]
    raise ValueError(f"unknown flags (neither this command's nor Beam's): {' '.join(flags)}")
  if runner.lower() in ("direct", "directrunner"):
    options.view_as(beam_options.StandardOptions).runner = "FnApiRunner"
    direct = options.view_as(beam_options.DirectOptions)
    if direct.direct_num_workers != 1 and not any(a.startswith("--direct_running_mode") for a in args):
      direct.direct_running_mode = "multi_processing"
  return options
