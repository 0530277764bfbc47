"""The daemon's own seccomp filter: system calls a switch never makes fail.

vswitchd maps every guest's memory and parses what guests and their QEMUs
send, so a bug in it must not become the host's problem. systemd's
SystemCallFilter= confines the service, but only when systemd starts it;
this filter is installed by the daemon itself (`security.seccomp`, default
on), so a daemon started by hand, by a test or under another supervisor is
confined too, and under systemd both filters apply.

A deny-list, not an allow-list: CPython, glibc, uvloop and the datapath
between them make a set of system calls that changes with every release,
and a missing entry in an allow-list kills a switch in production. The
calls denied here are the ones no switch needs and that turn a compromised
process into a compromised host: mounting and the new mount API, namespaces,
ptrace and reading other processes' memory, kexec, kernel modules, bpf,
perf events, keyrings, swap, reboot, the clocks, open_by_handle_at,
userfaultfd, accounting, quotas, I/O ports, the kernel log. Each fails with
EPERM, so a library that probes for one of them sees an ordinary refusal.

Besides the list:

* The architecture is checked first: a 64-bit process can still make i386
  system calls (int 0x80) and x32 ones (numbers with bit 30 set), which have
  other numbers and would bypass a list written for x86-64. Both fail with
  EPERM.
* clone(2) with a CLONE_NEW* flag (a new namespace) fails with EPERM, as
  unshare(2) does. clone3(2) passes its flags in memory, where a filter
  cannot look, so it fails with ENOSYS, which makes glibc fall back to
  clone(2) (systemd's RestrictNamespaces= does the same).
* personality(2) may only query the persona or set the default one (a
  persona such as READ_IMPLIES_EXEC would make data executable).

Every allowed system call depends only on its number, so the kernel's
seccomp cache (Linux 5.11+) lets the workers' hot calls (io_uring_enter,
epoll_wait, read, write, sendmsg) through without running the filter.

The filter is written as classic BPF here (no libseccomp) and installed
with seccomp(2) and SECCOMP_FILTER_FLAG_TSYNC, so that it applies to every
thread of the process. Under a supervisor whose own filter denies seccomp(2)
(systemd's @system-service does not include it) it falls back to
prctl(PR_SET_SECCOMP), which filters the calling thread and the threads it
creates afterwards: the daemon installs it before it starts any thread, and
refuses the fallback once other threads exist. PR_SET_NO_NEW_PRIVS is set
first (the kernel requires it of a process without CAP_SYS_ADMIN, and it
keeps a setuid binary from gaining what the daemon lacks).

Only x86-64 has a table here; on other architectures the daemon logs a
warning and runs without the filter rather than with a wrong one.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
import sys
from dataclasses import dataclass

__all__ = [
    "DENIED",
    "SeccompError",
    "build_filter",
    "install",
    "probe",
    "status",
    "unsupported_reason",
]


class SeccompError(OSError):
    """The filter could not be installed; ``str()`` says why."""


# --- what is denied (x86-64 system call numbers, arch/x86/entry/syscalls/syscall_64.tbl) ---

DENIED: dict[str, int] = {
    # file systems and the mount table (the new mount API too: it can mount
    # without mount(2))
    "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161,
    "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
    "fspick": 433, "mount_setattr": 442, "open_tree_attr": 467,
    # namespaces (clone with CLONE_NEW* flags is handled below)
    "unshare": 272, "setns": 308,
    # other processes: tracing, reading and writing their memory, taking their fds
    "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "kcmp": 312,
    "pidfd_getfd": 438, "process_madvise": 440,
    # the kernel itself: replacing it, loading code into it
    "kexec_load": 246, "kexec_file_load": 320, "create_module": 174, "init_module": 175,
    "delete_module": 176, "finit_module": 313, "bpf": 321, "perf_event_open": 298,
    "uselib": 134, "lookup_dcookie": 212, "_sysctl": 156,
    # kernel keyrings
    "add_key": 248, "request_key": 249, "keyctl": 250,
    # the host: swap, reboot, clocks, names, accounting, quotas, the tty
    "swapon": 167, "swapoff": 168, "reboot": 169,
    "settimeofday": 164, "clock_settime": 227, "adjtimex": 159, "clock_adjtime": 305,
    "sethostname": 170, "setdomainname": 171, "acct": 163, "quotactl": 179, "quotactl_fd": 443,
    "vhangup": 153, "syslog": 103,
    # files by handle: opens any file of a mounted file system, past directory permissions
    "open_by_handle_at": 304,
    # page faults handled in user space: the classic way to win a kernel race
    "userfaultfd": 323,
    # raw I/O ports and the LDT: hardware and 16-bit segments, nothing a switch touches
    "iopl": 172, "ioperm": 173, "modify_ldt": 154,
}

NR_CLONE = 56
NR_CLONE3 = 435
NR_PERSONALITY = 135

# linux/sched.h: the flags of clone(2) that create a namespace
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEW_ANY = (CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER
                 | CLONE_NEWPID | CLONE_NEWNET)
PER_LINUX = 0
PERSONALITY_QUERY = 0xFFFFFFFF

# linux/audit.h, asm/unistd.h
AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000

# linux/filter.h: classic BPF
BPF_LD_W_ABS = 0x00 | 0x00 | 0x20     # BPF_LD | BPF_W | BPF_ABS
BPF_JMP_JEQ_K = 0x05 | 0x10 | 0x00    # BPF_JMP | BPF_JEQ | BPF_K
BPF_JMP_JGE_K = 0x05 | 0x30 | 0x00    # BPF_JMP | BPF_JGE | BPF_K
BPF_JMP_JSET_K = 0x05 | 0x40 | 0x00   # BPF_JMP | BPF_JSET | BPF_K
BPF_RET_K = 0x06 | 0x00               # BPF_RET | BPF_K
BPF_MAXINSNS = 4096

# linux/seccomp.h
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_TSYNC = 1
SECCOMP_MODE_FILTER = 2
# struct seccomp_data: int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6]
SECCOMP_DATA_NR = 0
SECCOMP_DATA_ARCH = 4
SECCOMP_DATA_ARG0_LOW = 16            # the low 32 bits of args[0] (little-endian)

# linux/prctl.h, asm/unistd_64.h
PR_SET_SECCOMP = 22
PR_SET_NO_NEW_PRIVS = 38
NR_SECCOMP = 317

RET_ALLOW = SECCOMP_RET_ALLOW
RET_EPERM = SECCOMP_RET_ERRNO | errno.EPERM
RET_ENOSYS = SECCOMP_RET_ERRNO | errno.ENOSYS


@dataclass(frozen=True)
class Insn:
    """One classic BPF instruction (struct sock_filter)."""

    code: int
    jt: int
    jf: int
    k: int

    def pack(self) -> bytes:
        return struct.pack("=HBBI", self.code, self.jt, self.jf, self.k)


class _Assembler:
    """Straight-line BPF with forward jumps to named labels (BPF has no
    backward jumps, and a conditional jump reaches at most 255 ahead)."""

    def __init__(self) -> None:
        self.items: list[tuple] = []

    def load(self, offset: int) -> None:
        self.items.append(("insn", BPF_LD_W_ABS, offset))

    def ret(self, value: int) -> None:
        self.items.append(("insn", BPF_RET_K, value))

    def jump(self, code: int, k: int, true: str | None, false: str | None) -> None:
        """None: the next instruction."""
        self.items.append(("jump", code, k, true, false))

    def label(self, name: str) -> None:
        self.items.append(("label", name))

    def assemble(self) -> list[Insn]:
        where: dict[str, int] = {}
        index = 0
        for item in self.items:
            if item[0] == "label":
                where[item[1]] = index
            else:
                index += 1
        out: list[Insn] = []
        for item in self.items:
            if item[0] == "label":
                continue
            if item[0] == "insn":
                out.append(Insn(item[1], 0, 0, item[2]))
                continue
            _, code, k, true, false = item
            here = len(out)
            offsets = []
            for target in (true, false):
                off = 0 if target is None else where[target] - here - 1
                if not 0 <= off <= 255:
                    raise ValueError(f"BPF jump from {here} to {target!r} is {off} instructions")
                offsets.append(off)
            out.append(Insn(code, offsets[0], offsets[1], k))
        if len(out) > BPF_MAXINSNS:
            raise ValueError(f"BPF program of {len(out)} instructions")
        return out


def build_filter(denied: dict[str, int] | None = None) -> list[Insn]:
    """The filter program for x86-64 (see the module's docstring)."""
    denied = DENIED if denied is None else denied
    a = _Assembler()
    a.load(SECCOMP_DATA_ARCH)
    a.jump(BPF_JMP_JEQ_K, AUDIT_ARCH_X86_64, None, "deny")
    a.load(SECCOMP_DATA_NR)
    a.jump(BPF_JMP_JGE_K, X32_SYSCALL_BIT, "deny", None)
    for nr in sorted(set(denied.values())):
        a.jump(BPF_JMP_JEQ_K, nr, "deny", None)
    a.jump(BPF_JMP_JEQ_K, NR_CLONE, "clone", None)
    a.jump(BPF_JMP_JEQ_K, NR_CLONE3, "enosys", None)
    a.jump(BPF_JMP_JEQ_K, NR_PERSONALITY, "personality", None)
    a.ret(RET_ALLOW)
    a.label("clone")
    a.load(SECCOMP_DATA_ARG0_LOW)
    a.jump(BPF_JMP_JSET_K, CLONE_NEW_ANY, "deny", "allow")
    a.label("personality")
    a.load(SECCOMP_DATA_ARG0_LOW)      # the kernel takes an unsigned int
    a.jump(BPF_JMP_JEQ_K, PERSONALITY_QUERY, "allow", None)
    a.jump(BPF_JMP_JEQ_K, PER_LINUX, "allow", "deny")
    a.label("allow")
    a.ret(RET_ALLOW)
    a.label("enosys")
    a.ret(RET_ENOSYS)
    a.label("deny")
    a.ret(RET_EPERM)
    return a.assemble()


# --- installing -----------------------------------------------------------------

def unsupported_reason() -> str | None:
    """None if this process can use the filter; else why not (the filter's
    numbers are x86-64's: an i386 or x32 Python on the same kernel makes
    other system calls)."""
    if not sys.platform.startswith("linux"):
        return f"seccomp filters are Linux's (this is {sys.platform})"
    machine = platform.machine()
    if machine != "x86_64" or sys.maxsize <= 2**32:
        bits = 64 if sys.maxsize > 2**32 else 32
        return (f"the filter is written for x86-64 system call numbers; this is {machine} "
                f"with a {bits}-bit Python")
    return None


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    libc.prctl.restype = ctypes.c_int
    return libc


def _threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        import threading
        return threading.active_count()


def install(program: list[Insn] | None = None) -> str:
    """Install the filter on this process (every thread) and set
    no_new_privs. Returns how ("seccomp(2) with ...TSYNC", or "prctl(...)" when
    seccomp(2) itself is refused and the process has one thread). Raises
    SeccompError; irreversible once it succeeded."""
    reason = unsupported_reason()
    if reason is not None:
        raise SeccompError(errno.ENOTSUP, reason)
    program = build_filter() if program is None else program
    code = b"".join(insn.pack() for insn in program)
    buf = ctypes.create_string_buffer(code, len(code))
    fprog = _SockFprog(len(program), ctypes.cast(buf, ctypes.c_void_p))
    libc = _libc()
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise SeccompError(err, f"prctl(PR_SET_NO_NEW_PRIVS): {os.strerror(err)}")
    rc = libc.syscall(ctypes.c_long(NR_SECCOMP), ctypes.c_long(SECCOMP_SET_MODE_FILTER),
                      ctypes.c_long(SECCOMP_FILTER_FLAG_TSYNC), ctypes.byref(fprog))
    if rc == 0:
        return "seccomp(2) with SECCOMP_FILTER_FLAG_TSYNC"
    if rc > 0:
        # TSYNC names a thread that cannot take the filter (it has one of its own)
        raise SeccompError(errno.ESRCH, f"seccomp(2): thread {rc} cannot be synchronised")
    err = ctypes.get_errno()
    # ENOSYS/EPERM/EACCES: seccomp(2) is missing or denied by an outer filter
    # (systemd's SystemCallFilter=); EINVAL: a kernel without TSYNC.
    if err not in (errno.ENOSYS, errno.EPERM, errno.EACCES, errno.EINVAL):
        raise SeccompError(err, f"seccomp(2): {os.strerror(err)}")
    threads = _threads()
    if threads != 1:
        raise SeccompError(err, f"seccomp(2): {os.strerror(err)}, and prctl(2) would filter only "
                                f"one of this process's {threads} threads")
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        err2 = ctypes.get_errno()
        raise SeccompError(err2, f"seccomp(2): {os.strerror(err)}; prctl(PR_SET_SECCOMP): "
                                 f"{os.strerror(err2)}")
    return "prctl(PR_SET_SECCOMP)"


# --- observing ------------------------------------------------------------------

def status(pid: int | str = "self") -> dict[str, int]:
    """Seccomp, Seccomp_filters and NoNewPrivs of /proc/PID/status (absent: -1)."""
    out = {"Seccomp": -1, "Seccomp_filters": -1, "NoNewPrivs": -1}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in out:
                    out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


def _errno_name(err: int) -> str:
    return "ok" if err == 0 else errno.errorcode.get(err, str(err))


def probe(scratch_dir: str) -> dict[str, str]:
    """Try denied system calls that cannot do harm even without the filter,
    and say what each returned ("EPERM" under the filter):

    * mount(2) of a file system type that does not exist onto a path in
      `scratch_dir` that does not exist (without the filter: ENOENT);
    * unshare(0), which changes nothing (without the filter: "ok")."""
    libc = _libc()
    target = os.path.join(scratch_dir, f"seccomp-probe-{os.getpid()}-absent")
    if os.path.lexists(target):
        raise FileExistsError(errno.EEXIST, f"{target} exists: not probing mount(2) there")
    results: dict[str, str] = {}
    ctypes.set_errno(0)
    rc = libc.mount(b"none", os.fsencode(target), b"vswitch-no-such-fs", ctypes.c_ulong(0), None)
    results["mount"] = _errno_name(0 if rc == 0 else ctypes.get_errno())
    ctypes.set_errno(0)
    rc = libc.unshare(0)
    results["unshare"] = _errno_name(0 if rc == 0 else ctypes.get_errno())
    return results
