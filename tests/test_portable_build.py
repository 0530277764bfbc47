"""The portable build: the datapath compiled for x86-64-v2 (setup.py's default)
runs on the oldest CPU of that level, and a build for a newer CPU refuses to
import on one that lacks what it was compiled for.

The old CPU is QEMU's user-mode emulator with `-cpu Nehalem` (x86-64-v2,
2008: no AVX, no BMI): any instruction of a later extension raises SIGILL
there, so an extension that slipped into the build (a -march=native left
over, an intrinsic) fails these tests instead of a customer's older server.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import vswitch._datapath as dp
from tests.harness.switch import Vswitchd
from tests.harness.traffic import connect, frame

ROOT = Path(__file__).resolve().parent.parent
QEMU_USER = shutil.which("qemu-x86_64")
NEHALEM = [QEMU_USER or "qemu-x86_64", "-cpu", "Nehalem"]
# The unit tests that run the extension in-process: split and packed ring
# walking (descriptor chains, wrap counters, indirect tables, dirty log),
# the FDB (learning, lookup, aging, caps), the checksum and TSO code.
UNIT_SUBSET = ["tests/unit/test_packed_ring.py", "tests/unit/test_fdb.py", "tests/unit/test_offload.py"]
X86_64_V2 = {"sse3", "ssse3", "sse4.1", "sse4.2", "popcnt"}

needs_qemu_user = pytest.mark.skipif(QEMU_USER is None, reason="qemu-x86_64 (Debian qemu-user) not installed")
baseline_only = pytest.mark.skipif(
    dp.BUILD_TARGET != "x86-64-v2",
    reason=f"the module was built for {dp.BUILD_TARGET} (VSWITCH_MARCH), not the x86-64-v2 baseline")


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def test_the_module_says_what_it_was_built_for() -> None:
    assert isinstance(dp.BUILD_TARGET, str) and dp.BUILD_TARGET
    assert isinstance(dp.BUILD_FEATURES, tuple)
    assert all(isinstance(f, str) and f for f in dp.BUILD_FEATURES)
    if dp.BUILD_TARGET == "x86-64-v2":
        assert set(dp.BUILD_FEATURES) == X86_64_V2


@baseline_only
def test_the_recorded_compiler_flags_say_x86_64_v2() -> None:
    out = subprocess.run(["readelf", "-p", ".GCC.command.line", dp.__file__],
                         capture_output=True, text=True, check=True).stdout
    assert "-march=x86-64-v2" in out, out
    assert "-march=native" not in out and "-mavx" not in out, out


def test_a_missing_feature_refuses_the_import_and_names_it() -> None:
    """On a CPU without what the build assumed, the import fails with the
    names of what is missing (the hook pretends the CPU lacks them)."""
    assert dp.BUILD_FEATURES, "a build for x86-64 with no extension at all is not what setup.py makes"
    absent = [dp.BUILD_FEATURES[-1], dp.BUILD_FEATURES[0]]
    r = subprocess.run([sys.executable, "-c", "import vswitch._datapath"], capture_output=True, text=True,
                       env=_env(VSWITCH_TEST_CPU_ABSENT=",".join(absent)), timeout=60)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: ") and f"-march={dp.BUILD_TARGET}" in last, r.stderr
    assert all(f in last.split("lacks ", 1)[1] for f in absent), last
    # and a CPU with all of them imports it
    r = subprocess.run([sys.executable, "-c", "import vswitch._datapath"], capture_output=True, text=True,
                       env=_env(VSWITCH_TEST_CPU_ABSENT=""), timeout=60)
    assert r.returncode == 0, r.stderr


@needs_qemu_user
def test_the_emulated_nehalem_refuses_newer_instructions(tmp_path: Path) -> None:
    """The premise of the Nehalem tests: the emulator raises SIGILL on an AVX2
    instruction instead of running it."""
    src = tmp_path / "avx2.c"
    src.write_text('int main(void) { __asm__ volatile("vpaddd %ymm0, %ymm1, %ymm2"); return 0; }\n')
    subprocess.run(["gcc", "-O1", "-o", str(tmp_path / "avx2"), str(src)], check=True)
    r = subprocess.run([*NEHALEM, str(tmp_path / "avx2")], capture_output=True, timeout=60)
    assert r.returncode != 0, "qemu -cpu Nehalem ran an AVX2 instruction"


@needs_qemu_user
def test_a_native_build_check_refuses_on_nehalem(tmp_path: Path) -> None:
    """The check a VSWITCH_MARCH=native build runs at import (vs_cpucheck.h),
    compiled for this machine, names on Nehalem what the machine has beyond
    x86-64-v2; on the machine itself it finds nothing missing."""
    src = tmp_path / "check.c"
    src.write_text('#include <stdio.h>\n#include "vs_cpucheck.h"\n'
                   'int main(void) { char out[512]; int n = vs_cpu_missing(NULL, out, sizeof out);\n'
                   '  for (size_t i = 0; vs_build_feature(i); i++) printf("%s ", vs_build_feature(i));\n'
                   '  printf("\\n%d %s\\n", n, out); return 0; }\n')
    exe = tmp_path / "check"
    subprocess.run(["gcc", "-O2", "-march=native", f"-I{ROOT / 'cython_ext'}", "-o", str(exe), str(src)], check=True)
    native = subprocess.run([str(exe)], capture_output=True, text=True, check=True, timeout=60).stdout.splitlines()
    built_for = set(native[0].split())
    assert native[1] == "0 ", native
    beyond = built_for - X86_64_V2
    if not beyond:
        pytest.skip("this machine's CPU has nothing beyond x86-64-v2 that the check names")
    emulated = subprocess.run([*NEHALEM, str(exe)], capture_output=True, text=True, timeout=60)
    # the check itself must run on Nehalem (it is compiled for the baseline)
    assert emulated.returncode == 0, emulated
    count, *missing = emulated.stdout.splitlines()[1].split()
    assert set(missing) == beyond and int(count) == len(beyond), (emulated.stdout, beyond)


@needs_qemu_user
@baseline_only
def test_the_datapath_unit_tests_pass_on_nehalem() -> None:
    r = subprocess.run([*NEHALEM, sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *UNIT_SUBSET],
                       cwd=ROOT, capture_output=True, text=True, env=_env(), timeout=600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert " passed" in r.stdout.splitlines()[-1], r.stdout[-2000:]


@needs_qemu_user
@baseline_only
def test_frames_cross_a_switch_running_on_nehalem(tmp_path: Path) -> None:
    """vswitchd itself under the emulated Nehalem: a worker receives, learns,
    looks up and delivers frames of every size class through split rings."""
    ports = {name: {"type": "vhost-user", "queues": 1} for name in ("a", "b")}
    # qemu-user implements no seccomp(2), and the filter is the daemon's, not the datapath's
    sw = Vswitchd(tmp_path, ports, workers=1, wrapper=[*NEHALEM, sys.executable],
                  extra={"security": {"seccomp": False}})
    sw.start(timeout=180)   # the emulator is some ten times slower than the CPU
    try:
        a = connect(sw, "a", 1, wait=True)
        b = connect(sw, "b", 1, wait=True)
        for src, dst, sink in (("a", "b", b), ("b", "a", a)):   # both MACs learned
            (a if src == "a" else b).tx(0).post_tx(frame(dst, src, 0, 64))
            assert len(sink.rx(0).recv_frames(1, timeout=60)) == 1
            sink.rx(0).post_rx(1, 2048)
        sent = [frame("b", "a", i, size) for i, size in enumerate([60, 64, 128, 512, 1514] * 4)]
        for f in sent:
            a.tx(0).post_tx(f)
        got = b.rx(0).recv_frames(len(sent), timeout=120)
        assert [g.frame for g in got] == sent
        assert sw.drops("a") == {} and sw.drops("b") == {}
    finally:
        sw.stop()
