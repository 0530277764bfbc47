"""vhost/transport.py: a message must arrive whole in time once begun (and the
first one at once); between complete messages a peer may wait for ever."""

from __future__ import annotations

import array
import asyncio
import os
import socket
import struct
import time

import pytest

from vswitch.vhost import protocol as p
from vswitch.vhost.transport import Connection, MessageTimeout

T = 0.2
GET_FEATURES = p.HEADER.pack(1, p.VERSION, 0)
SET_FEATURES = p.HEADER.pack(2, p.VERSION, 8) + struct.pack("=Q", 0)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def run(scenario) -> None:
    """scenario(conn, peer) on a fresh socket pair."""
    ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)

    async def main() -> None:
        conn = Connection(ours, asyncio.get_running_loop())
        try:
            await scenario(conn, peer)
        finally:
            conn.close()
            peer.close()
    asyncio.run(main())


async def expect_timeout(conn: Connection, first: bool, message: str) -> float:
    t0 = time.monotonic()
    with pytest.raises(MessageTimeout, match=message):
        await conn.read_message(T, first)
    return time.monotonic() - t0


def test_the_first_message_must_come_at_once():
    async def scenario(conn, peer):
        elapsed = await expect_timeout(conn, True, f"nothing received in {T:g} s")
        assert T * 0.9 <= elapsed < T + 0.5
    run(scenario)


@pytest.mark.parametrize("partial, message", [
    (GET_FEATURES[:5], "5 of the 12 bytes of a header received"),
    (SET_FEATURES[:12], "0 of the 8 bytes of the payload of SET_FEATURES received"),
    (SET_FEATURES[:15], "3 of the 8 bytes of the payload of SET_FEATURES received"),
])
@pytest.mark.parametrize("first", [True, False])
def test_a_begun_message_must_end_in_time_and_its_fds_are_closed(partial, message, first):
    before = open_fds()

    async def scenario(conn, peer):
        ev = os.eventfd(0)
        peer.sendmsg([partial], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [ev]).tobytes())])
        os.close(ev)
        elapsed = await expect_timeout(conn, first, message)
        assert T * 0.9 <= elapsed < T + 0.5
    run(scenario)
    assert open_fds() == before


def test_bytes_trickling_in_do_not_extend_the_time():
    async def scenario(conn, peer):
        async def drip() -> None:
            for i in range(len(SET_FEATURES)):
                peer.send(SET_FEATURES[i:i + 1])
                await asyncio.sleep(T / 5)
        dripper = asyncio.create_task(drip())
        elapsed = await expect_timeout(conn, False, "bytes of")
        dripper.cancel()
        assert elapsed < T + 0.5
    run(scenario)


def test_no_limit_between_complete_messages():
    async def scenario(conn, peer):
        peer.sendall(GET_FEATURES)
        header, payload, fds = await conn.read_message(T, first=True)
        assert (header.request, payload, fds) == (1, b"", [])
        reading = asyncio.create_task(conn.read_message(T))
        await asyncio.sleep(4 * T)          # idle, as QEMU with -S
        assert not reading.done()
        peer.sendall(SET_FEATURES)
        header, payload, fds = await asyncio.wait_for(reading, 5)
        assert (header.request, payload) == (2, bytes(8))
    run(scenario)


def test_without_a_timeout_a_message_may_take_its_time():
    async def scenario(conn, peer):
        peer.send(SET_FEATURES[:6])
        reading = asyncio.create_task(conn.read_message(None, first=True))
        await asyncio.sleep(2 * T)
        peer.send(SET_FEATURES[6:])
        header, _, _ = await asyncio.wait_for(reading, 5)
        assert header.request == 2
    run(scenario)
