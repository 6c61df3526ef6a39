#!/usr/bin/env bash
# Fine-tunes a codec bundle's decoder for perception and exports the result as a new bundle.
#
#   bash tools/finetune_decoder.sh [BUNDLE] [WORKDIR] [OUT]
#       (defaults: the shipped model, runs/decoder_ft, runs/decoder_ft.pgvcm)
#
# Encoder, quant_conv and codebook stay frozen (train_only), so every token,
# and with them the bundle's context model and rates, stay as they were;
# only the pictures change. The PatchGAN loss is on from the first step
# (weight 0.3 with VQGAN's adaptive weight), and half the frames are decoded
# from a random prefix of k scales. COMPLETION says what those frames get at
# scales k+1..K: `none` (the default, and the shipped model's stage 3:
# nothing, as `progvc decode --complete none` renders a truncated stream), or
# the bundle's own context model's completion as `progvc decode --complete`
# fills it (docs/design.md section 5): argmax, sample[:t=..], or mean[:t=..]
# (expected code vectors). 800 steps of 16 crops of 128 x 128 on the embedded
# data: about 20 minutes on 2 CPU cores with `none`, 35 with a completion.
# An interrupted run resumes when the same command is run again. Compare the
# result with the bundle it came from using tools/eval_rd.py (README, "The
# default model" and "A decoder fine-tuned on completed scales").
set -euo pipefail
cd "$(dirname "$0")/.."
BUNDLE="${1:-progvc_jax/assets/default.pgvcm}"
WORK="${2:-runs/decoder_ft}"
OUT="${3:-runs/decoder_ft.pgvcm}"
COMPLETION="${COMPLETION:-none}"
COMPLETE=()
if [ "$COMPLETION" != none ]; then
  COMPLETE=(--config.complete_with="$BUNDLE" --config.completion="$COMPLETION")
fi
python -m progvc_jax.train --config configs/tokenizer.py:default,steps=800 --config.init_from="$BUNDLE" \
  --config.train_only=decoder,post_quant_conv "${COMPLETE[@]}" \
  --config.loss.gan=0.3 --config.loss.gan_start=0 --config.optimizer.lr=1e-4 --workdir "$WORK"
python -m progvc_jax.export --tokenizer "$WORK" --context "$BUNDLE" --out "$OUT" --overwrite
