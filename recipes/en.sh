#!/usr/bin/env bash
# Recipe en: one English model (preset `en`: 4 bidirectional GRUs of 384, 7.8M parameters) on every English train
# split we have: the data kit's (../shared/data) AN4, Mini LibriSpeech, Common Voice and Speech Commands train splits,
# FSDD's train speakers (data/fsdd) and the synthetic digit voices of digits-en: 10.9 h, with noise synthesis.
# Dev: the kit's four dev splits and FSDD george joined into data/kit/en_dev.jsonl (1.1 h): reported each epoch and
# used to tune the LM weights. LM: a word 4-gram of the Gutenberg sentences less their last 1,000 lines (the text
# test split) and less en_minilibrispeech/lm_exclude.txt, plus the train transcripts (never dev or test ones).
# Test: greedy and beam on every English test split (AN4, Mini LibriSpeech, Common Voice, Speech Commands, FSDD).
# Time: measured about 33 min an epoch on one CPU thread beside another training run (20 s of audio a second) x 30
# epochs = about 16 h, plus about 1 h of LM tuning and evaluation; about 1.5 h on one GPU (estimated; batches are
# still prepared on the CPU, the LM tuning stays on it).
# Re-running resumes training (or, once finished, just re-evaluates). `recipes/en.sh import` only writes the
# manifests (data/kit/); `recipes/en.sh lm-text` only writes the LM text ($OUT/lm_text/).
# recipes/en_streaming.sh runs this script with PRESET=en-streaming.
set -euo pipefail
cd "$(dirname "$0")/.."
ds=.venv/bin/deepspeech
py=.venv/bin/python
kit=${DATA_KIT:-../shared/data}
preset=${PRESET:-en}
out=${OUT:-runs/$preset}
stage=${1:-all}
case "$stage" in all|import|lm-text) ;; *) echo "usage: recipes/en.sh [import|lm-text]" >&2; exit 2;; esac
sets=(en_an4 en_minilibrispeech en_commonvoice en_speech_commands)
for f in "${sets[@]/%//manifest.jsonl}" text_en_gutenberg/sentences_norm.txt en_minilibrispeech/lm_exclude.txt; do
  [ -f "$kit/$f" ] || { echo "data kit not found: $kit/$f missing (set DATA_KIT to the kit folder)" >&2; exit 2; }
done

if [ "$stage" = lm-text ] || [ ! -f "$out/lm_text/train.txt" ]; then
  # The Gutenberg sentences less the last 1,000 lines (the kit's text test split, kept as test.txt) and less the
  # lines of lm_exclude.txt (sentences overlapping Mini LibriSpeech dev/test), normalised as the references are.
  $ds lm text --lang en --kit "$kit" --out "$out/lm_text" --no-progress
  [ "$stage" = lm-text ] && exit 0
fi

[ "$stage" = import ] || echo "== $preset: about 16 h on one CPU thread (measured for en), about 1.5 h on one GPU (estimated) =="
# The kit's split key gives the protocol; each manifest is written atomically, so one found is whole.
for s in "${sets[@]}"; do
  for split in train dev test; do
    [ -f "data/kit/$s/$split.jsonl" ] || $ds data import kit "$kit/$s" --split "$split" --out "data/kit/$s/$split.jsonl" --no-progress
  done
done
if [ ! -f data/kit/en_dev.jsonl ]; then
  $py - data/kit/en_dev.jsonl "${sets[@]/#/data/kit/}" <<'PY'
import os, sys
from deepspeech.data.manifest import read_manifest, write_manifest
out, *sets = sys.argv[1:]
utts = [u for m in [f"{s}/dev.jsonl" for s in sets] + ["data/fsdd/dev.jsonl"] for u in read_manifest(m)]
write_manifest(out + ".tmp", utts)
os.replace(out + ".tmp", out)
PY
fi
if [ "$stage" = import ]; then exit 0; fi

$ds train --preset "$preset" --out "$out"
# best/ is rewritten by training, which drops lm/ and decoder.json: what is found here belongs to the final weights.
train=(); for s in "${sets[@]}"; do train+=(--manifest "data/kit/$s/train.jsonl"); done
[ -f "$out/best/lm/lm.json" ] || $ds lm ngram --text "$out/lm_text/train.txt" "${train[@]}" --manifest data/fsdd/train.jsonl \
  --order 4 --prune 0 0 1 --out "$out/best/lm" --no-arpa --no-progress
[ -f "$out/best/decoder.json" ] || $ds lm tune --model "$out/best" --manifest data/kit/en_dev.jsonl \
  --alphas 0:2:0.25 --betas 0:3:0.5 --no-progress
for m in data/kit/en_an4/test.jsonl data/kit/en_minilibrispeech/test.jsonl data/kit/en_commonvoice/test.jsonl \
         data/kit/en_speech_commands/test.jsonl data/fsdd/test.jsonl; do
  echo "== $m: greedy, then beam search with the word 4-gram =="
  $ds eval --model "$out/best" --manifest "$m" --format json --no-progress
  $ds eval --model "$out/best" --manifest "$m" --format json --decoder beam --no-progress
done
