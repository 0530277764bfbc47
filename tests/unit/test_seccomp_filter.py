"""The daemon's seccomp filter (vswitch/seccomp.py): the program, then the kernel.

The program is run here by a small classic-BPF interpreter on every input
that matters (each denied call, calls the daemon makes, other architectures,
x32 numbers, clone flags, personality values); then the kernel checks and
runs it, in child processes (a filter cannot be removed once installed).
"""

from __future__ import annotations

import errno
import re
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vswitch import seccomp as sc

ROOT = Path(__file__).resolve().parents[2]
UNISTD_64 = Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")
AUDIT_ARCH_I386 = 0x40000003
AUDIT_ARCH_AARCH64 = 0xC00000B7

# What the daemon, CPython, glibc, uvloop and the datapath call: never denied.
ALLOWED = {
    "read": 0, "write": 1, "openat": 257, "close": 3, "mmap": 9, "munmap": 11, "mprotect": 10,
    "ioctl": 16, "writev": 20, "madvise": 28, "socket": 41, "connect": 42, "accept4": 288,
    "sendmsg": 46, "recvmsg": 47, "bind": 49, "listen": 50, "setsockopt": 54, "fcntl": 72,
    "fchmod": 91, "chmod": 90, "fchown": 93, "chown": 92, "getpid": 39, "gettid": 186,
    "futex": 202, "sched_setaffinity": 203, "epoll_wait": 232, "epoll_ctl": 233,
    "epoll_create1": 291, "eventfd2": 290, "prlimit64": 302, "getrandom": 318,
    "memfd_create": 319, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
    "rt_sigaction": 13, "sigaltstack": 131, "prctl": 157, "seccomp": 317, "exit_group": 231,
    "wait4": 61, "kill": 62, "execve": 59, "vfork": 58, "clock_gettime": 228, "close_range": 436,
    "setrlimit": 160, "pidfd_open": 434, "rseq": 334, "set_robust_list": 273,
}


# --- a classic BPF interpreter (the subset seccomp programs use) ---------------------

def seccomp_data(nr: int, arch: int = sc.AUDIT_ARCH_X86_64, args: tuple[int, ...] = ()) -> bytes:
    args = tuple(args) + (0,) * (6 - len(args))
    return struct.pack("<IIQ6Q", nr & 0xFFFFFFFF, arch, 0x401000, *args)   # int nr: its bits


def run(program: list[sc.Insn], data: bytes) -> int:
    pc, acc = 0, 0
    for _ in range(len(program) + 1):
        insn = program[pc]
        if insn.code == sc.BPF_LD_W_ABS:
            acc = struct.unpack_from("<I", data, insn.k)[0]
            pc += 1
        elif insn.code == sc.BPF_RET_K:
            return insn.k
        elif insn.code in (sc.BPF_JMP_JEQ_K, sc.BPF_JMP_JGE_K, sc.BPF_JMP_JSET_K):
            taken = {sc.BPF_JMP_JEQ_K: acc == insn.k, sc.BPF_JMP_JGE_K: acc >= insn.k,
                     sc.BPF_JMP_JSET_K: bool(acc & insn.k)}[insn.code]
            pc += 1 + (insn.jt if taken else insn.jf)
        else:
            raise AssertionError(f"opcode {insn.code:#x} at {pc}")
    raise AssertionError("no return")


PROGRAM = sc.build_filter()


def verdict(nr: int, arch: int = sc.AUDIT_ARCH_X86_64, args: tuple[int, ...] = ()) -> int:
    return run(PROGRAM, seccomp_data(nr, arch, args))


# --- the program -----------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(sc.DENIED))
def test_every_denied_call_fails_with_eperm(name: str) -> None:
    assert verdict(sc.DENIED[name]) == sc.SECCOMP_RET_ERRNO | errno.EPERM


@pytest.mark.parametrize("name", sorted(ALLOWED))
def test_the_calls_a_switch_makes_are_allowed(name: str) -> None:
    assert verdict(ALLOWED[name], args=(0xFFFFFFFF, 1, 2)) == sc.SECCOMP_RET_ALLOW


def test_the_brief_list_is_denied() -> None:
    # the calls that make a compromised daemon a compromised host
    for name in ("mount", "umount2", "pivot_root", "chroot", "ptrace", "process_vm_readv",
                 "process_vm_writev", "kexec_load", "kexec_file_load", "init_module",
                 "finit_module", "delete_module", "bpf", "perf_event_open", "keyctl", "add_key",
                 "request_key", "swapon", "swapoff", "reboot", "settimeofday", "clock_settime",
                 "adjtimex", "open_by_handle_at", "userfaultfd", "unshare", "setns", "acct",
                 "quotactl", "lookup_dcookie", "iopl", "ioperm", "syslog", "vhangup",
                 "fsopen", "fsmount", "move_mount", "open_tree"):
        assert name in sc.DENIED, name
    assert not set(sc.DENIED) & set(ALLOWED)


@pytest.mark.parametrize("arch", [AUDIT_ARCH_I386, AUDIT_ARCH_AARCH64, 0])
def test_other_architectures_are_refused_whatever_the_number(arch: int) -> None:
    # int 0x80 from a 64-bit process: i386 numbers (i386's 39 is mkdir, 26 ptrace)
    for nr in (0, 1, 26, 39, 165, 435):
        assert verdict(nr, arch) == sc.SECCOMP_RET_ERRNO | errno.EPERM


def test_x32_numbers_are_refused() -> None:
    for nr in (0, 1, 39, 165, 512, 547):
        assert verdict(sc.X32_SYSCALL_BIT | nr) == sc.SECCOMP_RET_ERRNO | errno.EPERM
    assert verdict(0xFFFFFFFF) == sc.SECCOMP_RET_ERRNO | errno.EPERM


def test_clone_may_make_threads_and_processes_but_no_namespace() -> None:
    thread = 0x3D0F00        # glibc's pthread_create: VM|FS|FILES|SIGHAND|THREAD|SYSVSEM|SETTLS|...
    assert verdict(sc.NR_CLONE, args=(thread,)) == sc.SECCOMP_RET_ALLOW
    assert verdict(sc.NR_CLONE, args=(0x01200011,)) == sc.SECCOMP_RET_ALLOW   # fork()
    for flag in (sc.CLONE_NEWNS, sc.CLONE_NEWCGROUP, sc.CLONE_NEWUTS, sc.CLONE_NEWIPC,
                 sc.CLONE_NEWUSER, sc.CLONE_NEWPID, sc.CLONE_NEWNET):
        assert verdict(sc.NR_CLONE, args=(thread | flag,)) == sc.SECCOMP_RET_ERRNO | errno.EPERM
    # clone3's flags are in memory the filter cannot read: ENOSYS makes glibc use clone
    assert verdict(sc.NR_CLONE3) == sc.SECCOMP_RET_ERRNO | errno.ENOSYS


def test_personality_may_only_be_read_or_set_to_linux() -> None:
    assert verdict(sc.NR_PERSONALITY, args=(0xFFFFFFFF,)) == sc.SECCOMP_RET_ALLOW
    assert verdict(sc.NR_PERSONALITY, args=(0,)) == sc.SECCOMP_RET_ALLOW
    # the kernel takes an unsigned int: the upper half of the register means nothing
    assert verdict(sc.NR_PERSONALITY, args=(0x7_FFFFFFFF,)) == sc.SECCOMP_RET_ALLOW
    for persona in (0x0400000, 0x0040000, 0x0008, 0x0200000):  # READ_IMPLIES_EXEC, ADDR_NO_RANDOMIZE, ...
        assert verdict(sc.NR_PERSONALITY, args=(persona,)) == sc.SECCOMP_RET_ERRNO | errno.EPERM


def test_allowed_calls_depend_on_their_number_only() -> None:
    """So the kernel's seccomp cache passes them without running the filter:
    only clone and personality load an argument."""
    loads = [insn.k for insn in PROGRAM if insn.code == sc.BPF_LD_W_ABS]
    assert loads.count(sc.SECCOMP_DATA_ARG0_LOW) == 2
    assert set(loads) == {sc.SECCOMP_DATA_ARCH, sc.SECCOMP_DATA_NR, sc.SECCOMP_DATA_ARG0_LOW}


@pytest.mark.skipif(not UNISTD_64.exists(), reason="needs the kernel headers (linux-libc-dev)")
def test_numbers_are_the_kernel_headers_ones() -> None:
    text = UNISTD_64.read_text()
    known = {m.group(1): int(m.group(2)) for m in re.finditer(r"#define __NR_(\w+) (\d+)", text)}
    table = {**sc.DENIED, **ALLOWED, "clone": sc.NR_CLONE, "clone3": sc.NR_CLONE3,
             "personality": sc.NR_PERSONALITY, "seccomp": sc.NR_SECCOMP}
    checked = 0
    for name, nr in table.items():
        if name in known:       # headers older than the kernel lack the newest calls
            assert known[name] == nr, name
            checked += 1
    assert checked >= len(table) - 2


def test_jumps_stay_in_reach_and_the_program_is_small() -> None:
    assert len(PROGRAM) < 100
    for i, insn in enumerate(PROGRAM):
        if insn.code in (sc.BPF_JMP_JEQ_K, sc.BPF_JMP_JGE_K, sc.BPF_JMP_JSET_K):
            assert i + 1 + max(insn.jt, insn.jf) < len(PROGRAM)
    assert PROGRAM[-1].code == sc.BPF_RET_K


def test_other_machines_get_no_filter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sc.platform, "machine", lambda: "aarch64")
    assert "x86-64" in sc.unsupported_reason()
    with pytest.raises(sc.SeccompError) as info:
        sc.install()
    assert info.value.errno == errno.ENOTSUP


def test_the_daemon_runs_unfiltered_with_a_warning_on_other_machines(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from vswitch import daemon
    from vswitch.config import parse_config
    monkeypatch.setattr(sc.platform, "machine", lambda: "riscv64")
    monkeypatch.setattr(sc, "install", lambda *a: pytest.fail("installed a filter on riscv64"))
    config = parse_config("ports: {}\n", check_host=False)
    with caplog.at_level("WARNING"):
        state = daemon.confine(config)
    assert state.startswith("unsupported: ") and "riscv64" in state
    assert "seccomp: no filter: the filter is written for x86-64" in caplog.text


# --- the kernel ---------------------------------------------------------------------------

def in_child(code: str) -> str:
    """Run code in a fresh interpreter (the filter stays with the process)."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_the_kernel_takes_the_filter_for_every_thread() -> None:
    out = in_child("""
        import ctypes, errno, os, subprocess, threading, time
        from vswitch import seccomp as sc
        stop = threading.Event()
        early = threading.Thread(target=stop.wait)      # a thread from before the filter
        early.start()
        print("before", sc.probe("/tmp"))
        print("how", sc.install())
        late = threading.Thread(target=stop.wait)       # and one from after (clone3 -> clone)
        late.start()
        for tid in sorted(os.listdir("/proc/self/task")):
            st = sc.status(f"self/task/{tid}")
            print("thread", st["Seccomp"], st["NoNewPrivs"])
        stop.set()
        print("after", sc.probe("/tmp"))
        libc = sc._libc()
        ctypes.set_errno(0)
        print("x32", libc.syscall(ctypes.c_long(sc.X32_SYSCALL_BIT | 39)), errno.errorcode[ctypes.get_errno()])
        print("getpid", libc.syscall(ctypes.c_long(39)) == os.getpid())
        print("child", subprocess.run(["true"]).returncode)
        # children inherit it: unshare(1) cannot make a user namespace
        p = subprocess.run(["unshare", "--user", "true"], capture_output=True, text=True)
        print("unshare", p.returncode, "Operation not permitted" in p.stderr)
    """)
    lines = out.splitlines()
    assert "before {'mount': 'ENOENT', 'unshare': 'ok'}" in lines      # harmless without a filter
    assert "how seccomp(2) with SECCOMP_FILTER_FLAG_TSYNC" in lines
    threads = [line for line in lines if line.startswith("thread ")]
    assert threads == ["thread 2 1"] * 3, out
    assert "after {'mount': 'EPERM', 'unshare': 'EPERM'}" in lines
    assert "x32 -1 EPERM" in lines
    assert "getpid True" in lines and "child 0" in lines and "unshare 1 True" in lines


def test_prctl_when_seccomp_itself_is_denied_and_only_before_threads() -> None:
    """Under systemd's SystemCallFilter=@system-service, seccomp(2) fails
    with EPERM: prctl(PR_SET_SECCOMP) installs the filter, but only in a
    process with one thread (it filters the calling thread alone)."""
    out = in_child("""
        import threading
        from vswitch import seccomp as sc
        outer = sc.build_filter({"seccomp": sc.NR_SECCOMP})   # stands in for systemd's filter
        sc.install(outer)
        print("single", sc.install(), sc.status()["Seccomp_filters"], sc.probe("/tmp")["mount"])
        stop = threading.Event()
        t = threading.Thread(target=stop.wait)
        t.start()
        try:
            sc.install()
        except sc.SeccompError as e:
            print("threads", e)
        stop.set()
    """)
    assert "single prctl(PR_SET_SECCOMP) 2 EPERM" in out.splitlines(), out   # two filters
    assert "prctl(2) would filter only one of this process's 2 threads" in out, out


def test_the_daemon_refuses_to_run_unconfined(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    """security.seccomp asked for a filter the kernel refuses: no daemon at all."""
    from vswitch import daemon

    def refused(*args):
        raise sc.SeccompError(errno.EINVAL, "seccomp(2): Invalid argument")
    monkeypatch.setattr(sc, "install", refused)
    config = tmp_path / "vswitch.yaml"
    config.write_text(f"runtime_dir: {tmp_path}/run\nmetrics: {{enabled: false}}\nports: {{}}\n")
    assert daemon.main(["--config", str(config)]) == 1
    assert ("vswitchd: security.seccomp: cannot install the seccomp filter: seccomp(2): Invalid "
            "argument; refusing to run unconfined (set security.seccomp: false to run without it)"
            ) in capsys.readouterr().err
