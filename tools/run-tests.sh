#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine, builds moec and runs every test (lit:
# dialect, passes, importer, driver, end-to-end, the fuzz targets' kept
# regression inputs; plus the C++ unit tests), then a short run of every
# fuzz target under AddressSanitizer and UndefinedBehaviorSanitizer (12 s
# each after replaying its seeds and test/fuzz inputs; a crash, hang or
# sanitizer report fails; a fixed seed, so that a run that passes passes
# again and one that fails fails again: longer runs with fresh seeds are
# tools/fuzz.sh's job; docs/reliability.md). GPU tests are reported
# UNSUPPORTED where no GPU answers.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup-debian.sh --fuzz
tools/build.sh
ninja -C build check-moec
echo "== fuzzing every target for 12 s (tools/fuzz.sh all 12 -seed=1, build-fuzz/) =="
tools/fuzz.sh all 12 -seed=1
