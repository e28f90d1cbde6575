#!/usr/bin/env bash
# Recipe an4-en: a DS2 model (3 bidirectional GRUs of 320, 4.4M parameters) on CMU AN4 from the data kit
# (../shared/data/en_an4: 16 kHz Opus, CMU AN4 terms). Train: AN4 train less the six dev speakers (869 utterances,
# 39 min); dev: those six (79); test: AN4's own test set (130, 10 unseen speakers), never trained or tuned on.
# Then a word 4-gram of the training transcripts (dev perplexity 15.1 against 15.8 for a 3-gram, 14.8 for a 5-gram),
# its weights tuned on dev, and test scored greedy and with beam search.
# About 1 h 50 min on 2 idle CPU cores: one epoch measured 45 s (72 s on one core) x 140 epochs, plus a few minutes
# of LM tuning and evaluation. About 20 min on one GPU, estimated, not measured: the batches are still prepared on
# the CPU (about 4 s an epoch) and the LM tuning stays on it. Re-running resumes training (or, once finished, just
# re-evaluates).
# `recipes/an4.sh import` only writes the manifests data/an4/{train,dev,test}.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
ds=.venv/bin/deepspeech
kit=${DATA_KIT:-../shared/data}
src="$kit/en_an4"
out=${OUT:-runs/an4-en}
stage=${1:-all}
[ "$stage" = all ] || [ "$stage" = import ] || { echo "usage: recipes/an4.sh [import]" >&2; exit 2; }
[ -f "$src/manifest.jsonl" ] || { echo "AN4 not found: $src/manifest.jsonl (the data kit's en_an4; set DATA_KIT to the kit folder)" >&2; exit 2; }

[ "$stage" = import ] || echo "== an4-en: about 1 h 50 min on 2 idle CPU cores (45 s an epoch x 140, measured), about 20 min on one GPU (estimated) =="
# The kit's split key gives the protocol; each manifest is written atomically, so one found is whole.
for split in train dev test; do
  [ -f "data/an4/$split.jsonl" ] || $ds data import kit "$src" --split "$split" --out "data/an4/$split.jsonl" --no-progress
done
if [ "$stage" = import ]; then exit 0; fi
$ds train --preset an4-en --out "$out"
# The LM: AN4 train transcripts only (96 words; dev is tuned on, so it stays unseen). best/ is rewritten by
# training, which drops lm/ and decoder.json: what is found here belongs to the final weights (lm.json is
# written last, decoder.json once tuning is done).
[ -f "$out/best/lm/lm.json" ] || $ds lm ngram --manifest data/an4/train.jsonl --order 4 --out "$out/best/lm" --no-arpa --no-progress
[ -f "$out/best/decoder.json" ] || $ds lm tune --model "$out/best" --manifest data/an4/dev.jsonl --no-progress
echo "== AN4 test (130 utterances, 10 unseen speakers): greedy, then beam search with the 4-gram =="
$ds eval --model "$out/best" --manifest data/an4/test.jsonl --format json --no-progress
$ds eval --model "$out/best" --manifest data/an4/test.jsonl --format json --decoder beam --no-progress
