#!/usr/bin/env bash
# Recipe aishell-sample-zh: `tiny-zh` on the AISHELL-1 sample of the data kit (../shared/data/zh_aishell1_sample):
# train S0150 first 130 utterances, dev S0150 last 20, test S0252 (an unseen speaker). Tiny data: expect a high CER.
set -euo pipefail
cd "$(dirname "$0")/.."
ds=.venv/bin/deepspeech
src=${AISHELL_SAMPLE:-../shared/data/zh_aishell1_sample}
out=${OUT:-runs/aishell-sample-zh}
[ -f "$src/manifest.jsonl" ] || { echo "AISHELL sample not found at $src (set AISHELL_SAMPLE)" >&2; exit 2; }

$ds data prepare aishell-sample "$src" --out data/aishell_sample
$ds train --preset aishell-sample-zh --out "$out"
echo "== dev (S0150, last 20) =="
$ds eval --model "$out/best" --manifest data/aishell_sample/dev.jsonl
echo "== test (S0252) =="
$ds eval --model "$out/best" --manifest data/aishell_sample/test.jsonl
