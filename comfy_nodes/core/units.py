"""The one formatter for durations and the one for byte sizes, used by every report, summary, warning
and CLI output. Byte sizes are decimal (1 MB = 10^6 bytes), as disks, downloads and ``nvidia-smi``
count them."""

from __future__ import annotations

_BYTE_UNITS = (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3))


def format_bytes(n: float | None) -> str:
    """1536 -> '1.5 kB', 20.4e9 -> '20.4 GB', 12 -> '12 B'; None -> '-'."""
    if n is None:
        return "-"
    for unit, size in _BYTE_UNITS:
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def format_duration(seconds: float | None) -> str:
    """0.0004 -> '0.4 ms', 0.25 -> '250.0 ms', 3.2 -> '3.200 s', 1140 -> '19 min 0 s'; None -> '-'."""
    if seconds is None or seconds != seconds or seconds in (float("inf"), float("-inf")):
        return "-"
    if abs(seconds) < 1:
        return f"{seconds * 1e3:.1f} ms"
    if abs(seconds) < 600:
        return f"{seconds:.3f} s" if abs(seconds) < 10 else f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s"


def format_share(part: float, whole: float) -> str:
    """part as a percentage of whole ('36.0 %'), or '-' when whole is not positive."""
    return f"{100 * part / whole:.1f} %" if whole > 0 else "-"
