#!/usr/bin/env bash
# The main job: installs missing Debian packages and (once) torch into .venv/, builds, and
# compares the memory policies on the four reference models (small size, on CPU): peak memory,
# step time and the largest batch that fits, each against `keep`. Writes
# results/summary.{md,json,svg}; arguments go to actmem_compare (./run.sh --help,
# ./run.sh --models lstm --policies keep,auto).
#
#   ./run.sh --alloc [args]   the allocator micro-benchmarks instead (bench/alloc_bench)
set -euo pipefail
cd "$(dirname "$0")"
source scripts/setup.sh

actmem_install_missing
actmem_install_torch
actmem_build release
actmem_install_python_package release
if [[ ${1:-} == --alloc ]]; then
  shift
  exec build/release/bench/alloc_bench "$@"
fi
exec build/release/bench/actmem_compare "$@"
