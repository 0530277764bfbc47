"""Who the daemon runs as: user, group and effective capabilities, in words.

vswitchd runs as root under a reduced capability set (the systemd unit), or
as an unprivileged user with CAP_NET_ADMIN for TAP ports, or with no
capability at all for vhost-user and VXLAN ports only (docs/service.md).
What fails without a capability says which one it needs where it fails;
this is the start-up line that tells an operator what the daemon has.
"""

from __future__ import annotations

import grp
import os
import pwd

# linux/capability.h, by number
CAPABILITY_NAMES = (
    "cap_chown", "cap_dac_override", "cap_dac_read_search", "cap_fowner", "cap_fsetid",
    "cap_kill", "cap_setgid", "cap_setuid", "cap_setpcap", "cap_linux_immutable",
    "cap_net_bind_service", "cap_net_broadcast", "cap_net_admin", "cap_net_raw", "cap_ipc_lock",
    "cap_ipc_owner", "cap_sys_module", "cap_sys_rawio", "cap_sys_chroot", "cap_sys_ptrace",
    "cap_sys_pacct", "cap_sys_admin", "cap_sys_boot", "cap_sys_nice", "cap_sys_resource",
    "cap_sys_time", "cap_sys_tty_config", "cap_mknod", "cap_lease", "cap_audit_write",
    "cap_audit_control", "cap_setfcap", "cap_mac_override", "cap_mac_admin", "cap_syslog",
    "cap_wake_alarm", "cap_block_suspend", "cap_audit_read", "cap_perfmon", "cap_bpf",
    "cap_checkpoint_restore",
)


def effective_capabilities(pid: int | str = "self") -> set[str]:
    """Names of the effective capabilities (CapEff of /proc/PID/status)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    mask = int(line.split()[1], 16)
                    break
            else:
                return set()
    except OSError:
        return set()
    return {CAPABILITY_NAMES[bit] if bit < len(CAPABILITY_NAMES) else f"cap_{bit}"
            for bit in range(64) if mask >> bit & 1}


def _name(lookup, ident: int) -> str:
    try:
        return f"{ident} ({lookup(ident)[0]})"
    except (KeyError, OverflowError):
        return str(ident)


def describe() -> str:
    """"uid 65534 (nobody), gid 65534 (nogroup), capabilities: cap_net_admin"."""
    caps = effective_capabilities()
    missing = set(CAPABILITY_NAMES) - caps
    if not missing:
        shown = "all"
    elif len(missing) < len(caps):      # root under a container's or a unit's limits
        shown = "all but " + ", ".join(sorted(missing))
    else:
        shown = ", ".join(sorted(caps)) or "none"
    return (f"uid {_name(pwd.getpwuid, os.geteuid())}, gid {_name(grp.getgrgid, os.getegid())}, "
            f"capabilities: {shown}")
