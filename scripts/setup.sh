# Shared by run.sh and test.sh: install what is missing, then configure and build a preset.
# Sourced, not run.

# LibTorch is not among them: it comes from PyPI (actmem_install_torch).
ACTMEM_PACKAGES=(cmake ninja-build clang g++ libgtest-dev libbenchmark-dev python3 python3-venv python3-dev)

# The LibTorch every build uses: PyTorch's own wheel from PyPI (a CUDA build, the same as the GPU
# machine's), in a virtual environment of the project's own. CMake finds it there
# (cmake/ActmemTorch.cmake).
ACTMEM_TORCH_VERSION=2.11.0
ACTMEM_VENV=${ACTMEM_VENV:-$PWD/.venv}

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

# Creates $ACTMEM_VENV with torch==$ACTMEM_TORCH_VERSION when it lacks it: about 2.7 GB downloaded
# (torch and the NVIDIA libraries it depends on), 4.6 GB installed. Silent when it is there.
actmem_install_torch() {
  local python=$ACTMEM_VENV/bin/python
  if [[ -x $python ]] && [[ $("$python" -c \
    'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null) == "$ACTMEM_TORCH_VERSION"* ]]; then
    return 0
  fi
  echo "actmem: installing torch==$ACTMEM_TORCH_VERSION from PyPI into $ACTMEM_VENV" \
    "(about 2.7 GB to download, once)" >&2
  [[ -x $python ]] || python3 -m venv "$ACTMEM_VENV" >&2 || {
    echo "actmem: could not create the virtual environment $ACTMEM_VENV" >&2
    return 1
  }
  "$python" -m pip install --quiet --disable-pip-version-check --progress-bar off \
    "torch==$ACTMEM_TORCH_VERSION" >&2 || {
    echo "actmem: pip could not install torch==$ACTMEM_TORCH_VERSION into $ACTMEM_VENV" >&2
    return 1
  }
}

# Installs the Python package from build/PRESET into $ACTMEM_VENV (python/setup.py reuses that
# build), with pytest for its tests; skipped for presets that do not build it (the sanitizers').
actmem_install_python_package() {
  local preset=$1 python=$ACTMEM_VENV/bin/python
  [[ -d build/$preset/python/actmem ]] || return 0
  "$python" -c 'import pytest' 2>/dev/null ||
    "$python" -m pip install --quiet --disable-pip-version-check --progress-bar off pytest >&2 || {
      echo "actmem: pip could not install pytest into $ACTMEM_VENV" >&2
      return 1
    }
  ACTMEM_BUILD_DIR=build/$preset "$python" -m pip install --quiet --disable-pip-version-check \
    --no-deps --force-reinstall ./python >&2 || {
    echo "actmem: pip could not install the actmem package (python/) into $ACTMEM_VENV" >&2
    return 1
  }
}

# actmem_build PRESET: configures (once) and builds build/PRESET, quietly unless it fails.
actmem_build() {
  local preset=$1 log
  log=$(mktemp)
  if ! { cmake --preset "$preset" -DACTMEM_PYTHON="$ACTMEM_VENV/bin/python" &&
    cmake --build --preset "$preset"; } >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    echo "actmem: the $preset build failed" >&2
    return 1
  fi
  rm -f "$log"
}
