# GoogleTest and Google Benchmark: an installed package when CMake finds one, else built from a
# source tree given here. A machine that has neither package and cannot install one (the GPU
# machine scripts/gpu-check.sh runs on) gets the sources from scripts/vendor-gpu-deps.sh, which
# copies them into third_party/.
#
#   ACTMEM_GTEST_SOURCE_DIR       a GoogleTest source tree (the folder holding googletest/)
#   ACTMEM_BENCHMARK_SOURCE_DIR   a Google Benchmark source tree
set(ACTMEM_GTEST_SOURCE_DIR "" CACHE PATH
  "GoogleTest sources, built when find_package(GTest) finds no installed GoogleTest")
set(ACTMEM_BENCHMARK_SOURCE_DIR "" CACHE PATH
  "Google Benchmark sources, built when find_package(benchmark) finds no installed one")

# actmem_require_gtest(): GTest::gtest and GTest::gtest_main, or a configure error that says how
# to get them. (A function: the options set for GoogleTest's own build stay in here.)
function(actmem_require_gtest)
  find_package(GTest QUIET)
  if(GTest_FOUND)
    return()
  endif()
  if(NOT ACTMEM_GTEST_SOURCE_DIR)
    message(FATAL_ERROR "actmem: GoogleTest not found. Install it (Debian: libgtest-dev), or set "
      "-DACTMEM_GTEST_SOURCE_DIR=<GoogleTest source tree> (scripts/vendor-gpu-deps.sh puts one "
      "in third_party/googletest), or configure with -DACTMEM_BUILD_TESTS=OFF.")
  endif()
  if(NOT EXISTS "${ACTMEM_GTEST_SOURCE_DIR}/CMakeLists.txt")
    message(FATAL_ERROR "actmem: ACTMEM_GTEST_SOURCE_DIR=${ACTMEM_GTEST_SOURCE_DIR} holds no "
      "CMakeLists.txt: expected a GoogleTest source tree (the folder holding googletest/).")
  endif()
  set(BUILD_GMOCK OFF)
  set(INSTALL_GTEST OFF)
  add_subdirectory("${ACTMEM_GTEST_SOURCE_DIR}" "${PROJECT_BINARY_DIR}/_deps/googletest"
    EXCLUDE_FROM_ALL)
  foreach(name gtest gtest_main)
    if(NOT TARGET GTest::${name})  # GoogleTest 1.11 and later define these aliases themselves
      add_library(GTest::${name} ALIAS ${name})
    endif()
  endforeach()
  message(STATUS "actmem: GoogleTest built from ${ACTMEM_GTEST_SOURCE_DIR}")
endfunction()

# actmem_require_benchmark(): benchmark::benchmark, or a configure error that says how to get it.
function(actmem_require_benchmark)
  find_package(benchmark QUIET)
  if(benchmark_FOUND)
    return()
  endif()
  if(NOT ACTMEM_BENCHMARK_SOURCE_DIR)
    message(FATAL_ERROR "actmem: Google Benchmark not found. Install it (Debian: "
      "libbenchmark-dev), or set -DACTMEM_BENCHMARK_SOURCE_DIR=<Google Benchmark source tree> "
      "(scripts/vendor-gpu-deps.sh puts one in third_party/benchmark), or configure with "
      "-DACTMEM_BUILD_BENCH=OFF.")
  endif()
  if(NOT EXISTS "${ACTMEM_BENCHMARK_SOURCE_DIR}/CMakeLists.txt")
    message(FATAL_ERROR "actmem: ACTMEM_BENCHMARK_SOURCE_DIR=${ACTMEM_BENCHMARK_SOURCE_DIR} holds "
      "no CMakeLists.txt: expected a Google Benchmark source tree.")
  endif()
  set(BENCHMARK_ENABLE_TESTING OFF)
  set(BENCHMARK_ENABLE_GTEST_TESTS OFF)
  set(BENCHMARK_ENABLE_INSTALL OFF)
  set(BENCHMARK_INSTALL_DOCS OFF)
  set(BENCHMARK_ENABLE_WERROR OFF)
  set(BENCHMARK_ENABLE_LIBPFM OFF)
  set(BENCHMARK_DOWNLOAD_DEPENDENCIES OFF)
  # Its version would otherwise come from `git describe` (and `git update-index`) run in its
  # source folder, which is inside actmem's own checkout.
  set(CMAKE_DISABLE_FIND_PACKAGE_Git ON)
  set(GIT_EXECUTABLE "")
  add_subdirectory("${ACTMEM_BENCHMARK_SOURCE_DIR}" "${PROJECT_BINARY_DIR}/_deps/benchmark"
    EXCLUDE_FROM_ALL)
  # Its headers are not ours: keep actmem's strict warnings off them.
  get_target_property(dirs benchmark INTERFACE_INCLUDE_DIRECTORIES)
  set_property(TARGET benchmark APPEND PROPERTY INTERFACE_SYSTEM_INCLUDE_DIRECTORIES ${dirs})
  if(NOT TARGET benchmark::benchmark)
    add_library(benchmark::benchmark ALIAS benchmark)
  endif()
  message(STATUS "actmem: Google Benchmark built from ${ACTMEM_BENCHMARK_SOURCE_DIR}")
endfunction()

# actmem_benchmark_api(<target>): tells <target>'s sources which form of Run Google Benchmark has
# (bench/benchmark_compat.h): ACTMEM_BENCHMARK_RUN_SKIPPED when Run::skipped compiles (1.8 and
# later). Decided by compiling against the benchmark found, not by its version number.
function(actmem_benchmark_api target)
  if(NOT DEFINED ACTMEM_BENCHMARK_RUN_SKIPPED)
    include(CheckCXXSourceCompiles)
    include(CMakePushCheckState)
    cmake_push_check_state(RESET)
    get_target_property(imported benchmark::benchmark IMPORTED)
    if(imported)
      get_target_property(dirs benchmark::benchmark INTERFACE_INCLUDE_DIRECTORIES)
    else()  # built from source here: its headers, and the export.h its CMake generates
      set(dirs "${ACTMEM_BENCHMARK_SOURCE_DIR}/include" "${PROJECT_BINARY_DIR}/_deps/benchmark/include")
    endif()
    set(CMAKE_REQUIRED_INCLUDES ${dirs})
    set(CMAKE_REQUIRED_QUIET ON)
    check_cxx_source_compiles([[
      #include <benchmark/benchmark.h>
      int main() {
        benchmark::BenchmarkReporter::Run run;
        return run.skipped == benchmark::internal::NotSkipped && run.skip_message.empty() ? 0 : 1;
      }]] ACTMEM_BENCHMARK_RUN_SKIPPED)
    cmake_pop_check_state()
    if(ACTMEM_BENCHMARK_RUN_SKIPPED)
      message(STATUS "actmem: Google Benchmark reports failed runs as Run::skipped (1.8 or later)")
    else()
      message(STATUS "actmem: Google Benchmark reports failed runs as Run::error_occurred (1.7 or earlier)")
    endif()
  endif()
  if(ACTMEM_BENCHMARK_RUN_SKIPPED)
    target_compile_definitions(${target} PUBLIC ACTMEM_BENCHMARK_RUN_SKIPPED)
  endif()
endfunction()
