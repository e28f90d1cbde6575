#!/usr/bin/env bash
# Speaker cross-validation for digits-en changes: george (the dev speaker) alone is a weak judge of unseen
# speakers, so each training speaker (jackson, lucas, nicolas) is held out in turn; the model trains on the other
# two plus the synthetic digits, selects its epoch on george as the recipe does, and is scored on the held-out
# speaker. The test speakers are never touched. Prints one row per fold and the mean.
# Usage: [TRAIN=manifests] recipes/digits_cv.sh NAME [--set a.b=value ...]   (about 20 minutes on 2 CPU cores)
# TRAIN replaces the preset's comma-separated training manifests (it must include data/fsdd/train.jsonl).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: $0 NAME [--set a.b=value ...]" >&2; exit 2; }
name=$1; shift
ds=.venv/bin/deepspeech
out=${OUT:-runs/digits-cv}
mkdir -p "$out/manifests"
.venv/bin/python - "$out/manifests" <<'EOF'
import json, os, sys
dst = sys.argv[1]
rows = [json.loads(line) for line in open("data/fsdd/train.jsonl")]
for r in rows:
    r["audio"] = os.path.abspath(os.path.join("data/fsdd", r["audio"]))
for held in sorted({r["speaker"] for r in rows}):  # speakers as `deepspeech data prepare fsdd` wrote them
    for split, is_held in (("train", False), ("held", True)):
        with open(os.path.join(dst, f"{split}_{held}.jsonl"), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows if (r["speaker"] == held) == is_held)
EOF
# the training list (TRAIN, default the preset's) with FSDD's train manifest swapped for the fold's
train_list=${TRAIN:-$(.venv/bin/python -c 'from deepspeech.presets import get_preset; print(get_preset("digits-en").data.train)')}
[[ $train_list == *data/fsdd/train.jsonl* ]] || { echo "TRAIN must include data/fsdd/train.jsonl" >&2; exit 2; }
results="$out/$name/results.txt"
mkdir -p "$out/$name"
: > "$results"
for manifest in "$out"/manifests/held_*.jsonl; do  # one fold per training speaker, as written above
  held=$(basename "$manifest" .jsonl); held=${held#held_}
  run="$out/$name/$held"
  $ds train --preset digits-en --set "data.train=${train_list/data\/fsdd\/train.jsonl/$out/manifests/train_$held.jsonl}" \
    "$@" --out "$run" --no-progress
  echo "$held $($ds eval --model "$run/best" --manifest "$manifest" --format json --no-progress)" >> "$results"
done
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
