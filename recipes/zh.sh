#!/usr/bin/env bash
# Recipe zh: Mandarin (preset `zh`: 3 bidirectional GRUs of 384, 6.0M parameters, numbered-pinyin outputs) on the
# data kit's (../shared/data) zh_commonvoice train split (219 speakers, 3.7 h) plus the AISHELL-1 sample's train part
# (S0150, first 130 utterances), with noise synthesis; dev: zh_commonvoice dev (reported each epoch, tunes the LMs);
# test: zh_commonvoice test (13 speakers, two of them 74% of the clips), greedy and beam, CER in characters.
# LMs from the text_zh sentence files less each file's last 1,000 lines (the text test split, `--test-lines 1000`)
# plus the train transcripts (never dev or test): a character 4-gram with a pinyin lexicon (hanzi/: syllables to
# characters) and a pinyin-syllable 4-gram (lm/: beam search over the pinyin letters).
# Time, estimated, not measured: about 5 min an epoch on 2 idle CPU cores (AN4's measured 45 s for 48 min of audio
# on 4.4M parameters, scaled by audio and parameters) x 40 epochs = about 3.5 h, plus about 30 min of LM tuning and
# evaluation; about 40 min on one GPU. Re-running resumes training (or, once finished, just re-evaluates).
# `recipes/zh.sh import` only writes the manifests (data/kit/zh_commonvoice/, data/aishell_sample/).
set -euo pipefail
cd "$(dirname "$0")/.."
ds=.venv/bin/deepspeech
kit=${DATA_KIT:-../shared/data}
out=${OUT:-runs/zh}
stage=${1:-all}
[ "$stage" = all ] || [ "$stage" = import ] || { echo "usage: recipes/zh.sh [import]" >&2; exit 2; }
for f in zh_commonvoice/manifest.jsonl zh_aishell1_sample/manifest.jsonl text_zh/luxun_sentences.txt text_zh/law_sentences.txt; do
  [ -f "$kit/$f" ] || { echo "data kit not found: $kit/$f missing (set DATA_KIT to the kit folder)" >&2; exit 2; }
done

[ "$stage" = import ] || echo "== zh: about 3.5 h on 2 idle CPU cores, about 40 min on one GPU (both estimated) =="
for split in train dev test; do
  [ -f "data/kit/zh_commonvoice/$split.jsonl" ] || $ds data import kit "$kit/zh_commonvoice" --split "$split" \
    --out "data/kit/zh_commonvoice/$split.jsonl" --no-progress
done
[ -f data/aishell_sample/train.jsonl ] || $ds data prepare aishell-sample "$kit/zh_aishell1_sample" --out data/aishell_sample
if [ "$stage" = import ]; then exit 0; fi

$ds train --preset zh --out "$out"
# best/ is rewritten by training, which drops lm/, hanzi/ and the tuned weights: what is found belongs to the final weights.
src=(--text "$kit/text_zh/luxun_sentences.txt,$kit/text_zh/law_sentences.txt" --test-lines 1000
     --manifest data/kit/zh_commonvoice/train.jsonl --manifest data/aishell_sample/train.jsonl --order 4 --no-arpa --no-progress)
[ -f "$out/best/hanzi/lm.json" ] || $ds lm ngram "${src[@]}" --lang zh --out "$out/best/hanzi" --pinyin-lexicon
[ -f "$out/best/lm/lm.json" ] || $ds lm ngram "${src[@]}" --lang zh-pinyin --out "$out/best/lm"
[ -f "$out/best/decoder.json" ] || $ds lm tune --model "$out/best" --manifest data/kit/zh_commonvoice/dev.jsonl \
  --alphas 0:2:0.25 --betas 0:3:1 --no-progress
[ -f "$out/best/hanzi/hanzi.json" ] || $ds lm hanzi-tune --model "$out/best" --manifest data/kit/zh_commonvoice/dev.jsonl --no-progress
echo "== zh_commonvoice test: greedy, then beam search with the syllable LM; both written in characters (CER) =="
$ds eval --model "$out/best" --manifest data/kit/zh_commonvoice/test.jsonl --format json --no-progress
$ds eval --model "$out/best" --manifest data/kit/zh_commonvoice/test.jsonl --format json --decoder beam --no-progress
