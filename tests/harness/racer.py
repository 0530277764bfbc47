"""The racing writer (racer.c): a hostile guest's second vCPU, in C.

A Python loop rewrites a byte a few million times a second at best and holds
the GIL meanwhile; the switch's worker reads a frame header in nanoseconds.
``racer.c`` rewrites bytes of guest memory as fast as the CPU allows, from a
process of its own, so that a value the switch reads twice can differ
between the reads - as it can when a guest's second vCPU writes it.

    with Racer(mem.regions[0].fd, [flip(off, A, B), rand(off, 4096)]) as r:
        ...                       # drive the switch meanwhile
    r.iterations                  # rounds over the specs it made

``build()`` compiles racer.c with gcc once per version of the source, into a
cache directory ($VSWITCH_TEST_CACHE or /var/tmp/vswitch-test-helpers).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

SOURCE = Path(__file__).with_name("racer.c")


def cache_dir() -> Path:
    env = os.environ.get("VSWITCH_TEST_CACHE")
    return Path(env) if env else Path("/var/tmp/vswitch-test-helpers")


def build() -> Path:
    """Path of the compiled racer, built if this version of racer.c is not cached yet."""
    src = SOURCE.read_bytes()
    digest = hashlib.sha256(src).hexdigest()[:16]
    exe = cache_dir() / f"racer-{digest}"
    if exe.exists():
        return exe
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise RuntimeError("the racing writer needs a C compiler (gcc)")
    exe.parent.mkdir(parents=True, exist_ok=True)
    # compile beside the target and rename: concurrent builds never see half a binary
    fd, tmp = tempfile.mkstemp(dir=exe.parent, prefix=".racer-")
    os.close(fd)
    try:
        subprocess.run([gcc, "-O2", "-Wall", "-o", tmp, str(SOURCE)], check=True,
                       capture_output=True, text=True)
        os.chmod(tmp, 0o755)
        os.replace(tmp, exe)
    except subprocess.CalledProcessError as e:
        raise RuntimeError(f"building the racer failed:\n{e.stderr}") from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return exe


def flip(offset: int, a: bytes, b: bytes, bit: int = 0) -> str:
    """Bytes at `offset` alternate between a and b (b when bit `bit` of the
    iteration count is set); left at a when the racer stops."""
    if len(a) != len(b) or not 1 <= len(a) <= 64:
        raise ValueError("flip values must have the same length, 1..64 bytes")
    return f"flip:{offset}:{bytes(a).hex()}:{bytes(b).hex()}:{bit}"


def rand(offset: int, length: int) -> str:
    """Random aligned 1/2/4/8-byte stores of random values within [offset, offset + length)."""
    return f"rand:{offset}:{length}"


def bits(offset: int, length: int) -> str:
    """A random bit of [offset, offset + length) set for a moment and put back, over and over."""
    return f"bits:{offset}:{length}"


class Racer:
    """racer.c on the memfd `fd` (inherited by the child) with the given specs."""

    def __init__(self, fd: int, specs: Sequence[str], *, limit_s: float = 60.0, seed: int = 1,
                 cpu: int | None = None) -> None:
        self.fd = fd
        self.specs = list(specs)
        self.limit_s = limit_s
        self.seed = seed
        self.cpu = cpu
        self.proc: subprocess.Popen | None = None
        self.iterations = 0

    def start(self) -> Racer:
        argv = [str(build()), "-t", str(int(self.limit_s * 1000)), "-s", str(self.seed),
                f"fd:{self.fd}", *self.specs]
        cpu = self.cpu

        def pin() -> None:
            if cpu is not None:
                os.sched_setaffinity(0, {cpu})
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     pass_fds=[self.fd], preexec_fn=pin if cpu is not None else None)
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            err = self.proc.stderr.read()
            self.proc.wait()
            raise RuntimeError(f"racer did not start: {line!r} {err}")
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int:
        """Stop it (SIGTERM; it leaves every flip at its first value); return its iterations."""
        if self.proc is None:
            return self.iterations
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, err = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        rc = self.proc.returncode
        self.proc = None
        for line in out.splitlines():
            if line.startswith("iterations "):
                self.iterations = int(line.split()[1])
        if rc != 0:
            raise RuntimeError(f"racer exited with {rc}: {err}")
        return self.iterations

    def __enter__(self) -> Racer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
