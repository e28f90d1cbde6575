#!/usr/bin/env bash
# Recipe sentences-en: the `small` model on about 5 hours of synthetic English sentences, with noise synthesis.
# Needs the data kit's Project Gutenberg sentences (../shared/data/text_en_gutenberg; public domain) and espeak-ng.
# Text protocol: the file's last 1,000 lines are test text; voices: en-gb-scotland, en-us-nyc and every fifth
# voice variant are test voices. So the test set has unseen voices and unseen sentences.
# About 5 minutes of synthesis, about 2 hours of training (three stages) and 15 minutes of LM building and tuning
# on 2 CPU cores. Re-running resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
ds=.venv/bin/deepspeech
kit=${DATA_KIT:-../shared/data}
out=${OUT:-runs/sentences-en}
text="$kit/text_en_gutenberg/sentences_norm.txt"
[ -f "$text" ] || { echo "missing $text (the data kit): set DATA_KIT to its folder" >&2; exit 2; }

if [ ! -f data/sentences_en/test/manifest.jsonl ]; then
  $ds synth sentences --lang en --text "$text" --out data/sentences_en --train 5100 --dev 200 --test 500 \
    --min-len 4 --max-len 24 --seed 0
fi
# Three stages, as the shipped model was made: 4 epochs on a 4-epoch cosine schedule, then 2 more resumed on the
# schedule of 6 (the learning rate restarts at 29% of its peak and decays again), then 8 epochs of fine-tuning from
# that model with vocal tract length perturbation (frequency warps 0.9-1.1, for unseen voices), half the peak
# learning rate, weight averaging and no SortaGrad (a curriculum for fresh weights).
$ds train --preset sentences-en --out "$out"
$ds train --preset sentences-en --out "$out" --set epochs=6
$ds train --preset sentences-en --out "$out-ft" --set init_from="$out/best" --set 'augment.vtlp=[0.9,1.1]' \
  --set epochs=8 --set optim.lr=7.5e-4 --set optim.warmup_steps=100 --set optim.ema_decay=0.995 \
  --set data.sortagrad=false
out="$out-ft"
# The LM: a word 3-gram on the Gutenberg training text (not the last 1,000 lines: the test text) without the dev
# sentences (alpha/beta are tuned on dev, so dev must be as unseen to the LM as test is).
$ds lm ngram --text "$text" --lang en --order 3 --test-lines 1000 --exclude data/sentences_en/dev/manifest.jsonl \
  --out "$out/best/lm" --no-arpa
$ds lm tune --model "$out/best" --manifest data/sentences_en/dev/manifest.jsonl
echo "== unseen voices, unseen sentences: greedy, then beam search with the LM =="
$ds eval --model "$out/best" --manifest data/sentences_en/test/manifest.jsonl
$ds eval --model "$out/best" --manifest data/sentences_en/test/manifest.jsonl --decoder beam
