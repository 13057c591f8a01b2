# LibTorch: the one actmem builds against is the C++ half of a PyTorch 2.x Python package (a CUDA
# build on PyPI), found through that package's torch.utils.cmake_prefix_path.
#
#   Torch_DIR / CMAKE_PREFIX_PATH   used as they are when they already lead to a TorchConfig.cmake
#   ACTMEM_PYTHON                   else the interpreter whose torch package is used (default: the
#                                   project's .venv, which ./test.sh and ./run.sh create)
set(ACTMEM_PYTHON "" CACHE FILEPATH
  "Python interpreter whose torch package provides LibTorch (default: <source>/.venv/bin/python)")

# actmem_find_torch(): find_package(Torch) for LibTorch 2.x, or a configure error that says how to
# get one. Leaves Torch_VERSION and TORCH_LIBRARIES set in the caller's scope.
macro(actmem_find_torch)
  find_package(Torch QUIET)
  if(NOT Torch_FOUND)
    set(_actmem_python "${ACTMEM_PYTHON}")
    if(NOT _actmem_python AND EXISTS "${PROJECT_SOURCE_DIR}/.venv/bin/python")
      set(_actmem_python "${PROJECT_SOURCE_DIR}/.venv/bin/python")
    endif()
    if(NOT _actmem_python)
      message(FATAL_ERROR "actmem: LibTorch not found. Run ./test.sh or ./run.sh once (they install "
        "torch into .venv/), or pass -DACTMEM_PYTHON=<a python with torch 2.x>, or "
        "-DTorch_DIR=<folder with TorchConfig.cmake>, or -DACTMEM_WITH_TORCH=OFF.")
    endif()
    # The package's location without importing it: importing torch takes seconds.
    execute_process(
      COMMAND "${_actmem_python}" -c
        "import importlib.util, os; spec = importlib.util.find_spec('torch'); print(os.path.join(spec.submodule_search_locations[0], 'share', 'cmake'))"
      OUTPUT_VARIABLE _actmem_torch_prefix OUTPUT_STRIP_TRAILING_WHITESPACE
      ERROR_VARIABLE _actmem_torch_error RESULT_VARIABLE _actmem_torch_rc)
    if(NOT _actmem_torch_rc EQUAL 0 OR NOT EXISTS "${_actmem_torch_prefix}/Torch/TorchConfig.cmake")
      message(FATAL_ERROR "actmem: ${_actmem_python} has no torch package with LibTorch's CMake "
        "files (${_actmem_torch_error}). Install one (pip install torch==2.11.0) or set "
        "-DACTMEM_PYTHON / -DTorch_DIR.")
    endif()
    list(APPEND CMAKE_PREFIX_PATH "${_actmem_torch_prefix}")
    find_package(Torch REQUIRED)
  endif()
  if(Torch_VERSION VERSION_LESS 2.0)
    message(FATAL_ERROR "actmem: LibTorch ${Torch_VERSION} at ${Torch_DIR} is too old: actmem "
      "needs 2.0 or later (it is built and tested against 2.11).")
  endif()
  message(STATUS "actmem: LibTorch ${Torch_VERSION} from ${Torch_DIR}")
endmacro()

# actmem_torch_pch(<target>): <target> compiles with actmem's one precompiled LibTorch header,
# built once (by actmem_hooks) and reused by every target that includes torch: a LibTorch 2.x
# header set takes a minute or more to precompile on one core.
function(actmem_torch_pch target)
  if(target STREQUAL "actmem_hooks")
    target_precompile_headers(${target} PRIVATE <torch/torch.h> <torch/csrc/autograd/engine.h>)
  else()
    target_precompile_headers(${target} REUSE_FROM actmem_hooks)
  endif()
  get_target_property(type ${target} TYPE)
  if(type STREQUAL "EXECUTABLE")
    # GCC refuses a PCH built with other -fpic/-fpie settings: an executable compiles its code
    # -fPIC, as the libraries do, instead of -fPIE (it still links as a PIE).
    set_target_properties(${target} PROPERTIES POSITION_INDEPENDENT_CODE OFF)
    target_compile_options(${target} PRIVATE -fPIC)
  endif()
endfunction()
