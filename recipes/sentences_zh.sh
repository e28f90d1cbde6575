#!/usr/bin/env bash
# Recipe sentences-zh: `small-zh` on about 5 hours of synthetic Mandarin sentences plus the AISHELL-1 sample's
# training split, with noise synthesis. Needs the data kit (../shared/data: text_zh, public domain; the AISHELL-1
# sample, Apache-2.0), espeak-ng, and pypinyin (in the dev and synth extras).
# Text protocol: each sentence file's last 1,000 lines are test text; voices: every fifth variant of the
# cmn-latn-pinyin voice is a test voice. Reported: CER on the unseen-voice synthetic test set and on AISHELL S0252.
# About 5 minutes of synthesis and 90-100 minutes of training on 2 CPU cores. Re-running resumes.
# Outputs are numbered-pinyin letters (data.units=pinyin); the character 4-gram LM and a pinyin lexicon made from
# the same text (`lm ngram --pinyin-lexicon`) turn the recognised syllables into characters (deepspeech.decoding.hanzi).
# An earlier run with character outputs (~4,500 symbols over ~70k training characters) mostly emitted blanks:
# greedy CER 92.0% dev, 90.7% unseen-voice test, 99.4% AISHELL S0252.
set -euo pipefail
cd "$(dirname "$0")/.."
ds=.venv/bin/deepspeech
kit=${DATA_KIT:-../shared/data}
out=${OUT:-runs/sentences-zh}
for f in "$kit/text_zh/luxun_sentences.txt" "$kit/text_zh/law_sentences.txt" "$kit/zh_aishell1_sample/manifest.jsonl"; do
  [ -f "$f" ] || { echo "missing $f (the data kit): set DATA_KIT to its folder" >&2; exit 2; }
done

$ds data prepare aishell-sample "$kit/zh_aishell1_sample" --out data/aishell_sample
if [ ! -f data/sentences_zh/test/manifest.jsonl ]; then
  $ds synth sentences --lang zh --text "$kit/text_zh/luxun_sentences.txt,$kit/text_zh/law_sentences.txt" \
    --out data/sentences_zh --train 4700 --dev 200 --test 500 --min-len 4 --max-len 24 --seed 0
fi
$ds train --preset sentences-zh --out "$out"
# Two LMs from the same text: the training text of both files (not their last 1,000 lines: the test text) plus the
# AISHELL training transcripts, without the dev sentences (the decoder weights are tuned on dev).
#  - hanzi/: a character 4-gram and the pinyin lexicon, which turn recognised syllables into characters;
#  - lm/: a pinyin-syllable 4-gram for beam search over the pinyin letters (--decoder beam).
src=(--text "$kit/text_zh/luxun_sentences.txt,$kit/text_zh/law_sentences.txt" --test-lines 1000
     --manifest data/aishell_sample/train.jsonl --exclude data/sentences_zh/dev/manifest.jsonl
     --exclude data/aishell_sample/dev.jsonl --order 4 --no-arpa)
$ds lm ngram "${src[@]}" --lang zh --out "$out/best/hanzi" --pinyin-lexicon
$ds lm ngram "${src[@]}" --lang zh-pinyin --out "$out/best/lm"
$ds lm tune --model "$out/best" --manifest data/sentences_zh/dev/manifest.jsonl --alphas 0:2:0.25 --betas 0:3:1
$ds lm hanzi-tune --model "$out/best" --manifest data/sentences_zh/dev/manifest.jsonl
for set in data/sentences_zh/test/manifest.jsonl data/aishell_sample/test.jsonl; do
  echo "== $set: greedy, then beam search with the syllable LM; both written in characters =="
  $ds eval --model "$out/best" --manifest "$set"
  $ds eval --model "$out/best" --manifest "$set" --decoder beam
done
