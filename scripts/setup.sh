#!/usr/bin/env bash
# Create .venv/ in the repository root with everything installed (idempotent: a no-op when up to date).
# Usage: scripts/setup.sh [extras]   (default extras: dev)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-dev}"
py="${PYTHON:-$(command -v python3.11 || command -v python3)}"
stamp=".venv/.setup-stamp"
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)-$extras"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x .venv/bin/deepspeech ]; then
  exit 0
fi
echo "setting up .venv (extras: $extras) with $py" >&2
[ -x .venv/bin/python ] || "$py" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch 2.13.0 first: the CPU wheel (about 200 MB). An unpinned torch would pull a multi-GB CUDA build.
.venv/bin/python -m pip install -q "torch==2.13.0" numpy
.venv/bin/python -m pip install -q -e ".[$extras]"
# KenLM's lmplz/build_binary for `deepspeech lm ngram`: built from the kenlm sdist (needs cmake, g++, Boost headers).
scripts/build_kenlm.sh || echo "warning: KenLM binaries not built; \`deepspeech lm ngram\` needs them" \
  "(install the packages listed in scripts/build_kenlm.sh, then run it)" >&2
echo "$want" > "$stamp"
