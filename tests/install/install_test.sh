#!/usr/bin/env bash
# Installs the build tree into a temporary prefix and builds a downstream project against it
# with find_package(actmem CONFIG REQUIRED).
#   Usage: install_test.sh BUILD_DIR SOURCE_DIR [CMAKE_ARGS...]   (e.g. -DTorch_DIR=..., which the
#   package's find_dependency(Torch) needs when LibTorch is not on CMAKE_PREFIX_PATH)
set -euo pipefail
build=$1 source=$2
shift 2
prefix=$(mktemp -d)
trap 'rm -rf "$prefix"' EXIT
cmake --install "$build" --prefix "$prefix" >/dev/null
cmake -S "$source/tests/install/downstream" -B "$prefix/downstream-build" -G Ninja \
  -DCMAKE_PREFIX_PATH="$prefix" "$@" >/dev/null
cmake --build "$prefix/downstream-build" >/dev/null
"$prefix/downstream-build/downstream"
