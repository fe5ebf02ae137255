#!/usr/bin/env python
"""Build and install the `sarl` package (projects/SARL/sarl) and its extension `sarl._C`.

CPU kernels are always built. CUDA kernels are built when a GPU is visible or when
``FORCE_CUDA=1`` (for example on a build machine without a GPU); ``TORCH_CUDA_ARCH_LIST``
selects the architectures, as for any torch extension.

Build against the installed torch: ``pip install --no-build-isolation -e .``
"""
import glob
import os

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _use_cuda() -> bool:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME

    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True
    return torch.cuda.is_available() and CUDA_HOME is not None


def get_extensions():
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    csrc = os.path.join(ROOT, "csrc")
    sources = sorted(glob.glob(os.path.join(csrc, "**", "*.cpp"), recursive=True))
    cuda_sources = sorted(glob.glob(os.path.join(csrc, "**", "*.cu"), recursive=True))
    # Relative paths keep the build reproducible and the object names short.
    sources = [os.path.relpath(s, ROOT) for s in sources]
    cuda_sources = [os.path.relpath(s, ROOT) for s in cuda_sources]

    # at::parallel_for only runs in parallel when the extension itself is built with OpenMP.
    extra_compile_args = {"cxx": ["-O3", "-std=c++20", "-fopenmp"]}
    extra_link_args = ["-fopenmp"]
    define_macros = []
    extension = CppExtension
    if _use_cuda():
        extension = CUDAExtension
        sources += cuda_sources
        define_macros.append(("WITH_CUDA", None))
        extra_compile_args["nvcc"] = [
            "-O3",
            "-std=c++20",
            "--expt-relaxed-constexpr",
            "-lineinfo",
        ]
    return [
        extension(
            "sarl._C",
            sources,
            include_dirs=[csrc],
            define_macros=define_macros,
            extra_compile_args=extra_compile_args,
            extra_link_args=extra_link_args,
        )
    ]


def _cmdclass():
    from torch.utils.cpp_extension import BuildExtension

    return {"build_ext": BuildExtension.with_options(use_ninja=True)}


setup(
    name="sarl",
    version="0.1.0",
    description="Scale-Aware Relay Layer and Scale-Adaptive Loss for tiny object detection "
    "in aerial images (Detectron2 project, YOLOX and YOLOv5 detectors, fused C++/CUDA ops)",
    license="Apache-2.0",
    python_requires=">=3.10",
    package_dir={"sarl": "projects/SARL/sarl"},
    packages=["sarl"] + ["sarl." + p for p in find_packages("projects/SARL/sarl")],
    ext_modules=get_extensions(),
    cmdclass=_cmdclass(),
    install_requires=["torch", "numpy", "fvcore", "iopath", "pycocotools", "faster-coco-eval"],
    zip_safe=False,
)
