#!/usr/bin/env bash
# Runs the libFuzzer targets in tests/fuzz, each for a bounded time, from the committed corpus
# (tests/fuzz/corpus/<target>/). Builds the `fuzz` preset first (clang, libFuzzer, ASan + UBSan;
# no LibTorch).
#
#   scripts/fuzz.sh              60 s per target (what a CI job can afford)
#   scripts/fuzz.sh 600          the long run: 10 minutes per target
#   scripts/fuzz.sh 60 c_api_fuzzer
#   ACTMEM_ALLOC_CONF=backend:vmm scripts/fuzz.sh 60 c_api_fuzzer    the C ABI over the vmm layout
#
# New inputs go to a scratch directory, not into the committed corpus; a crash leaves its input
# in build/fuzz/findings/ and fails the script. Each target's runs and executions per second are
# printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

seconds=${1:-60}
shift || true
targets=("$@")
((${#targets[@]})) || targets=(config_fuzzer c_api_fuzzer)

actmem_install_missing
actmem_build fuzz

findings=build/fuzz/findings
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$findings"
status=0
summary=()
for target in "${targets[@]}"; do
  mkdir -p "$scratch/$target"
  log=$scratch/$target.log
  echo "fuzzing $target for ${seconds}s" >&2
  # The C ABI's allocators serve host memory (the fuzzer writes into what it is handed); its
  # out-of-memory messages on stderr are closed (-close_fd_mask=2: sanitizer reports still come).
  if ! ACTMEM_BACKEND=host "build/fuzz/tests/fuzz/$target" "$scratch/$target" \
      "tests/fuzz/corpus/$target" -max_total_time="$seconds" -print_final_stats=1 \
      -close_fd_mask=2 -artifact_prefix="$findings/$target-" >"$log" 2>&1; then
    status=1
    tail -40 "$log" >&2
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
  coverage=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
  summary+=("$target: ${runs:-?} runs in ${seconds}s, ${rate:-?} exec/s, ${coverage:-cov: ?}")
done
printf '%s\n' "${summary[@]}"
((status == 0)) || echo "fuzz: a target found something; its input is in $findings/" >&2
exit "$status"
