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

  The DirectRunner with several workers (--direct_num_workers N, 0 for one
  per CPU) runs as Beam's FnApiRunner, by default with the workers as
  processes (--direct_running_mode multi_processing): Beam's DirectRunner
  would first try its Prism runner, downloading it from GitHub, which does
  not take these options, and Beam's default mode runs the workers in one
  process, one at a time, while decoding, PNG and the codec's models each
  want a core of their own.
  Raises ValueError for flags Beam does not know.
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
  direct = options.view_as(beam_options.DirectOptions)
  if runner.lower() in ("direct", "directrunner") and direct.direct_num_workers != 1:
    options.view_as(beam_options.StandardOptions).runner = "FnApiRunner"
    if not any(a.startswith("--direct_running_mode") for a in args):
      direct.direct_running_mode = "multi_processing"
  return options
