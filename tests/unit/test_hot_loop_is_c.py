"""Nothing reachable from the worker loop touches the Python C API or the GIL.

Reads the C that Cython generated for the datapath, builds the call graph of
its C-level functions starting at `worker_loop`, and checks every reachable
body for Python API calls, GIL handling and exception machinery. A change
that makes the hot loop call into Python fails here, whatever the benchmark
says.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ROOT / "cython_ext" / "_datapath.c"
ENTRY = "worker_loop"

# A C function Cython generated from a cdef function: its name ends in the
# Cython-level name, prefixed with the module's mangling.
FUNC_DEF = re.compile(
    r"^static [^;{]*?\b(__pyx_f_\w+?_(?:9_datapath|_datapath)_(\w+))\(([^)]*)\)\s*\{", re.M)
FORBIDDEN = re.compile(
    r"\b(Py[A-Z][A-Za-z]+_\w+|Py_(?:INCREF|DECREF|XDECREF|XINCREF)|__Pyx_(?!PyInt_From|TraceLine)\w+"
    r"|PyGILState_\w+|PyEval_\w+|_PyThreadState\w*)")


def _functions(src: str) -> dict[str, tuple[str, str]]:
    """{cython name: (C name, body)} for every C-level function."""
    funcs = {}
    for m in FUNC_DEF.finditer(src):
        start = m.end()
        depth, i = 1, start
        while depth:
            c = src[i]
            depth += c == "{"
            depth -= c == "}"
            i += 1
        funcs[m.group(2)] = (m.group(1), src[start:i - 1])
    return funcs


@pytest.fixture(scope="module")
def functions():
    if not GENERATED.exists():
        pytest.fail(f"{GENERATED} missing: build the extension first (make build)")
    return _functions(GENERATED.read_text())


def reachable(functions) -> dict[str, str]:
    by_c_name = {c: name for name, (c, _) in functions.items()}
    seen, todo = {}, [ENTRY]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        c_name, body = functions[name]
        seen[name] = body
        for callee in re.findall(r"\b(__pyx_f_\w+)\(", body):
            if callee in by_c_name and callee != c_name:
                todo.append(by_c_name[callee])
    return seen


def test_worker_loop_reaches_the_whole_datapath(functions):
    reached = reachable(functions)
    # the graph is real: the loop reaches the ring, FDB and memory code
    for name in ("vhost_ingress_burst", "tap_ingress_burst", "vxlan_ingress_burst", "deliver_to_port",
                 "deliver_to_vhost", "deliver_to_tap", "deliver_to_vxlan", "rx_enqueue", "walk_chain",
                 "fdb_learn", "fdb_lookup", "mem_gpa_segments", "vring_notify", "worker_sleep", "stall"):
        assert name in reached, name


def test_no_python_api_or_gil_in_the_hot_loop(functions):
    offenders = {}
    for name, body in reachable(functions).items():
        hits = sorted(set(FORBIDDEN.findall(body)))
        hits = [h for h in hits if isinstance(h, str)]
        if hits:
            offenders[name] = hits
    assert offenders == {}, f"Python API reachable from {ENTRY}: {offenders}"


def test_the_check_catches_python_calls():
    """The detector itself: a body with a Python call is flagged."""
    body = "{ __pyx_t_1 = PyObject_GetAttr(o, n); Py_DECREF(o); }"
    assert FORBIDDEN.findall(body)
