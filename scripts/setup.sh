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
echo "$want" > "$stamp"
