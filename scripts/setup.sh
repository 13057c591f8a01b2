# Shared by run.sh and test.sh: install what is missing, then configure and build a preset.
# Sourced, not run.

# libopenblas0-pthread: Debian's LibTorch calls whatever libblas.so.3 the system selects; the
# reference BLAS it falls back to makes the LSTM's matrix products ten times slower.
ACTMEM_PACKAGES=(cmake ninja-build g++ libtorch-dev libgtest-dev libbenchmark-dev libopenblas0-pthread)

# Installs the Debian packages that are missing; silent when none is.
actmem_install_missing() {
  local missing=()
  for package in "${ACTMEM_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" ||
      missing+=("$package")
  done
  ((${#missing[@]} == 0)) && return 0
  echo "actmem: installing ${missing[*]}" >&2
  local sudo=()
  if [[ $(id -u) != 0 ]]; then
    command -v sudo >/dev/null || {
      echo "actmem: missing packages (${missing[*]}) and no root to install them" >&2
      return 1
    }
    sudo=(sudo)
  fi
  "${sudo[@]}" apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >&2
}

# actmem_build PRESET: configures (once) and builds build/PRESET, quietly unless it fails.
actmem_build() {
  local preset=$1 log
  log=$(mktemp)
  if ! { cmake --preset "$preset" && cmake --build --preset "$preset"; } >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    echo "actmem: the $preset build failed" >&2
    return 1
  fi
  rm -f "$log"
}
