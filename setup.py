"""Build vswitch: the Python package and the Cython datapath extension.

VSWITCH_SKIP_EXT=1 leaves the extension out: the Makefile installs the package
editable that way and builds the extension in place itself, once, when its
sources changed (`make build`), instead of pip building it a second time.
Only the vswitch package is distributed; tests/ (and tests.harness) and bench/
are not.

VSWITCH_MARCH picks the CPU the extension is compiled for: x86-64-v2 by
default, the baseline distributions build DPDK for (any x86-64 CPU since
2009), or `native` for the build machine's CPU (AVX2, AVX-512... whatever it
has). The module records the target and the instruction-set extensions the
compiler assumed (vswitch._datapath.BUILD_TARGET, BUILD_FEATURES) and refuses
to import on a CPU lacking one of them (cython_ext/vs_cpucheck.h). The
compiler flags are recorded in the module too (-frecord-gcc-switches:
`readelf -p .GCC.command.line`).
"""

import os
import re

from setuptools import Extension, find_packages, setup


DEFAULT_MARCH = "x86-64-v2"


def march() -> str:
    """The -march to compile for (VSWITCH_MARCH), checked to be one word."""
    value = os.environ.get("VSWITCH_MARCH", "").strip() or DEFAULT_MARCH
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
        raise SystemExit(f"VSWITCH_MARCH={value!r}: not a -march value (e.g. x86-64-v2, x86-64-v3, native)")
    return value


def extensions() -> list[Extension]:
    if os.environ.get("VSWITCH_SKIP_EXT") == "1":
        return []
    from Cython.Build import cythonize

    target = march()

    return cythonize(
        [
            Extension(
                "vswitch._datapath",
                ["cython_ext/_datapath.pyx"],
                include_dirs=["cython_ext"],
                define_macros=[("VS_BUILD_TARGET", f'"{target}"')],
                extra_compile_args=["-O3", f"-march={target}", "-frecord-gcc-switches", "-Wno-unused-function"],
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
