"""RLIMIT_NOFILE against the configuration's worst case, at start and at reload.

The daemon is started under `prlimit --nofile=SOFT:HARD`: a soft limit
below the worst case is raised to it; a hard limit below it is raised to
and named in a warning, at start (the log) and at reload (the result
vswitchctl prints). vswitch/limits.py has the arithmetic (tests/unit/test_limits.py).
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.harness.switch import VENV_BIN, Vswitchd
from vswitch.config import load_config
from vswitch.limits import fd_budget

pytestmark = pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs prlimit (util-linux)")


def nofile(pid: int) -> tuple[int, int]:
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return int(soft), int(hard)
    raise AssertionError("no Max open files line")


def vhost(queues: int) -> dict:
    return {"type": "vhost-user", "queues": queues}


def test_a_low_soft_limit_is_raised_to_the_worst_case(tmp_path):
    sw = Vswitchd(tmp_path, {"vm1": vhost(4), "vm2": vhost(4)},
                  wrapper=["prlimit", "--nofile=128:4096", "--"])
    needed = fd_budget(load_config(sw.config_path)).total
    assert 128 < needed < 4096
    with sw:
        assert nofile(sw.proc.pid) == (needed, 4096)
        sec = sw.ctl("show")["security"]
        assert (sec["fds_needed"], sec["nofile_soft"], sec["nofile_hard"]) == (needed, needed, 4096)
        assert f"RLIMIT_NOFILE: soft limit raised from 128 to {needed}" in sw.log_tail(100)
        assert "WARNING" not in sw.log_path.read_text()
        text = subprocess.run([str(VENV_BIN / "vswitchctl"), "--runtime-dir", str(sw.runtime_dir),
                               "show"], capture_output=True, text=True, timeout=30).stdout
        assert f"file descriptors: up to {needed} needed, limit {needed} (hard 4096)" in text, text
        assert "security: seccomp on; uid 0 (root)" in text, text

        # A reload that needs more raises it again, before the new port opens anything.
        sw.write_config({"vm1": vhost(4), "vm2": vhost(4), "vm3": vhost(8)})
        out = sw.reload()
        assert out.returncode == 0 and "warning" not in out.stdout, out.stdout + out.stderr
        more = fd_budget(load_config(sw.config_path)).total
        assert nofile(sw.proc.pid) == (more, 4096)


def test_a_hard_limit_below_the_worst_case_is_named_at_start_and_at_reload(tmp_path):
    hard = 200
    sw = Vswitchd(tmp_path, {"vm1": vhost(16)}, wrapper=["prlimit", f"--nofile=100:{hard}", "--"])
    budget = fd_budget(load_config(sw.config_path))
    needed = budget.total
    assert needed > hard
    with sw:
        assert nofile(sw.proc.pid) == (hard, hard)
        log = sw.log_tail(100)
        assert (f"WARNING vswitch: RLIMIT_NOFILE: this configuration can hold up to {needed} file "
                f"descriptors (1 vhost-user port(s): {budget.ports['vm1']}, 1 worker(s): 3, the daemon "
                f"itself: 64), but the limit is {hard} (hard limit {hard})") in log, log
        assert sw.port("vm1")["state"] == "listening"       # a warning, not a refusal

        sw.write_config({"vm1": vhost(16), "vm2": vhost(1)})
        more = fd_budget(load_config(sw.config_path)).total
        out = sw.reload()
        assert out.returncode == 0, out.stdout + out.stderr
        assert (f"warning: RLIMIT_NOFILE: this configuration can hold up to {more} file "
                f"descriptors") in out.stdout, out.stdout
        assert f"but the limit is {hard} (hard limit {hard})" in out.stdout
        assert sw.port("vm2")["state"] == "listening"
