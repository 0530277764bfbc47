"""Quantities with units, as the configuration writes them: rates in bits/s
("100Mbit"), bursts in bytes ("64KiB"), memory sizes ("1TiB").  Plain text
to int, no YAML: the validator (validate.py) checks the ranges."""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal

# Units of `rate` (bits/s; decimal, case-insensitive like tc's "mbit") and of
# `burst` (bytes; k/M/G decimal, KiB/MiB/GiB binary).
_RATE_PREFIXES = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}
_BURST_UNITS = {"": 1, "B": 1, "k": 10**3, "kB": 10**3, "KiB": 2**10, "M": 10**6, "MB": 10**6,
                "MiB": 2**20, "G": 10**9, "GB": 10**9, "GiB": 2**30}
_QUANTITY_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?) ?([A-Za-z/]*)")
# Sizes of memory: binary units only (memory comes in pages).
_SIZE_UNITS = {"": 1, "B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}


def _quantity(text: str) -> tuple[Decimal, str]:
    """"2.5 Gbit" -> (Decimal("2.5"), "Gbit")."""
    match = _QUANTITY_RE.fullmatch(text)
    if match is None:
        raise ValueError("must be a number with an optional unit")
    return Decimal(match.group(1)), match.group(2)


def parse_rate(value: int | str) -> int:
    """A rate in bits/s: an int, or a string "<number>[k|M|G][bit[/s]]" with
    decimal units ("100Mbit", "1G", "500k", "2.5Gbit"; the prefixes in either
    case, as tc writes "mbit"), rounded to whole bits/s.  Raises ValueError
    saying what is wrong; the range is the caller's to check."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError("must be an integer (bits/s) or a string such as '100Mbit'")
    if isinstance(value, int):
        return value
    number, unit = _quantity(value)
    prefix = unit.removesuffix("/s") if unit.endswith("bit/s") else unit
    prefix = prefix.removesuffix("bit")
    if prefix.lower() not in _RATE_PREFIXES:
        if "B" in unit or unit.lower().endswith(("bps", "byte", "bytes")):
            raise ValueError("rates are in bits per second: write e.g. '100Mbit' (bytes per "
                             "second are not accepted; tc's 'mbps' means megabytes/s)")
        raise ValueError(f"unknown unit {unit!r} (use k, M or G, optionally followed by 'bit')")
    return int((number * _RATE_PREFIXES[prefix.lower()]).to_integral_value(ROUND_HALF_UP))


def parse_burst(value: int | str) -> int:
    """A size in bytes: an int, or a string "<number>[B|k|kB|KiB|M|MB|MiB|G|GB|GiB]"
    (k/M/G decimal, KiB/MiB/GiB binary), rounded to whole bytes.  Raises
    ValueError saying what is wrong (no range check)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError("must be an integer (bytes) or a string such as '64KiB'")
    if isinstance(value, int):
        return value
    number, unit = _quantity(value)
    if unit not in _BURST_UNITS:
        raise ValueError(f"unknown unit {unit!r} (use B, k, kB, KiB, M, MB, MiB, G, GB or GiB)")
    return int((number * _BURST_UNITS[unit]).to_integral_value(ROUND_HALF_UP))


def parse_size(value: int | str) -> int:
    """A memory size in bytes: an int, or a string "<number>[B|KiB|MiB|GiB|TiB]"
    ("1TiB", "1.5 GiB"), rounded to whole bytes.  Raises ValueError saying
    what is wrong (no range check)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError("must be an integer (bytes) or a string such as '1TiB'")
    if isinstance(value, int):
        return value
    number, unit = _quantity(value)
    if unit not in _SIZE_UNITS:
        raise ValueError(f"unknown unit {unit!r} (use B, KiB, MiB, GiB or TiB)")
    return int((number * _SIZE_UNITS[unit]).to_integral_value(ROUND_HALF_UP))
