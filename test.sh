#!/usr/bin/env bash
# Runs every test: installs missing Debian packages and (once) torch into .venv/, builds, installs
# the actmem Python package into .venv/, runs ctest (the GoogleTest suites and the pytest suite).
#
#   ./test.sh                     the release build, all tests
#   ./test.sh --preset asan       another preset: release, debug, asan (address+undefined), tsan
#   ./test.sh -R Conformance      anything else is passed to ctest
#
# In CI (CI=true, as .ci/run is run) a plain ./test.sh also builds the asan preset and runs its
# whole suite after the release one's (a clean clone's CI run: 24 minutes on 2 cores in all).
set -euo pipefail
cd "$(dirname "$0")"
source scripts/setup.sh

preset=release
if [[ ${1:-} == --preset ]]; then
  preset=${2:?"--preset needs a name: release, debug, asan, tsan"}
  shift 2
fi
if [[ ${1:-} == --help || ${1:-} == -h ]]; then
  sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi

actmem_install_missing
actmem_install_torch
actmem_build "$preset"
actmem_install_python_package "$preset"
ctest --preset "$preset" "$@"

if [[ ${CI:-} == true && $preset == release && $# -eq 0 ]]; then
  echo "actmem: CI: the asan preset's suite" >&2
  actmem_build asan
  ctest --preset asan
fi
