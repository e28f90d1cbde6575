#!/usr/bin/env bash
# Install the Debian packages that `make demo` and `make test` need (called by scripts/setup.sh):
#   make, cmake, g++ and the Boost/zlib/bz2/lzma headers (KenLM's lmplz and build_binary);
#   espeak-ng, flite, Festival and its voices (speech synthesis); Chromium + ChromeDriver (the browser test).
# With apt-get when run as root, with sudo when it works without a password, otherwise it stops at once (exit 1)
# with the exact command to run. A no-op when everything is there.
# DEEPSPEECH_SYSTEM_PACKAGES replaces the package list (tests use it).
set -euo pipefail
# A command that must be on the PATH, and the package that provides it.
commands="make:make cmake:cmake g++:g++ espeak-ng:espeak-ng flite:flite text2wave:festival chromium:chromium
  chromedriver:chromium-driver"
packages="${DEEPSPEECH_SYSTEM_PACKAGES:-libboost-program-options-dev libboost-system-dev libboost-thread-dev
  libboost-test-dev zlib1g-dev libbz2-dev liblzma-dev festvox-kdlpc16k festvox-czech-ph festvox-suopuhe-lj}"
need=()
if [ -z "${DEEPSPEECH_SYSTEM_PACKAGES:-}" ]; then
  for pair in $commands; do
    command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
  done
fi
for pkg in $packages; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
[ ${#need[@]} -eq 0 ] && exit 0
install="apt-get install -y -q --no-install-recommends ${need[*]}"
if [ "$(id -u)" -eq 0 ]; then
  sudo=""
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  sudo="sudo"
else
  echo "setup: these system packages are missing: ${need[*]}" >&2
  echo "setup: install them as root, then run the set-up again:" >&2
  echo "  apt-get update && $install" >&2
  exit 1
fi
echo "setup: installing system packages: ${need[*]}" >&2
$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q
$sudo env DEBIAN_FRONTEND=noninteractive $install
