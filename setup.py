"""Build vswitch: the Python package and the Cython datapath extension.

VSWITCH_SKIP_EXT=1 leaves the extension out: the Makefile installs the package
editable that way and builds the extension in place itself, once, when its
sources changed (`make build`), instead of pip building it a second time.
Only the vswitch package is distributed; tests/ (and tests.harness) and bench/
are not.
"""

import os

from setuptools import Extension, find_packages, setup


def extensions() -> list[Extension]:
    if os.environ.get("VSWITCH_SKIP_EXT") == "1":
        return []
    from Cython.Build import cythonize

    return cythonize(
        [
            Extension(
                "vswitch._datapath",
                ["cython_ext/_datapath.pyx"],
                include_dirs=["cython_ext"],
                extra_compile_args=["-O3", "-march=native", "-Wno-unused-function"],
            )
        ],
        compiler_directives={"language_level": "3"},
        annotate=True,
    )


setup(
    name="vswitch",
    version="0.1.0",
    description="Userspace virtio-net switch: vhost-user ports, Cython datapath",
    packages=find_packages(include=["vswitch", "vswitch.*"]),
    python_requires=">=3.11",
    install_requires=["uvloop>=0.19", "PyYAML>=6.0", "prometheus-client>=0.17"],
    ext_modules=extensions(),
    entry_points={
        "console_scripts": [
            "vswitchd = vswitch.daemon:main",
            "vswitchctl = vswitch.cli:main",
        ]
    },
)
