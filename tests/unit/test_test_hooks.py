"""Test hooks of the datapath (cython_ext/testing.pxi) are compiled in but
refused until enabled: the daemon enables them only with `debug: true`."""

from __future__ import annotations

import subprocess
import sys

import pytest

dpmod = pytest.importorskip("vswitch._datapath")


def test_datapath_hooks_refused_until_enabled():
    dp = dpmod.Datapath(1, "poll")
    p = dp.port_add(1)
    for call in (lambda: dp.debug_fdb_lookup(0, "02:00:00:00:00:01"),
                 lambda: dp.debug_fdb_learn(0, "02:00:00:00:00:01", p),
                 lambda: dp.debug_fdb_learn_many(0, 1, 1, p),
                 lambda: dp.debug_stall_worker(0, 1.0),
                 lambda: dp.debug_packed_take(p, 0, False),
                 lambda: dp.debug_packed_publish(p, 0)):
        with pytest.raises(dpmod.DatapathError, match="test hook.*enable_test_hooks"):
            call()
    with pytest.raises(AttributeError):
        dp.no_such_method
    dp.enable_test_hooks()
    dp.debug_fdb_learn(0, "02:00:00:00:00:01", p)
    assert dp.debug_fdb_lookup(0, "02:00:00:00:00:01") == p
    assert sorted(dpmod.TEST_HOOKS) == ["debug_fdb_learn", "debug_fdb_learn_many",
                                        "debug_fdb_lookup", "debug_packed_publish",
                                        "debug_packed_take", "debug_stall_worker"]


def test_module_hooks_refused_until_enabled():
    # A fresh interpreter: another test of this session may have enabled them.
    code = ("import vswitch._datapath as d\n"
            "try:\n    d._offload_csum_add(b'ab')\nexcept d.DatapathError as e:\n    print('refused', e)\n"
            "d.enable_test_hooks()\nprint(d._offload_csum_add(b'ab'))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["refused _offload_csum_add is a test hook: call enable_test_hooks() first",
                                str(0x6162)]
