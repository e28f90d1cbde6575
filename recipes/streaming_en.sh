#!/usr/bin/env bash
# Recipe streaming-en: the streaming server's default model. `tiny-streaming` (3 unidirectional GRUs of 256, a
# 200 ms lookahead convolution, global feature statistics only) trained like digits-en: FSDD train speakers + 1,500
# espeak-ng digits with noise synthesis, model selection on george (dev), test on theo + yweweler.
# About 15 minutes on 2 CPU cores. Re-running resumes (or, once finished, just re-evaluates).
set -euo pipefail
cd "$(dirname "$0")/.."
ds=.venv/bin/deepspeech
out=${OUT:-runs/streaming-en}

# Connected digit strings joined from the training speakers' (and synthetic voices') isolated digits; dev strings
# from george, test strings from theo + yweweler (never trained or tuned on). Seconds; skipped when present.
[ -f data/digit_strings/train/manifest.jsonl ] || $ds synth concat --no-progress --count 800 --seed 1 \
  --manifest data/fsdd/train.jsonl,data/tts_digits/manifest.jsonl --out data/digit_strings/train
[ -f data/digit_strings/dev/manifest.jsonl ] || $ds synth concat --no-progress --count 200 --seed 2 \
  --manifest data/fsdd/dev.jsonl --out data/digit_strings/dev
[ -f data/digit_strings/test/manifest.jsonl ] || $ds synth concat --no-progress --count 500 --seed 3 \
  --manifest data/fsdd/test.jsonl --out data/digit_strings/test
$ds train --preset streaming-en --out "$out"
$ds lm ngram --manifest data/fsdd/train.jsonl --manifest data/digit_strings/train/manifest.jsonl --order 2 --out "$out/best/lm" \
  --no-arpa --no-progress
$ds lm tune --model "$out/best" --manifest data/digit_strings/dev/manifest.jsonl --alphas 0:2:0.5 --betas 0:2:1 \
  --no-progress
echo "== test speakers theo + yweweler, isolated digits and strings: greedy, then beam search with the digits LM =="
for m in data/fsdd/test.jsonl data/digit_strings/test/manifest.jsonl; do
  $ds eval --model "$out/best" --manifest $m
  $ds eval --model "$out/best" --manifest $m --decoder beam
done
if [ -n "${EXPORT:-}" ]; then
  $ds export --model "$out/best" --to "$EXPORT" --eval dev=data/fsdd/dev.jsonl --eval test=data/fsdd/test.jsonl \
    --eval dev-strings=data/digit_strings/dev/manifest.jsonl --eval test-strings=data/digit_strings/test/manifest.jsonl \
    --command-line "deepspeech train --preset streaming-en --out $out   # recipes/streaming_en.sh" \
    --notes recipes/streaming_en.notes.md
fi
echo "== serve it: $ds serve --model $out/best   (then open http://127.0.0.1:8000/) =="
