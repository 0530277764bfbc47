"""Build vswitch: the Python package and the Cython datapath extension."""

from Cython.Build import cythonize
from setuptools import Extension, find_packages, setup

extensions = [
    Extension(
        "vswitch._datapath",
        ["cython_ext/_datapath.pyx"],
        include_dirs=["cython_ext"],
        extra_compile_args=["-O3", "-march=native", "-Wno-unused-function"],
    )
]

setup(
    name="vswitch",
    version="0.1.0",
    description="Userspace virtio-net switch: vhost-user ports, Cython datapath",
    packages=find_packages(include=["vswitch", "vswitch.*"]),
    python_requires=">=3.11",
    install_requires=["uvloop>=0.19", "PyYAML>=6.0", "prometheus-client>=0.17"],
    ext_modules=cythonize(
        extensions,
        compiler_directives={"language_level": "3"},
        annotate=True,
    ),
    entry_points={
        "console_scripts": [
            "vswitchd = vswitch.daemon:main",
            "vswitchctl = vswitch.cli:main",
        ]
    },
)
