#!/usr/bin/env bash
# Build KenLM's lmplz and build_binary (the n-gram estimator and the binary-format converter) into .venv/bin/.
# Debian ships no kenlm package; the PyPI sdist (kenlm 0.3.0) holds the sources of lm/builder. Needs cmake, a C++
# compiler and the Boost/zlib/bz2/lzma headers:
#   apt-get install -y --no-install-recommends cmake g++ libboost-program-options-dev libboost-system-dev \
#     libboost-thread-dev libboost-test-dev zlib1g-dev libbz2-dev liblzma-dev
# Usage: scripts/build_kenlm.sh        (a no-op when both binaries exist; about 40 s on 2 cores otherwise)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=.venv/bin
if [ -x "$bin/lmplz" ] && [ -x "$bin/build_binary" ]; then
  exit 0
fi
for tool in cmake make c++; do
  command -v "$tool" >/dev/null || { echo "build_kenlm: $tool not found (see the apt-get line in $0)" >&2; exit 1; }
done
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "building KenLM lmplz and build_binary (about 40 s)" >&2
# --no-binary keeps pip from taking a wheel; --no-deps and download-only: nothing is installed or compiled by pip.
"$bin/python" -m pip download -q --no-deps --no-binary kenlm -d "$work" kenlm==0.3.0
tar xzf "$work"/kenlm-0.3.0.tar.gz -C "$work"
cmake -S "$work/kenlm-0.3.0" -B "$work/build" -DCMAKE_BUILD_TYPE=Release >"$work/cmake.log" 2>&1 ||
  { tail -20 "$work/cmake.log" >&2; echo "build_kenlm: cmake failed (missing Boost headers? see $0)" >&2; exit 1; }
make -C "$work/build" -j"$(nproc)" lmplz build_binary >"$work/make.log" 2>&1 ||
  { tail -20 "$work/make.log" >&2; echo "build_kenlm: compilation failed" >&2; exit 1; }
cp "$work/build/bin/lmplz" "$work/build/bin/build_binary" "$bin/"
echo "installed $bin/lmplz and $bin/build_binary" >&2
