"""The bounds of vswitch/config/bounds.py against the datapath's own copies.

The datapath (cython_ext/) is compiled with its constants; the control plane
must never promise what it cannot hold. Only the constants the extension
exposes as Python names can be compared here.
"""

from __future__ import annotations

from vswitch import _datapath, limits
from vswitch.config import bounds, model
from vswitch.vhost import session


def test_queue_pairs_a_port_may_offer_fit_the_datapath() -> None:
    assert bounds.MAX_QUEUES == _datapath.MAX_QUEUE_PAIRS


def test_ports_a_configuration_may_declare_fit_the_datapath() -> None:
    assert bounds.MAX_PORTS == _datapath.MAX_PORTS


def test_allowed_macs_a_port_may_list_fit_the_datapath() -> None:
    assert bounds.MAX_ALLOWED_MACS == _datapath.MAX_ALLOWED_MACS


def test_memory_slots_the_session_offers_are_the_datapath_regions() -> None:
    assert bounds.MAX_MEM_SLOTS == _datapath.MAX_REGIONS
    # one definition, read by the session and the fd budget
    assert session.MAX_MEM_SLOTS is bounds.MAX_MEM_SLOTS
    assert limits.MEM_SLOTS == bounds.MAX_MEM_SLOTS


def test_guest_memory_defaults_match_the_datapath() -> None:
    # the datapath applies them when the control plane sets no cap (0)
    assert model.DEFAULT_GUEST_MEMORY_PER_PORT == _datapath.DEFAULT_GUEST_MEMORY_PER_PORT
    assert model.DEFAULT_GUEST_MEMORY_TOTAL == _datapath.DEFAULT_GUEST_MEMORY_TOTAL
    assert (bounds.MIN_GUEST_MEMORY <= model.DEFAULT_GUEST_MEMORY_PER_PORT
            <= model.DEFAULT_GUEST_MEMORY_TOTAL <= bounds.MAX_GUEST_MEMORY)


def test_datapath_modes_are_the_datapaths() -> None:
    assert set(model.DATAPATH_MODES) == set(_datapath.MODES)
    assert model.DEFAULT_DATAPATH_MODE in _datapath.MODES
