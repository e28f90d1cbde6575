#!/usr/bin/env bash
# Noise-robustness experiment (issue 3): the digits-en recipe trained twice with the same budget (15 epochs),
#   A: clean only (augment.noise_prob=0: speed, gain and SpecAugment stay on),
#   B: with noise synthesis (the digits-en default: 40% of utterances get 1-3 tracks at 0-30 dB),
# then both are evaluated on the FSDD test speakers, clean and mixed at 5 dB SNR with the two held-out noise clips
# of the data kit (each utterance with one of them, chosen at random; never seen in training).
# Needs ../shared/data/noise_real (or DATA_KIT=...). About 25 minutes on 2 CPU cores. Re-running resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
ds=.venv/bin/deepspeech
kit=${DATA_KIT:-../shared/data}
out=${OUT:-runs/noise-ab}
[ -f "$kit/noise_real/manifest.jsonl" ] || { echo "missing $kit/noise_real (set DATA_KIT)" >&2; exit 2; }

$ds data prepare noise "$kit/noise_real" --out "$out/noise"
[ -f "$out/fsdd_test_noisy5/manifest.jsonl" ] || \
  $ds synth noise --manifest data/fsdd/test.jsonl --out "$out/fsdd_test_noisy5" --noise-manifest "$out/noise/test.jsonl" \
    --kinds real --snr-db 5 --tracks 1 --seed 0
$ds train --preset digits-en --out "$out/B"
$ds train --preset digits-en --set augment.noise_prob=0 --out "$out/A"
for m in A B; do
  for set in clean noisy5; do
    man=data/fsdd/test.jsonl
    [ "$set" = noisy5 ] && man="$out/fsdd_test_noisy5/manifest.jsonl"
    echo "== model $m on $set test audio =="
    $ds eval --model "$out/$m/best" --manifest "$man" --no-progress
  done
done
