#!/usr/bin/env bash
# Speaker cross-validation for digits-en changes: george (the dev speaker) alone is a weak judge of unseen
# speakers, so each training speaker (jackson, lucas, nicolas) is held out in turn; the model trains on the other
# two plus the synthetic digits, selects its epoch on george as the recipe does, and is scored on the held-out
# speaker. The test speakers are never touched. Prints one row per fold and the mean.
# Usage: [TRAIN=manifests] recipes/digits_cv.sh NAME [--set a.b=value ...]   (about 20 minutes on 2 CPU cores)
# TRAIN replaces the preset's comma-separated training manifests (it must include data/fsdd/train.jsonl). A fold
# drops the held-out speaker's rows from every training manifest, so data derived from the FSDD train speakers
# (voice-converted copies keep their speaker names) never leaks the held-out speaker into training.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: $0 NAME [--set a.b=value ...]" >&2; exit 2; }
name=$1; shift
ds=.venv/bin/deepspeech
out=${OUT:-runs/digits-cv}
mkdir -p "$out/manifests"
train_list=${TRAIN:-$(.venv/bin/python -c 'from deepspeech.presets import get_preset; print(get_preset("digits-en").data.train)')}
[[ $train_list == *data/fsdd/train.jsonl* ]] || { echo "TRAIN must include data/fsdd/train.jsonl" >&2; exit 2; }
# held_SPEAKER.jsonl: the speaker's FSDD recordings; folds.txt: one line per fold, the held-out speaker and its
# comma-separated training manifests (copies without that speaker's rows where it has any).
.venv/bin/python - "$out/manifests" "$train_list" <<'EOF'
import os, sys
from deepspeech.data.manifest import read_manifest, write_manifest
dst, train_list = sys.argv[1], sys.argv[2].split(",")
def source(u):  # the recorded speaker: a converted voice "jackson/f0=1.10/vtl=0.95" is jackson's
    return (u.speaker or "").split("/")[0]
fsdd = read_manifest("data/fsdd/train.jsonl")
with open(os.path.join(dst, "folds.txt"), "w") as folds:
    for held in sorted({u.speaker for u in fsdd}):  # speakers as `deepspeech data prepare fsdd` wrote them
        write_manifest(os.path.join(dst, f"held_{held}.jsonl"), [u for u in fsdd if u.speaker == held])
        fold = []
        for i, path in enumerate(train_list):
            utts = read_manifest(path)
            keep = [u for u in utts if source(u) != held]
            if len(keep) < len(utts):
                path = os.path.join(dst, f"train_{held}_{i}.jsonl")
                write_manifest(path, keep)
            fold.append(path)
        folds.write(f"{held} {','.join(fold)}\n")
EOF
results="$out/$name/results.txt"
mkdir -p "$out/$name"
: > "$results"
while read -r held fold_list; do  # one fold per training speaker, as written above
  run="$out/$name/$held"
  $ds train --preset digits-en --set "data.train=$fold_list" "$@" --out "$run" --no-progress </dev/null
  echo "$held $($ds eval --model "$run/best" --manifest "$out/manifests/held_$held.jsonl" --format json \
    --no-progress </dev/null)" >> "$results"
done < "$out/manifests/folds.txt"
.venv/bin/python - "$results" <<'EOF'
import json, sys
wers = []
print("| held-out speaker | WER | CER |\n|---|---|---|")
for line in open(sys.argv[1]):
    held, js = line.split(" ", 1)
    r = json.loads(js)
    wers.append(r["wer"])
    print(f"| {held} | {100 * r['wer']:.1f}% | {100 * r['cer']:.1f}% |")
print(f"| mean | {100 * sum(wers) / len(wers):.1f}% | |")
EOF
