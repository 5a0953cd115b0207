"""Builds cnnjax's one compiled part, the oneDNN convolution handler for XLA:CPU
(cnnjax/lowering/csrc/onednn_conv.cc, see cnnjax/lowering/onednn.py), against the XLA FFI headers of jaxlib and the
oneDNN of the onednn-devel-cpu-gomp wheel (build
requirements in pyproject.toml). Optional: where it cannot be built, cnnjax installs without it and conv2d uses
XLA's own convolutions."""

import importlib.metadata
import platform
import sys

from setuptools import Extension, setup


def wheel_data_dir(distribution: str, member: str) -> str:
    """The directory a wheel installed ``member`` (a path ending its data files, e.g. 'oneapi/dnnl/dnnl.hpp') under."""
    dist = importlib.metadata.distribution(distribution)
    path = next(f for f in dist.files if str(f).replace("\\", "/").endswith(member))
    return str(dist.locate_file(path))[: -len(member)]


def onednn_extension() -> list[Extension]:
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        return []  # oneDNN's wheels are for Linux x86_64
    try:  # the build requirements; without them (a build without isolation, say) cnnjax installs without it
        import jax.ffi

        include_dirs = [jax.ffi.include_dir(), wheel_data_dir("onednn-devel-cpu-gomp", "oneapi/dnnl/dnnl.hpp")]
        library_dirs = [wheel_data_dir("onednn-cpu-gomp", "libdnnl.so.3")]
    except (ImportError, importlib.metadata.PackageNotFoundError, StopIteration) as error:
        print(f"cnnjax: not building the oneDNN convolution handler: {error!r}", file=sys.stderr)
        return []
    return [
        Extension(
            "cnnjax.lowering._onednn_conv",
            sources=["cnnjax/lowering/csrc/onednn_conv.cc"],
            include_dirs=include_dirs,
            library_dirs=library_dirs,
            libraries=[
                ":libdnnl.so.3"
            ],  # loaded at run time from the onednn-cpu-gomp wheel (cnnjax/lowering/onednn.py)
            extra_compile_args=["-std=c++20", "-O2", "-fopenmp", "-Wno-return-type"],
            extra_link_args=["-fopenmp"],
            language="c++",
            optional=True,
        )
    ]


setup(ext_modules=onednn_extension())
