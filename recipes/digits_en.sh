#!/usr/bin/env bash
# Recipe digits-en: the `tiny` English model on the Free Spoken Digit Dataset (shipped in data/fsdd, CC BY-SA 4.0).
# Train speakers jackson, lucas, nicolas; model selection on george (dev); report on theo + yweweler (test).
# About 10 minutes on 2 CPU cores. Re-running resumes (or, once finished, just re-evaluates).
set -euo pipefail
cd "$(dirname "$0")/.."
ds=.venv/bin/deepspeech
out=${OUT:-runs/digits-en}

$ds train --preset digits-en --out "$out"
echo "== test speakers theo + yweweler (greedy decoding) =="
$ds eval --model "$out/best" --manifest data/fsdd/test.jsonl
echo "== a few test files =="
$ds transcribe --model "$out/best" --no-progress \
  data/fsdd/audio/0_theo_0.flac data/fsdd/audio/3_theo_1.flac data/fsdd/audio/5_yweweler_2.flac \
  data/fsdd/audio/7_yweweler_3.flac data/fsdd/audio/9_theo_4.flac
