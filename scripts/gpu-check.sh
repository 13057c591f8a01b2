#!/usr/bin/env bash
# Builds and checks actmem on a machine with an NVIDIA GPU, the CUDA toolkit (nvcc) and PyTorch's
# Python package (a CUDA LibTorch 2.x), and writes every result under OUTDIR.
#
#   scripts/gpu-check.sh OUTDIR [--archive FILE.tar.gz]
#
# Steps, each with its own timeout and log; a failed step does not stop the ones after it (a step
# that needs what failed is skipped, and says why):
#   probe      nvidia-smi, nvcc, cmake, python3 + torch            OUTDIR/probe.log, torch-info.txt
#   configure  build/gpu against torch's LibTorch, Release           OUTDIR/configure.log
#   build      every target, -j$(nproc), going on past errors        OUTDIR/build.log
#   test       ctest: the GPU tests run instead of skipping          OUTDIR/test.log, test-junit.xml
#   compare    build/gpu/bench/actmem_compare --preset gpu-check     OUTDIR/compare.log, results/
#              (the four models at full size on CUDA, max batch under 8 GiB)
#   pluggable  tests/gpu/pluggable_allocator.py (PyTorch + libactmem_alloc.so)
#                                                                    OUTDIR/pluggable.log
#   preload    tests/gpu/preload_training.py under LD_PRELOAD=libactmem_preload.so
#                                                                    OUTDIR/preload.log, preload_stats.json
#   preload-vmm the same with ACTMEM_ALLOC_CONF=backend:vmm (growable segments)
#                                                                    OUTDIR/preload_vmm.log, preload_vmm_stats.json
#   torch      tests/gpu/pytorch_side_by_side.py: the four models at full size, plain,
#              torch.utils.checkpoint and save_on_cpu, max batch under 8 GiB
#                                                                    OUTDIR/side_by_side.log, torch_side_by_side.json
#   python     tests/gpu/python_policies.py: the Python package's unmodified scripts on CUDA under
#              python -m actmem (each policy) beside plain, checkpoint and save_on_cpu
#                                                                    OUTDIR/python_policies.log, .json
#   allocators tests/gpu/allocator_side_by_side.py: training loops under PyTorch's default
#              allocator, expandable_segments and actmem's layouts   OUTDIR/allocators.log, .json
# Then OUTDIR/summary.txt: pass/fail per step and where each result went. Exit status 0 when every
# step passed, 1 when one failed or was skipped, 2 on a usage error.
#
# GoogleTest and Google Benchmark: an installed package is used when CMake finds one; else the
# sources in third_party/googletest and third_party/benchmark (scripts/vendor-gpu-deps.sh copies
# them there, on a machine that has them; carry third_party/ along). Without Google Benchmark the
# build has no bench/ and the compare step is not run (the summary says so).
#
# Environment: PYTHON (default python3), ACTMEM_HOST_BUDGET (the compare step's pinned pool cap,
# default 48GiB), ACTMEM_GPU_CHECK_BUDGET_S (the whole run's time, default
# 540 s: every step's timeout is cut to fit), ACTMEM_CTEST_JOBS (default 8), ACTMEM_COMPARE_ARGS
# (actmem_compare's arguments, default --preset gpu-check), ACTMEM_TORCH_ARGS (the torch step's,
# default --max-batch-budget 8GiB; e.g. --models resnet,lstm to fit a shorter run),
# ACTMEM_ALLOCATOR_ARGS (the allocators step's, e.g. --steps 10 --workloads resnet,lm).
set -uo pipefail

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

out="" archive=""
while (($#)); do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --archive) [[ $# -ge 2 ]] || { echo "gpu-check: --archive needs a file" >&2; exit 2; }
      archive=$2; shift 2 ;;
    --archive=*) archive=${1#*=}; shift ;;
    -*) echo "gpu-check: unknown option $1" >&2; usage >&2; exit 2 ;;
    *) [[ -z $out ]] || { echo "gpu-check: one OUTDIR only (got $out and $1)" >&2; exit 2; }
      out=$1; shift ;;
  esac
done
[[ -n $out ]] || { usage >&2; exit 2; }

root=$(cd "$(dirname "$0")/.." && pwd) || exit 2
cd "$root" || exit 2
mkdir -p "$out" || { echo "gpu-check: cannot create $out" >&2; exit 2; }
out=$(cd "$out" && pwd) || exit 2
if [[ -n $archive ]]; then
  if ! archive_dir=$(mkdir -p "$(dirname "$archive")" && cd "$(dirname "$archive")" && pwd); then
    echo "gpu-check: cannot write the archive at $archive" >&2
    exit 2
  fi
  archive=$archive_dir/$(basename "$archive")
fi
build=$root/build/gpu
third_party=$root/third_party
PY=${PYTHON:-python3}
budget=${ACTMEM_GPU_CHECK_BUDGET_S:-540}
deadline=$((SECONDS + budget))
jobs=$(nproc 2>/dev/null || echo 4)
ctest_jobs=${ACTMEM_CTEST_JOBS:-8}

say() { printf 'gpu-check: %s\n' "$*" | tee -a "$out/gpu-check.log"; }

# --- step bookkeeping -----------------------------------------------------------------------------
order=(probe configure build test compare pluggable preload preload-vmm torch python allocators)
# Most seconds a step may take, and the least it is worth starting with. The time of the steps
# still to come (their floors) is held back from each step's timeout, so a slow build cannot
# leave no time for the Python steps.
declare -A cap=([probe]=90 [configure]=150 [build]=330 [test]=180 [compare]=270
  [pluggable]=90 [preload]=90 [preload-vmm]=90 [torch]=240 [python]=150 [allocators]=180)
declare -A floor=([probe]=20 [configure]=40 [build]=90 [test]=45 [compare]=60
  [pluggable]=30 [preload]=30 [preload-vmm]=30 [torch]=45 [python]=45 [allocators]=40)
declare -A result=() note=() took=()

# step_timeout NAME: prints the seconds NAME may run, or fails when too little time is left.
step_timeout() {
  local name=$1 later=0 seen=0 step left t
  for step in "${order[@]}"; do
    ((seen)) && later=$((later + ${floor[$step]}))
    [[ $step == "$name" ]] && seen=1
  done
  left=$((deadline - SECONDS))
  t=$((left - later))
  ((t > ${cap[$name]})) && t=${cap[$name]}
  if ((t < ${floor[$name]})); then t=$((left < ${floor[$name]} ? left : ${floor[$name]})); fi
  ((t >= 5)) || return 1
  echo "$t"
}

# A step that will not run holds back no time.
will_not_run() { floor[$1]=0; }

# finish NAME RC NOTE LOG: records the step; on failure shows the end of its log.
finish() {
  local name=$1 rc=$2 text=$3 log=${4:-}
  took[$name]=$((SECONDS - ${started[$name]:-$SECONDS}))
  if ((rc == 0)); then
    result[$name]=pass
  else
    result[$name]=FAIL
    if ((rc == 124 || rc == 137)); then text="timed out after ${timeouts[$name]:-?}s; $text"; fi
    if [[ -n ${no_time[$name]:-} ]]; then text="not run: no time left in the ${budget}s budget"; fi
  fi
  note[$name]=$text
  say "$name: ${result[$name]} (${took[$name]}s) $text"
  if ((rc != 0)) && [[ -z ${no_time[$name]:-} && -n $log && -s $log ]]; then
    echo "----- last lines of $log -----"
    tail -n 25 "$log"
    echo "-----"
  fi
  will_not_run "$name"
}

skip() {  # skip NAME REASON
  result[$1]=skip
  note[$1]=$2
  took[$1]=0
  will_not_run "$1"
  say "$1: skipped: $2"
}

declare -A started=() timeouts=() no_time=()
# run NAME LOG CMD...: runs CMD under NAME's timeout, all output to LOG; sets rc. With TEE=1 the
# output is also shown here.
run() {
  local name=$1 log=$2 t
  shift 2
  started[$name]=$SECONDS
  if ! t=$(step_timeout "$name"); then
    rc=1
    no_time[$name]=1
    echo "no time left in the ${budget}s budget" >"$log"
    return
  fi
  timeouts[$name]=$t
  say "$name: running (timeout ${t}s, log ${log#"$out"/}): $*"
  if [[ ${TEE:-0} == 1 ]]; then
    timeout -k 10 "$t" "$@" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
  else
    timeout -k 10 "$t" "$@" >"$log" 2>&1
    rc=$?
  fi
}

say "$(date -u '+%Y-%m-%d %H:%M:%S UTC'): checking $root, results under $out, ${budget}s budget, $jobs cores"

# --- 1. probe -------------------------------------------------------------------------------------
started[probe]=$SECONDS
probe_log=$out/probe.log
problems=()
pybin=$("$PY" -c 'import os, sys; print(os.path.dirname(sys.executable))' 2>/dev/null || true)
for tool in cmake ninja; do
  if ! command -v "$tool" >/dev/null && [[ -n $pybin && -x $pybin/$tool ]]; then
    export PATH="$pybin:$PATH"  # pip's cmake and ninja, beside the python that has torch
  fi
done
nvcc=$(command -v nvcc || true)
for candidate in "${CUDA_HOME:-}/bin/nvcc" /usr/local/cuda/bin/nvcc; do
  [[ -z $nvcc && -x $candidate ]] && nvcc=$candidate
done
generator="Unix Makefiles"
command -v ninja >/dev/null && generator=Ninja

cat >"$out/torch_info.py" <<'EOF'
import sys
import torch
print(torch.__version__, torch.version.cuda, torch.utils.cmake_prefix_path,
      torch.compiled_with_cxx11_abi())
print("python=" + sys.executable)
print("torch_version=" + torch.__version__)
print("torch_cuda=" + str(torch.version.cuda))
print("cmake_prefix=" + torch.utils.cmake_prefix_path)
print("cxx11_abi=%d" % int(torch.compiled_with_cxx11_abi()))
print("cuda_available=%d" % int(torch.cuda.is_available()))
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device_count=%d" % torch.cuda.device_count())
    print("device_name=" + p.name)
    print("device_capability=%d.%d" % (p.major, p.minor))
    print("device_memory_bytes=%d" % p.total_memory)
EOF
{
  echo "== host"; uname -a; echo "cores: $jobs"; free -g 2>/dev/null
  echo "== nvidia-smi"; timeout 30 nvidia-smi; smi_rc=$?; echo "(rc $smi_rc)"
  echo "== nvcc ($nvcc)"; [[ -n $nvcc ]] && timeout 30 "$nvcc" --version; echo "(rc $?)"
  echo "== cmake ($(command -v cmake))"; timeout 30 cmake --version; echo "(rc $?)"
  echo "== generator: $generator ($(command -v ninja || command -v make))"
  echo "== compiler"; timeout 30 "${CXX:-c++}" --version; echo "(rc $?)"
  echo "== python ($PY) and torch"
} >"$probe_log" 2>&1
timeout 90 "$PY" "$out/torch_info.py" >"$out/torch-info.txt" 2>>"$probe_log"
torch_rc=$?
rm -f "$out/torch_info.py"
cat "$out/torch-info.txt" >>"$probe_log"
info() { sed -n "s/^$1=//p" "$out/torch-info.txt" | head -n 1; }
torch_prefix=$(info cmake_prefix)
capability=$(info device_capability)
torch_version=$(info torch_version)
cxx11_abi=$(info cxx11_abi)

((smi_rc == 0)) || problems+=("nvidia-smi failed (rc $smi_rc)")
[[ -n $nvcc ]] || problems+=("no nvcc (PATH, \$CUDA_HOME/bin, /usr/local/cuda/bin)")
command -v cmake >/dev/null || problems+=("no cmake")
if ((torch_rc != 0)) || [[ -z $torch_prefix ]]; then
  problems+=("'$PY -c \"import torch\"' failed")
elif [[ $(info cuda_available) != 1 ]]; then
  problems+=("torch $(info torch_version) sees no CUDA device")
fi
if ((${#problems[@]})); then
  joined=$(printf '%s; ' "${problems[@]}")
  finish probe 1 "${joined%; }" "$probe_log"
else
  finish probe 0 "$(info device_name), torch $(info torch_version) (CUDA $(info torch_cuda)), nvcc at $nvcc, $generator" ""
fi

# What the rest of the run (and ctest's own CMake runs: the install test) use.
[[ -n $torch_prefix ]] && export CMAKE_PREFIX_PATH="$torch_prefix${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
if [[ -n $nvcc ]]; then
  cuda_root=$(dirname "$(dirname "$(readlink -f "$nvcc")")")
  export CUDACXX=$nvcc CUDAToolkit_ROOT=$cuda_root
fi
if [[ -n $capability ]]; then
  export CUDAARCHS=${capability/./} TORCH_CUDA_ARCH_LIST=$capability
fi

# --- 2. configure ---------------------------------------------------------------------------------
configure_log=$out/configure.log
tests_off="" bench_off=""
if [[ -z $torch_prefix ]] || ! command -v cmake >/dev/null; then
  skip configure "needs cmake and torch's CMake prefix (probe failed)"
else
  # Which of GoogleTest and Google Benchmark CMake finds installed here.
  probe_dir=$root/build/gpu-deps-probe
  rm -rf "$probe_dir"
  mkdir -p "$probe_dir"
  cat >"$probe_dir/CMakeLists.txt" <<'EOF'
cmake_minimum_required(VERSION 3.16)
project(actmem_deps_probe CXX)
find_package(GTest QUIET)
find_package(benchmark QUIET)
message(STATUS "actmem-deps-probe: GTest=${GTest_FOUND} benchmark=${benchmark_FOUND}")
EOF
  deps=$(timeout 60 cmake -S "$probe_dir" -B "$probe_dir/build" 2>&1 | tee "$configure_log" |
    sed -n 's/.*actmem-deps-probe: //p')
  have_gtest=0 have_bench=0
  [[ $deps =~ GTest=(1|TRUE|ON|YES) ]] && have_gtest=1
  [[ $deps =~ benchmark=(1|TRUE|ON|YES) ]] && have_bench=1

  args=(-S "$root" -B "$build" -G "$generator" -DCMAKE_BUILD_TYPE=Release
    -DCMAKE_PREFIX_PATH="$torch_prefix" -DACTMEM_WERROR=OFF
    -DACTMEM_PYTHON="$(command -v "$PY")")
  [[ -n $nvcc ]] && args+=(-DCMAKE_CUDA_COMPILER="$nvcc" -DCUDAToolkit_ROOT="$cuda_root")
  [[ -n $capability ]] && args+=(-DCMAKE_CUDA_ARCHITECTURES="${capability/./}")
  # LibTorch 2.5-2.7 looked for NVTX3 in the consuming project's own third_party/ unless told to
  # use the toolkit's; later versions do not read this.
  grep -qs nvtx3_dir "$torch_prefix/Caffe2/public/cuda.cmake" && args+=(-DUSE_SYSTEM_NVTX=ON)
  if [[ $cxx11_abi == 0 ]]; then
    # The torch target carries -D_GLIBCXX_USE_CXX11_ABI=0 only to what links it; the allocator,
    # GoogleTest and Google Benchmark must match, so everything is built with it, from source.
    args+=(-DCMAKE_CXX_FLAGS=-D_GLIBCXX_USE_CXX11_ABI=0
      -DCMAKE_DISABLE_FIND_PACKAGE_GTest=ON -DCMAKE_DISABLE_FIND_PACKAGE_benchmark=ON)
    have_gtest=0 have_bench=0
  fi
  # Every choice explicit: a build folder from an earlier run keeps its cache.
  gtest_from=installed bench_from=installed
  gtest_dir="" bench_dir="" build_tests=ON build_bench=ON
  if ((!have_gtest)); then
    if [[ -f $third_party/googletest/CMakeLists.txt ]]; then
      gtest_dir=$third_party/googletest
      gtest_from=third_party/googletest
    else
      build_tests=OFF
      tests_off="GoogleTest is neither installed nor in third_party/googletest (run scripts/vendor-gpu-deps.sh where it is, and copy third_party/ here)"
      gtest_from=none
    fi
  fi
  if ((!have_bench)); then
    if [[ -f $third_party/benchmark/CMakeLists.txt ]]; then
      bench_dir=$third_party/benchmark
      bench_from=third_party/benchmark
    else
      build_bench=OFF
      bench_off="Google Benchmark is neither installed nor in third_party/benchmark, so bench/ (and actmem_compare) was not built (run scripts/vendor-gpu-deps.sh where it is, and copy third_party/ here)"
      bench_from=none
    fi
  fi
  args+=(-DACTMEM_BUILD_TESTS="$build_tests" -DACTMEM_GTEST_SOURCE_DIR="$gtest_dir"
    -DACTMEM_BUILD_BENCH="$build_bench" -DACTMEM_BENCHMARK_SOURCE_DIR="$bench_dir")
  echo "== GoogleTest: $gtest_from; Google Benchmark: $bench_from" >>"$configure_log"
  {
    printf '== cmake'; printf ' %q' "${args[@]}"; echo
  } >>"$configure_log"
  TEE=0 run configure "$out/configure.cmake.log" cmake "${args[@]}"
  cat "$out/configure.cmake.log" >>"$configure_log"
  rm -f "$out/configure.cmake.log"
  finish configure "$rc" "GoogleTest: $gtest_from; Google Benchmark: $bench_from" "$configure_log"
  [[ -n $tests_off ]] && will_not_run test
  [[ -n $bench_off ]] && will_not_run compare
fi

# --- 3. build -------------------------------------------------------------------------------------
build_log=$out/build.log
if [[ ${result[configure]:-} != pass ]]; then
  will_not_run test
  will_not_run compare
  skip build "configure did not pass"
else
  keep_going=(-k 0)
  [[ $generator == Ninja ]] || keep_going=(-k)
  run build "$build_log" cmake --build "$build" --parallel "$jobs" -- "${keep_going[@]}"
  errors=$(grep -c -E 'error:|FAILED:' "$build_log" 2>/dev/null)
  finish build "$rc" "${errors:-0} error lines" "$build_log"
  [[ -x $build/bench/actmem_compare ]] || will_not_run compare
fi

# --- 4. test --------------------------------------------------------------------------------------
test_log=$out/test.log
if [[ -n $tests_off ]]; then
  skip test "$tests_off"
elif [[ ! -f $build/CTestTestfile.cmake ]]; then
  skip test "no configured build to test"
else
  TEE=1 run test "$test_log" ctest --test-dir "$build" --output-on-failure --parallel "$ctest_jobs" \
    --output-junit "$out/test-junit.xml"
  finish test "$rc" "$(grep -E 'tests passed|tests failed' "$test_log" | tail -n 1)" ""
fi

# --- 5. compare (the main job) ---------------------------------------------------------------------
compare_log=$out/compare.log
compare_bin=$build/bench/actmem_compare
if [[ -n $bench_off ]]; then
  skip compare "the main job was not run: $bench_off"
elif [[ ! -x $compare_bin ]]; then
  skip compare "$compare_bin was not built (see build.log)"
else
  # The pinned host pool grows without a cap unless told: offload's max-batch search could pin
  # most of the machine's memory. 48 GiB bounds it well inside the device machine's 128.
  # shellcheck disable=SC2086  # ACTMEM_COMPARE_ARGS is a list of words
  run compare "$compare_log" env ACTMEM_HOST_BUDGET="${ACTMEM_HOST_BUDGET:-48GiB}" \
    "$compare_bin" --out "$out/results" ${ACTMEM_COMPARE_ARGS:---preset gpu-check}
  finish compare "$rc" "results in results/" "$compare_log"
fi

# --- 6. pluggable: PyTorch's CUDAPluggableAllocator over libactmem_alloc.so ------------------------
alloc_so=$build/allocator/libactmem_alloc.so
if [[ $torch_rc != 0 ]]; then
  skip pluggable "torch is not importable (probe)"
elif [[ ! -f $alloc_so ]]; then
  skip pluggable "$alloc_so was not built"
else
  # env after timeout: only python gets ACTMEM_*; any process holding actmem's library writes
  # ACTMEM_STATS at its exit.
  run pluggable "$out/pluggable.log" env ACTMEM_BACKEND=cuda \
    ACTMEM_STATS="$out/pluggable_stats.json" "$PY" tests/gpu/pluggable_allocator.py "$alloc_so"
  finish pluggable "$rc" "$(grep '^pluggable allocator:' "$out/pluggable.log" | tail -n 1 | cut -c1-200)" \
    "$out/pluggable.log"
fi

# --- 7. preload: an unmodified training script under LD_PRELOAD=libactmem_preload.so --------------
preload_so=$build/allocator/libactmem_preload.so
preload_stats=$out/preload_stats.json
preload_budget=8GiB preload_budget_bytes=$((8 << 30))
if [[ $torch_rc != 0 ]]; then
  skip preload "torch is not importable (probe)"
elif [[ ! -f $preload_so ]]; then
  skip preload "$preload_so was not built (it needs the CUDA toolkit at configure time)"
else
  rm -f "$preload_stats"
  run preload "$out/preload.log" env LD_PRELOAD="$preload_so" PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
    ACTMEM_BUDGET="$preload_budget" ACTMEM_STATS="$preload_stats" "$PY" tests/gpu/preload_training.py
  if ((rc == 0)); then
    timeout 60 "$PY" tests/gpu/actmem_stats.py "$preload_stats" --label "preload stats" \
      --min-peak-bytes $((64 << 20)) --budget-bytes "$preload_budget_bytes" >>"$out/preload.log" 2>&1
    rc=$?
  fi
  finish preload "$rc" "$(grep -E '^preload stats:' "$out/preload.log" ||
    tail -n 1 "$out/preload.log" | cut -c1-200)" "$out/preload.log"
fi

# --- 7b. preload-vmm: the same under growable segments --------------------------------------------
# What vmm must show before it becomes the default on CUDA (issue 17): it serves a real program
# under the shim (cudaMalloc's pool unmapped without waiting, Note [Unmapping waits for the
# stream]), with no backend error, and the stats name the layout.
preload_vmm_stats=$out/preload_vmm_stats.json
if [[ $torch_rc != 0 ]]; then
  skip preload-vmm "torch is not importable (probe)"
elif [[ ! -f $preload_so ]]; then
  skip preload-vmm "$preload_so was not built (it needs the CUDA toolkit at configure time)"
else
  rm -f "$preload_vmm_stats"
  run preload-vmm "$out/preload_vmm.log" env LD_PRELOAD="$preload_so" \
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 ACTMEM_ALLOC_CONF=backend:vmm ACTMEM_BUDGET="$preload_budget" \
    ACTMEM_STATS="$preload_vmm_stats" "$PY" tests/gpu/preload_training.py
  if ((rc == 0)); then
    timeout 60 "$PY" tests/gpu/actmem_stats.py "$preload_vmm_stats" --label "preload vmm stats" \
      --backend vmm --min-peak-bytes $((64 << 20)) --budget-bytes "$preload_budget_bytes" \
      >>"$out/preload_vmm.log" 2>&1
    rc=$?
  fi
  finish preload-vmm "$rc" "$(grep -E '^preload vmm stats:' "$out/preload_vmm.log" ||
    tail -n 1 "$out/preload_vmm.log" | cut -c1-200)" "$out/preload_vmm.log"
fi

# --- 8. torch: PyTorch's own checkpoint and save_on_cpu, for the side-by-side table ---------------
if [[ $torch_rc != 0 ]]; then
  skip torch "torch is not importable (probe)"
else
  # shellcheck disable=SC2086  # ACTMEM_TORCH_ARGS is a list of words
  TEE=1 run torch "$out/side_by_side.log" "$PY" tests/gpu/pytorch_side_by_side.py \
    --out "$out/torch_side_by_side.json" ${ACTMEM_TORCH_ARGS:---max-batch-budget 8GiB}
  if ((rc == 0)); then
    finish torch 0 "records in torch_side_by_side.json" ""
  else
    finish torch "$rc" "$(tail -n 1 "$out/side_by_side.log" | cut -c1-200)" ""
  fi
fi

# --- 9. python: the Python package's unmodified scripts on CUDA under each policy -----------------
if [[ $torch_rc != 0 ]]; then
  skip python "torch is not importable (probe)"
elif ! compgen -G "$build/python/actmem/_C*.so" >/dev/null; then
  skip python "the Python package (actmem._C) was not built (Python headers missing?)"
else
  TEE=1 run python "$out/python_policies.log" env PYTHONPATH="$build/python" "$PY" \
    tests/gpu/python_policies.py --out "$out/python_policies.json"
  finish python "$rc" "$(grep '^python policies:' "$out/python_policies.log" | tail -n 1 | cut -c1-200)" ""
fi

# --- 10. allocators: PyTorch's default, expandable_segments and actmem's layouts, side by side -----
if [[ $torch_rc != 0 ]]; then
  skip allocators "torch is not importable (probe)"
elif [[ ! -f $alloc_so ]]; then
  skip allocators "$alloc_so was not built"
else
  # shellcheck disable=SC2086  # ACTMEM_ALLOCATOR_ARGS is a list of words
  TEE=1 run allocators "$out/allocators.log" "$PY" tests/gpu/allocator_side_by_side.py "$alloc_so" \
    --out "$out/allocators.json" ${ACTMEM_ALLOCATOR_ARGS:-}
  finish allocators "$rc" "$(grep '^allocator side by side:' "$out/allocators.log" | tail -n 1 | cut -c1-200)" ""
fi

# --- summary --------------------------------------------------------------------------------------
failed=0
{
  echo "actmem gpu-check, $(date -u '+%Y-%m-%d %H:%M:%S UTC'), $((SECONDS))s of ${budget}s"
  gpu=$(info device_name)
  [[ -n $gpu ]] && gpu="$gpu, $(info device_memory_bytes) bytes"
  echo "machine: $jobs cores; GPU: ${gpu:-none seen}; torch ${torch_version:-not importable}, CUDA $(info torch_cuda)"
  echo
  printf '%-11s %-5s %5s  %s\n' step result secs note
  for step in "${order[@]}"; do
    printf '%-11s %-5s %5s  %s\n' "$step" "${result[$step]:-skip}" "${took[$step]:-0}" "${note[$step]:-}"
    [[ ${result[$step]:-skip} == pass ]] || failed=1
  done
  echo
  echo "where each result went:"
  while IFS='|' read -r what path; do
    if [[ -e $path ]]; then state=$(du -sh "$path" 2>/dev/null | cut -f1); else state=missing; fi
    printf '  %-34s %-7s %s\n' "$what" "$state" "$path"
  done <<EOF
this summary|$out/summary.txt
step log of this run|$out/gpu-check.log
probe (GPU, nvcc, cmake, torch)|$out/probe.log
torch facts (key=value)|$out/torch-info.txt
configure log|$out/configure.log
build log|$out/build.log
build tree|$build
test log (ctest)|$out/test.log
test results (JUnit XML)|$out/test-junit.xml
main job log|$out/compare.log
main job results (summary.*)|$out/results
pluggable-allocator test log|$out/pluggable.log
pluggable-allocator stats (exit)|$out/pluggable_stats.json
LD_PRELOAD test log|$out/preload.log
LD_PRELOAD stats (ACTMEM_STATS)|$preload_stats
LD_PRELOAD under vmm log|$out/preload_vmm.log
LD_PRELOAD under vmm stats|$preload_vmm_stats
PyTorch side-by-side log|$out/side_by_side.log
PyTorch side-by-side records|$out/torch_side_by_side.json
Python package on CUDA log|$out/python_policies.log
Python package on CUDA records|$out/python_policies.json
allocators side by side log|$out/allocators.log
allocators side by side records|$out/allocators.json
EOF
  [[ -n $archive ]] && echo "  all of the above but the build tree, as one file: $archive"
} >"$out/summary.txt"
cat "$out/summary.txt"
if [[ -n $archive ]]; then
  tar -czf "$archive" -C "$(dirname "$out")" "$(basename "$out")" ||
    { echo "gpu-check: could not write $archive" >&2; failed=1; }
fi
if ((failed)); then
  say "FAILED or skipped steps above; exit 1"
  exit 1
fi
say "every step passed"
exit 0
