"""atheris harness: bytes -> a sequence of vhost-user messages -> Session.

The bytes drive tests/fuzz/model.py's generators (through a
FuzzedDataProvider), so libFuzzer's coverage feedback explores message
orders; the Runner checks the invariants after every message (only
ProtocolError escapes, replies well formed, fds closed or owned once,
session and datapath model agree) and the process' fd count is the same
after each input. Set FUZZ_REAL_DATAPATH=1 to run against the Cython
datapath instead of the model.
"""

import os
import sys

import atheris

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

with atheris.instrument_imports():
    from vswitch.vhost import protocol  # noqa: F401
    from vswitch.vhost import session  # noqa: F401
    from tests.fuzz import model as M

from vswitch.vhost.session import Offer

OFFERS = [Offer(queue_pairs=1), Offer(queue_pairs=2)]
REAL = os.environ.get("FUZZ_REAL_DATAPATH") == "1"
if REAL:
    from vswitch._datapath import Datapath
    from vswitch.ports.vhost_user import PortBackend
    DP = Datapath(workers=1)


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    ch = M.FdpChooser(fdp)
    offer = OFFERS[ch.int(0, 1)]
    before = M.open_fd_count()
    if REAL:
        slot = DP.port_add(offer.queue_pairs)
        runner = M.Runner(offer, PortBackend(DP, slot), vring_info=lambda i: DP.vring_info(slot, i))
    else:
        model = M.ModelBackend(2 * offer.queue_pairs)
        runner = M.Runner(offer, model, model=model)
    try:
        for m in M.gen_sequence(ch, offer, max_len=60):
            runner.feed(m)
        runner.finish()
    finally:
        if REAL:
            DP.port_remove(slot)
    after = M.open_fd_count()
    if after != before:
        raise AssertionError(f"fd leak: {before} -> {after} open fds")


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
