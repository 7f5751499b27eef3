"""Build script: the pure-Python package, Triton kernels, CUDA sources and the C++ extension _C.

`kernels/` is installed as `genai_fast.kernels` (the top-level name `kernels` belongs to another PyPI
package), `bench/` as `genai_fast.bench` (the `genai-fast bench` command imports it) and
`csrc/cuda/*.cu` as package data under `genai_fast._cuda_src` (compiled at run time by NVRTC).

Flags are portable by default (the hot loops pick AVX2/AVX-512 at run time through target_clones);
set GENAI_FAST_NATIVE=1 to add -march=native for a build that only runs on this CPU.
"""

import os
import subprocess
import tempfile
from pathlib import Path

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import find_packages, setup

HERE = Path(__file__).parent
CPU_SOURCES = sorted(str(p.relative_to(HERE)) for p in (HERE / "csrc" / "cpu").glob("*.cpp"))

# Compile the C++ sources in parallel (GENAI_FAST_BUILD_JOBS, default: all cores).
ParallelCompile("GENAI_FAST_BUILD_JOBS").install()

compile_args = ["-O3", "-fno-math-errno"]
link_args = ["-pthread"]
if os.environ.get("GENAI_FAST_NATIVE") == "1":
    compile_args.append("-march=native")


def _compiler_has_openmp() -> bool:
    """Whether the C++ compiler builds and links an OpenMP program (it needs libgomp's development files)."""
    program = "#include <omp.h>\nint main() { return omp_in_parallel(); }\n"
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "check.cpp"
        source.write_text(program)
        compiler = os.environ.get("CXX", "c++")
        try:
            done = subprocess.run([compiler, "-fopenmp", str(source), "-o", str(Path(tmp) / "check")],
                                  capture_output=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return done.returncode == 0


# The kernels' threads come from OpenMP, so that they are torch's own worker threads (libgomp.so.1, shared
# with the torch wheel's at run time); GENAI_FAST_OPENMP=0, or a compiler without OpenMP, builds the
# fallback std::thread pool instead.
if os.environ.get("GENAI_FAST_OPENMP", "1") != "0" and _compiler_has_openmp():
    compile_args.append("-fopenmp")
    link_args.append("-fopenmp")

ext_modules = [
    Pybind11Extension(
        "genai_fast._C",
        CPU_SOURCES,
        cxx_std=17,
        extra_compile_args=compile_args,
        extra_link_args=link_args,
    )
]

# Every package under genai_fast/, plus the folders installed under it by package_dir below.
PACKAGES = [*find_packages(include=["genai_fast", "genai_fast.*"]), "genai_fast.kernels", "genai_fast.bench",
            "genai_fast._cuda_src"]

setup(
    name="genai_fast",
    version="0.1.0",
    description="Fast, reference-checked kernels for generative AI (attention, U-Net ops, word2vec)",
    long_description=(HERE / "README.md").read_text(encoding="utf-8") if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=PACKAGES,
    package_dir={
        "genai_fast.kernels": "kernels",
        "genai_fast.bench": "bench",
        "genai_fast._cuda_src": "csrc/cuda",
    },
    package_data={"genai_fast._cuda_src": ["*.cu", "*.cuh"]},
    ext_modules=ext_modules,
    cmdclass={"build_ext": build_ext},
    install_requires=["torch>=2.4", "numpy", "tqdm", "safetensors"],
    extras_require={
        "triton": ["triton>=3.0"],
        "cuda12": ["cupy-cuda12x"],
        "cuda13": ["cupy-cuda13x"],
        "bench": ["matplotlib"],
        "test": ["pytest", "ruff", "pybind11>=2.12", "setuptools>=68", "wheel", "matplotlib", "triton>=3.0",
                 "diffusers", "transformers", "peft", "gensim==4.4.0", "scipy", "scikit-learn"],
    },
    entry_points={"console_scripts": ["genai-fast=genai_fast.cli:main"]},
    zip_safe=False,
)
