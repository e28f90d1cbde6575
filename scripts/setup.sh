#!/usr/bin/env bash
# Set up everything `make demo` and `make test` need on a fresh Debian/Ubuntu machine, then create .venv/ in the
# repository root. Idempotent: a no-op when it is up to date; nothing is marked done unless every step succeeded.
#   1. System packages (scripts/system_packages.sh: apt-get as root, else sudo, else it stops with the exact command):
#      make, cmake, g++, Boost/zlib/bz2/lzma headers (KenLM's lmplz and build_binary); espeak-ng, flite, Festival
#      and its voices (speech synthesis); Chromium + ChromeDriver (the browser test of the server's page).
#   2. .venv/ with torch (CPU) and the project with the given extras (default: dev).
#   3. KenLM's lmplz and build_binary, built from the kenlm sdist into .venv/bin/ (scripts/build_kenlm.sh).
#   4. The native kernels (native/*.cpp), compiled into .venv/native/ (python -m deepspeech.native.build).
# Usage: scripts/setup.sh [extras]
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-dev}"
py="${PYTHON:-$(command -v python3.11 || command -v python3)}"
stamp=".venv/.setup-stamp"
want="$(cat pyproject.toml scripts/setup.sh scripts/system_packages.sh scripts/build_kenlm.sh native/* deepspeech/native/build.py |
  sha256sum | cut -c1-16)-$extras"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x .venv/bin/deepspeech ]; then
  exit 0
fi

# 1. System packages.
scripts/system_packages.sh

# 2. The virtual environment.
echo "setup: .venv (extras: $extras) with $py" >&2
[ -x .venv/bin/python ] || "$py" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch 2.13.0 first: the CPU wheel (about 200 MB). An unpinned torch would pull a multi-GB CUDA build.
.venv/bin/python -m pip install -q "torch==2.13.0" numpy
.venv/bin/python -m pip install -q -e ".[$extras]"

# 3. KenLM's lmplz/build_binary for `deepspeech lm ngram` and the beam search's LMs.
scripts/build_kenlm.sh

# 4. The native kernels, into .venv/native/ (never at run time, never in a cache shared by other checkouts).
echo "setup: building the native kernels (about 1 min the first time)" >&2
.venv/bin/python -c "from deepspeech.native.build import main; raise SystemExit(main())"

echo "$want" > "$stamp"
echo "setup: done" >&2
