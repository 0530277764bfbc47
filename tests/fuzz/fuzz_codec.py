"""atheris harness: the vhost-user codec on arbitrary bytes.

Input: 12 header bytes, then a payload. Every decoder of vswitch.vhost.protocol
must return or raise ProtocolError; anything else is a crash (atheris reports
it with the input). Run: python tests/fuzz/fuzz_codec.py [libFuzzer args] [corpus]
"""

import os
import sys

import atheris

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

with atheris.instrument_imports():
    from vswitch.vhost import protocol as p

DECODERS = [getattr(p, n) for n in dir(p) if n.startswith("decode_") and n not in ("decode_header", "decode_bits")]


def TestOneInput(data: bytes) -> None:
    head, payload = data[:p.HEADER_SIZE], data[p.HEADER_SIZE:]
    if len(head) == p.HEADER_SIZE:
        try:
            h = p.decode_header(head)
            assert h.size <= p.MAX_PAYLOAD
        except p.ProtocolError:
            pass
    for fn in DECODERS:
        try:
            try:
                fn(payload, "X")
            except TypeError:
                fn(payload)
        except p.ProtocolError:
            pass


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
