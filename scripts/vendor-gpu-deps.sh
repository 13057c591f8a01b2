#!/usr/bin/env bash
# Copies the sources of GoogleTest and Google Benchmark into third_party/ (ignored by git), for a
# machine that has neither and cannot install them, such as the GPU machine scripts/gpu-check.sh
# runs on. Copy third_party/ there along with the checkout; CMake builds them from source through
# ACTMEM_GTEST_SOURCE_DIR and ACTMEM_BENCHMARK_SOURCE_DIR when it finds no installed package
# (scripts/gpu-check.sh passes both when the folders exist).
#
#   third_party/googletest   from $GTEST_SOURCE (default /usr/src/googletest: Debian's googletest,
#                            which libgtest-dev pulls in)
#   third_party/benchmark    from $BENCHMARK_SOURCE (a source tree or a .tar.gz of one) when set;
#                            else the Debian source package of the installed libbenchmark-dev,
#                            fetched with `apt-get source` through a temporary deb-src list (the
#                            system's apt configuration is left as it is)
#
# Run it on this (Debian) machine, from anywhere. Exits non-zero when either could not be had.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest=$root/third_party
mkdir -p "$dest"
status=0

# --- GoogleTest ---
gtest_source=${GTEST_SOURCE:-/usr/src/googletest}
if [[ -f $gtest_source/CMakeLists.txt && -d $gtest_source/googletest ]]; then
  rm -rf "$dest/googletest"
  cp -a "$gtest_source/." "$dest/googletest/"
  version=$(dpkg-query -W -f='${Version}' googletest 2>/dev/null || echo unknown)
  echo "vendor: third_party/googletest <- $gtest_source (Debian googletest $version)"
else
  echo "vendor: no GoogleTest sources at $gtest_source (Debian: apt-get install googletest," \
    "or set GTEST_SOURCE to a GoogleTest source tree)" >&2
  status=1
fi

# --- Google Benchmark ---
# Unpacks the tarball $1 into third_party/benchmark (its single top folder stripped).
unpack_benchmark() {
  rm -rf "$dest/benchmark"
  mkdir -p "$dest/benchmark"
  tar -xzf "$1" -C "$dest/benchmark" --strip-components=1
}

# Fetches the Debian source of the installed libbenchmark-dev into $1; prints the orig tarball.
fetch_debian_benchmark() {
  local work=$1 version codename
  version=$(dpkg-query -W -f='${source:Version}' libbenchmark-dev 2>/dev/null) || {
    echo "vendor: libbenchmark-dev is not installed: its version names the source to fetch" >&2
    return 1
  }
  # shellcheck source=/dev/null
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  [[ -n $codename ]] || { echo "vendor: no VERSION_CODENAME in /etc/os-release" >&2; return 1; }
  mkdir -p "$work/lists/partial" "$work/download"
  echo "deb-src http://deb.debian.org/debian $codename main" >"$work/sources.list"
  local apt=(-o "Dir::Etc::SourceList=$work/sources.list" -o "Dir::Etc::SourceParts=$work/none"
    -o "Dir::State::Lists=$work/lists" -o "APT::Sandbox::User=root")
  apt-get "${apt[@]}" -qq update >&2 || return 1
  (cd "$work/download" && apt-get "${apt[@]}" -qq source --download-only "benchmark=$version" >&2) ||
    return 1
  local origs=("$work"/download/benchmark_*.orig.tar.gz)
  [[ -f ${origs[0]} ]] || { echo "vendor: apt-get source left no orig tarball" >&2; return 1; }
  echo "${origs[0]}"
}

benchmark_source=${BENCHMARK_SOURCE:-}
if [[ -n $benchmark_source && -d $benchmark_source ]]; then
  rm -rf "$dest/benchmark"
  cp -a "$benchmark_source/." "$dest/benchmark/"
  echo "vendor: third_party/benchmark <- $benchmark_source"
elif [[ -n $benchmark_source ]]; then
  unpack_benchmark "$benchmark_source"
  echo "vendor: third_party/benchmark <- $benchmark_source"
else
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  if orig=$(fetch_debian_benchmark "$work"); then
    unpack_benchmark "$orig"
    echo "vendor: third_party/benchmark <- Debian source $(basename "$orig")" \
      "(checksums verified by apt against the signed index)"
  else
    echo "vendor: Google Benchmark sources could not be fetched; set BENCHMARK_SOURCE to a" \
      "source tree or tarball (https://github.com/google/benchmark, a release)" >&2
    status=1
  fi
fi
if [[ -d $dest/benchmark && ! -f $dest/benchmark/CMakeLists.txt ]]; then
  echo "vendor: third_party/benchmark holds no CMakeLists.txt: not a Google Benchmark tree" >&2
  status=1
fi

du -sh "$dest" 2>/dev/null | sed 's/^/vendor: total /'
exit "$status"
