"""Installs the actmem Python package: ``pip install ./python`` from a checkout of actmem.

The extension (actmem._C) is built with the project's CMake against the torch of the interpreter
that runs pip, which must have torch 2.x installed:

    pip install ./python                         configures and builds in a temporary folder
    ACTMEM_BUILD_DIR=build/release pip install ./python
                                                 builds (incrementally) in a configured build of
                                                 the project instead; ./test.sh does this

pip's build isolation hides the environment's torch from the build; the build looks for it with
an interpreter that ignores pip's PYTHON* variables (python -E), so both plain and
--no-build-isolation installs work.
"""

import os
import pathlib
import shutil
import subprocess
import sys

from setuptools import Distribution, setup
from setuptools.command.build_py import build_py

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent


def _torch_cmake_dir() -> str:
    """The torch package's CMake folder, seen from the environment itself (not pip's isolated
    build environment, which lacks torch)."""
    # -E: without the PYTHON* variables through which pip's isolated build hides the environment.
    probe = subprocess.run(
        [sys.executable, "-E", "-c",
         "import torch.utils, sys; print(torch.utils.cmake_prefix_path); print(torch.__version__)"],
        capture_output=True, text=True)
    if probe.returncode != 0:
        detail = probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else ""
        sys.exit(f"actmem: this environment has no usable torch (pip install torch first): {detail}")
    prefix, version = probe.stdout.strip().splitlines()[-2:]
    if int(version.split(".")[0]) < 2:
        sys.exit(f"actmem: torch {version} is too old: actmem needs torch 2.x")
    return str(pathlib.Path(prefix) / "Torch")


def _environment_of(python: str) -> str:
    """The environment (sys.prefix) an interpreter runs in, outside pip's isolation."""
    probe = subprocess.run([python, "-E", "-c", "import sys; print(sys.prefix)"],
                           capture_output=True, text=True)
    return probe.stdout.strip() if probe.returncode == 0 else f"? ({python})"


def _build_extension(build_temp: pathlib.Path) -> pathlib.Path:
    """Builds actmem._C with CMake; returns the folder the package is staged in."""
    build_dir = os.environ.get("ACTMEM_BUILD_DIR")
    if build_dir:
        build = pathlib.Path(build_dir)
        if not build.is_absolute():
            build = ROOT / build
        cache = build / "CMakeCache.txt"
        if not cache.exists():
            sys.exit(f"actmem: ACTMEM_BUILD_DIR={build_dir}: not a configured build of actmem")
        # The extension there was built for one interpreter (and its torch): this one only.
        configured = next((line.split("=", 1)[1] for line in cache.read_text().splitlines()
                           if line.startswith("ACTMEM_PYTHON_INTERPRETER:")), None)
        if configured is None:
            sys.exit(f"actmem: ACTMEM_BUILD_DIR={build_dir} builds no Python package "
                     "(Python's headers were missing, or a sanitizer preset)")
        if _environment_of(configured) != _environment_of(sys.executable):
            sys.exit(f"actmem: ACTMEM_BUILD_DIR={build_dir} was configured for {configured}, not "
                     f"{sys.executable}: its extension would not load here")
    else:
        build = build_temp / "actmem-cmake"
        configure = [
            "cmake", "-S", str(ROOT), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
            "-DACTMEM_BUILD_TESTS=OFF", "-DACTMEM_BUILD_BENCH=OFF",
            f"-DTorch_DIR={_torch_cmake_dir()}", f"-DACTMEM_PYTHON={sys.executable}",
        ]
        if shutil.which("ninja"):
            configure += ["-G", "Ninja"]
        subprocess.run(configure, check=True)
    subprocess.run(["cmake", "--build", str(build), "--target", "actmem_python"], check=True)
    return build / "python" / "actmem"


class BuildWithCMake(build_py):
    def run(self):
        super().run()
        build_temp = pathlib.Path(self.get_finalized_command("build").build_temp).resolve()
        staged = _build_extension(build_temp)
        extensions = list(staged.glob("_C*.so"))
        if not extensions:
            sys.exit(f"actmem: the build left no extension in {staged}")
        target = pathlib.Path(self.build_lib) / "actmem"
        target.mkdir(parents=True, exist_ok=True)
        for extension in extensions:
            shutil.copy2(extension, target / extension.name)


class BinaryDistribution(Distribution):
    def has_ext_modules(self):
        return True


setup(
    name="actmem",
    version="0.1.0",
    description="Activation memory for PyTorch training: keep, recompute or offload what "
                "autograd saves, within a memory budget",
    packages=["actmem"],
    python_requires=">=3.8",
    cmdclass={"build_py": BuildWithCMake},
    distclass=BinaryDistribution,
)
