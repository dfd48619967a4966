#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine, builds moec and runs every test (lit:
# dialect, passes, importer, driver, end-to-end; plus the C++ unit tests).
# GPU tests are reported UNSUPPORTED where no GPU answers.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup-debian.sh
tools/build.sh
ninja -C build check-moec
