"""Builds tita_ext and its compiled module tita_ext._C against the torch already installed.

    pip install --no-build-isolation -e .      # never lets pip fetch another torch

CUDA sources (csrc/cuda) are compiled in when the installed torch has CUDA and nvcc is found;
TITA_EXT_CUDA=1 forces them in (and fails without a CUDA toolchain), TITA_EXT_CUDA=0 leaves them out.
"""

import glob
import os

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def want_cuda() -> bool:
    forced = os.environ.get("TITA_EXT_CUDA")
    if forced is not None:
        return forced.strip().lower() not in ("0", "false", "no", "")
    return torch.version.cuda is not None and CUDA_HOME is not None


def sources(pattern: str) -> list[str]:
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def extension():
    cxx = ["-O3", "-fopenmp", "-ffp-contract=off", "-Wno-psabi", "-fvisibility=hidden"]
    macros = [("TITA_TORCH_VERSION", f'"{torch.__version__}"')]
    srcs = sources("csrc/registration.cpp") + sources("csrc/cpu/*.cpp")
    if not want_cuda():
        return CppExtension("tita_ext._C", srcs, define_macros=macros,
                            extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"])
    srcs += sources("csrc/cuda/*.cpp") + sources("csrc/cuda/*.cu")
    nvcc = ["-O3", "-lineinfo", "--expt-relaxed-constexpr", "-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE"]
    return CUDAExtension("tita_ext._C", srcs, define_macros=macros + [("TITA_WITH_CUDA", None)],
                         extra_compile_args={"cxx": cxx, "nvcc": nvcc}, extra_link_args=["-fopenmp"])


setup(
    name="tita-ext",
    packages=find_packages(include=["tita_ext", "tita_ext.*"]),
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
