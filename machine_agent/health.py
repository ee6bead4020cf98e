"""How the machine is doing, read with each heartbeat: cores, load, memory and uptime.

Only the standard library and /proc: a few small reads every heartbeat interval. Where the
platform does not tell (no /proc on macOS), the value is None rather than a guess.
"""

from __future__ import annotations

import os
from pathlib import Path

from core.machine_schemas import Health

PROC = Path("/proc")


def read_health(proc: Path = PROC) -> Health:
    total, available = _meminfo(proc)
    if total is None:
        total = _physical_memory()
    return Health(
        cores=os.cpu_count(),
        load1=_load1(),
        memory_used_bytes=total - available if total is not None and available is not None else None,
        memory_total_bytes=total,
        uptime_seconds=_uptime(proc),
    )


def _load1() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _meminfo(proc: Path) -> tuple[int | None, int | None]:
    """MemTotal and MemAvailable in bytes ("used" is what is not available, as `free` says)."""
    try:
        text = (proc / "meminfo").read_text()
    except OSError:
        return None, None
    values: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            values[name] = int(fields[0]) * (1024 if fields[1:] == ["kB"] else 1)
    return values.get("MemTotal"), values.get("MemAvailable")


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _uptime(proc: Path) -> int | None:
    try:
        return int(float((proc / "uptime").read_text().split()[0]))
    except (OSError, ValueError, IndexError):
        return None
