"""Training entry point: `python -m progvc_jax.train --config configs/tokenizer.py:tiny --workdir DIR`
(or configs/context.py:tiny with `--config.tokenizer=TOKENIZER_WORKDIR`).

Parses flags and hands over to the trainer of the config's stage. Rerunning
with the same workdir resumes from its latest checkpoint.
"""

import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from progvc_jax.trainers import context as context_trainer
from progvc_jax.trainers import tokenizer as tokenizer_trainer

TRAINERS = {"tokenizer": tokenizer_trainer, "context": context_trainer}

config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/tokenizer.py:tiny.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints and summaries go.", required=True)
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = FLAGS.config
  if config is None:
    sys.exit("train: --config is required, e.g. --config configs/tokenizer.py:tiny")
  if config.stage not in TRAINERS:
    sys.exit(f"train: unknown stage {config.stage!r}; choose from {sorted(TRAINERS)}")
  logging.info("config:\n%s", config)
  logging.info("%d devices (%s), process %d of %d", jax.device_count(), jax.devices()[0].platform,
               jax.process_index(), jax.process_count())
  TRAINERS[config.stage].train_and_evaluate(config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
