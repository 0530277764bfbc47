"""The guest harness's reading of a command's console output: kernel
messages printed on the same serial console are taken out of it, also when
one begins in the middle of a line of the command's output (seen: a DMAR
fault inside iperf3's JSON, which then did not parse)."""

from __future__ import annotations

import json
from types import SimpleNamespace

from tests.harness.guests.qemu import QemuGuest


def _strip(text: str) -> tuple[str, list[str]]:
    guest = SimpleNamespace(console_kernel_messages=[])
    return QemuGuest._strip_kernel_lines(guest, text), guest.console_kernel_messages  # type: ignore[arg-type]


def test_a_kernel_line_of_its_own_is_taken_out() -> None:
    out, kernel = _strip('{"a": 1,\n[   14.157159] virtio_net virtio0: hello\n"b": 2}\n')
    assert json.loads(out) == {"a": 1, "b": 2}
    assert kernel == ["[   14.157159] virtio_net virtio0: hello"]


def test_a_kernel_message_in_the_middle_of_a_line_is_cut_out_of_it() -> None:
    text = ('{"rtt":[   14.157159] DMAR: DRHD: handling fault status reg 2\n'
            '[   14.158008] DMAR: [DMA Write NO_PASID] Request device [01:00.0] fault addr 0xfff27000\n'
            '14157, "ok": true}\n')
    out, kernel = _strip(text)
    assert json.loads(out) == {"rtt": 14157, "ok": True}
    assert kernel == ["[   14.157159] DMAR: DRHD: handling fault status reg 2",
                      "[   14.158008] DMAR: [DMA Write NO_PASID] Request device [01:00.0] fault addr 0xfff27000"]


def test_output_without_kernel_messages_is_unchanged() -> None:
    text = "PING 10.0.0.2: [1.5] not a timestamp\nlist [0.1, 2.25] \n"
    assert _strip(text) == (text, [])

