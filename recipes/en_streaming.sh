#!/usr/bin/env bash
# Recipe en-streaming: recipes/en.sh's data, LM, tuning and tests for the streaming server's model (preset
# `en-streaming`: 4 unidirectional GRUs of 512 with a 200 ms lookahead convolution, 6.6M parameters, global feature
# statistics only). Time, estimated, not measured: about 15 min an epoch on 2 idle CPU cores (AN4's measured 45 s
# for 48 min of audio on 4.4M parameters, scaled) x 30 epochs = about 8 h, plus about 1 h of LM tuning and
# evaluation; about 1.5 h on one GPU. Re-running resumes training (or, once finished, just re-evaluates).
# Serve it: .venv/bin/deepspeech serve --model runs/en-streaming/best
set -euo pipefail
PRESET=en-streaming OUT=${OUT:-runs/en-streaming} exec "$(dirname "$0")/en.sh" "$@"
