"""Build JR2Net: the Python packages plus one pybind11 extension, ``jr2net._C``, from ``csrc/``.

The CPU kernels are always built; the CUDA kernels are added when the installed torch has CUDA
and nvcc is available. ``build_proto`` (run by ``build_py`` and ``build_ext``) generates the gRPC
modules ``jr2net/protocol/_generated`` from ``proto/jr2net.proto`` (grpcio-tools is a build
requirement only). Install with ``pip install --no-build-isolation -e .``.
"""

from __future__ import annotations

import glob
import os

from setuptools import Command, setup
from setuptools.command.build_py import build_py

ROOT = os.path.dirname(os.path.abspath(__file__))


def _extension():
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, CppExtension, CUDAExtension

    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    cxx_flags = ["-O3", "-std=c++20", "-fopenmp"]
    define_macros: list[tuple[str, str | None]] = []
    with_cuda = os.environ.get("JR2NET_WITH_CUDA")
    use_cuda = (
        with_cuda == "1"
        or (with_cuda is None and torch.version.cuda is not None and CUDA_HOME is not None)
    )
    kwargs = dict(
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_link_args=["-fopenmp"],
    )
    if use_cuda:
        sources += sorted(glob.glob("csrc/cuda/*.cu") + glob.glob("csrc/cuda/*.cpp"))
        define_macros.append(("WITH_CUDA", None))
        nvcc_flags = ["-O3", "-std=c++17", "--use_fast_math", "-lineinfo"]
        return CUDAExtension(
            "jr2net._C",
            sources,
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
            **kwargs,
        )
    return CppExtension(
        "jr2net._C",
        sources,
        define_macros=define_macros,
        extra_compile_args={"cxx": cxx_flags},
        **kwargs,
    )


PROTO = os.path.join(ROOT, "proto", "jr2net.proto")
GENERATED = os.path.join(ROOT, "jr2net", "protocol", "_generated")


def _load_proto_builder():
    """jr2net/protocol/build.py, loaded by path: the package itself need not be importable yet."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "_jr2net_proto_build", os.path.join(ROOT, "jr2net", "protocol", "build.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildProto(Command):
    """Generate jr2net/protocol/_generated from proto/jr2net.proto with grpc_tools.protoc."""

    description = "generate the gRPC Python modules (jr2net/protocol/_generated)"
    user_options = [("force", "f", "regenerate even when up to date")]
    boolean_options = ["force"]

    def initialize_options(self) -> None:
        self.force = False

    def finalize_options(self) -> None:
        pass

    def run(self) -> None:
        if _load_proto_builder().generate(PROTO, GENERATED, force=bool(self.force)):
            print(f"generated {os.path.relpath(GENERATED, ROOT)} from proto/jr2net.proto")


class _BuildPy(build_py):
    """Generate the gRPC modules first, so every install (editable included) ships them."""

    def run(self) -> None:
        self.run_command("build_proto")
        super().run()


def _cmdclass():
    from torch.utils.cpp_extension import BuildExtension

    build_ext = BuildExtension.with_options(use_ninja=True)

    class _BuildExt(build_ext):
        """`make build` runs only build_ext --inplace: generate the gRPC modules there too."""

        def run(self) -> None:
            self.run_command("build_proto")
            super().run()

    return {"build_proto": BuildProto, "build_py": _BuildPy, "build_ext": _BuildExt}


setup(
    name="jr2net",
    version="0.1.0",
    description="JR2Net: 3D-aware face reenactment and reconstruction, served over gRPC",
    python_requires=">=3.10",
    packages=[
        "jr2net",
        "jr2net.ops",
        "jr2net.face",
        "jr2net.models",
        "jr2net.pipeline",
        "jr2net.eval",
        "jr2net.io",
        "jr2net.protocol",
        "jr2net.server",
        "jr2net.clients",
        "jr2net.training",
        "jr2net.training.data",
        "jr2net.training.stages",
        "jr2net.face.fitting",
        "jr2net.face.generic",
    ],
    package_dir={
        "jr2net": "jr2net",
        "jr2net.server": "server",
        "jr2net.clients": "clients",
        "jr2net.training": "training",
    },
    # Written by build_proto before build_py copies package data, so wheels ship it.
    package_data={"jr2net.protocol": ["_generated/*.py"]},
    # `make` installs editable with JR2NET_SKIP_EXT=1, then builds the extension in place
    # incrementally (ninja) with `setup.py build_ext --inplace`, so it is compiled once.
    ext_modules=[] if os.environ.get("JR2NET_SKIP_EXT") == "1" else [_extension()],
    cmdclass=_cmdclass(),
    install_requires=[
        "torch>=2.4",
        "numpy>=1.26",
        "scipy>=1.11",
        "pillow>=10",
        "simplejpeg>=1.7",  # fast JPEG frame decode/encode (jr2net.io.images; Pillow fallback)
        "opencv-python-headless>=4.8",  # background inpainting (geometric path)
        "av>=12",
        "dlib-bin>=19.24",
        "face-recognition-models>=0.3",
        "ai-edge-litert>=1.2",  # MediaPipe face detector + mesh (.tflite)
        "grpcio>=1.60",
        "protobuf>=5.26",  # runtime of the generated jr2net.protocol._generated modules
        "grpcio-health-checking>=1.60",
        "grpcio-reflection>=1.60",
        "prometheus-client>=0.19",
        "pyyaml>=6",
        "tqdm>=4.66",
        "matplotlib>=3.8",
        "onnx>=1.16",  # the learned path exports DCNet to ONNX Runtime (faster on CPU)
        "onnxruntime>=1.18",
    ],
    entry_points={"console_scripts": ["jr2net=jr2net.cli:main"]},
)
