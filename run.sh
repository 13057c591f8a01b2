#!/usr/bin/env bash
# The main job: installs missing Debian packages, builds, and runs the comparison.
# Until the models land, that is the allocator benchmark; arguments go to it
# (./run.sh --benchmark_filter=CachedPair, ./run.sh --help).
set -euo pipefail
cd "$(dirname "$0")"
source scripts/setup.sh

actmem_install_missing
actmem_build release
exec build/release/bench/alloc_bench "$@"
