#!/usr/bin/env bash
# Speaker cross-validation of one digits-en configuration, one run at a time: each training speaker (jackson,
# lucas, nicolas) is held out in turn; the model trains on the other two plus the synthetic digits, selects its
# epoch on george as the recipe does, and is scored on the held-out speaker. The test speakers are never touched.
# Prints one row per fold and the mean. recipes/digits_cv_pool.py does the work (and runs several configurations
# and seeds at once, paired: use it directly to compare).
# Usage: [TRAIN=manifests] [OUT=dir] recipes/digits_cv.sh NAME [--set a.b=value ...]   (about 25 minutes on 2 cores)
# TRAIN replaces the preset's comma-separated training manifests (it must include data/fsdd/train.jsonl). A fold
# drops the held-out speaker's rows from every training manifest, so data derived from the FSDD train speakers
# (voice-converted copies keep their speaker names) never leaks the held-out speaker into training.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: $0 NAME [--set a.b=value ...]" >&2; exit 2; }
name=$1; shift
exec .venv/bin/python recipes/digits_cv_pool.py --out "${OUT:-runs/digits-cv}" --train "${TRAIN:-}" \
  --config "$name=$(printf '%q ' "$@")"
