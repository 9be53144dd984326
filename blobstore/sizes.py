"""Sizes for people, in binary units as the README counts them: 70 bytes, 12 KiB, 1.5 MiB."""

from __future__ import annotations

UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
"""The binary units past bytes, each 1024 times the one before."""


def format_size(size: int, *, exact: bool = False) -> str:
    """Return size, in bytes, as people read it: '1 byte', '70 bytes', '12 KiB', '1.5 MiB'.

    With exact, a size of 1 KiB or more also gives its bytes: '1.5 MiB (1,572,864 bytes)'.
    Plain Python, no locale: storages and commands use it where Django's
    translations may not be set up. Admin pages wrap it in avoid_wrapping().
    """
    if abs(size) < 1024:
        return f"{size} byte" if size == 1 else f"{size} bytes"
    value = size / 1024
    for unit in UNITS:
        rounded = round(value, 1)
        # 1023.96 KiB rounds to 1024.0 KiB: that is 1 MiB.
        if abs(rounded) < 1024 or unit == UNITS[-1]:
            break
        value /= 1024
    text = f"{rounded:.0f} {unit}" if rounded.is_integer() else f"{rounded:.1f} {unit}"
    return f"{text} ({size:,} bytes)" if exact else text
