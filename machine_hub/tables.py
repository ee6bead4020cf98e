"""Aligned text tables of machines and jobs, and the ages and latencies in them."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

MAX_ERROR_WIDTH = 72


def format_age(then_ms: int | float | None, now_ms: float | None = None) -> str:
    """`3s ago`, `5m ago`, `2h ago`, `4d ago`; `never` without a time."""
    if then_ms is None:
        return "never"
    now = time.time() * 1000 if now_ms is None else now_ms
    seconds = max(0, int((now - then_ms) // 1000))
    if seconds < 60:
        return f"{seconds}s ago"
    if seconds < 3600:
        return f"{seconds // 60}m ago"
    if seconds < 86400:
        return f"{seconds // 3600}h ago"
    return f"{seconds // 86400}d ago"


def format_latency(ms: int | float | None) -> str:
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{round(ms)} ms"
    if ms < 10_000:
        return f"{ms / 1000:.2f} s"
    return f"{ms / 1000:.1f} s"


def short_job_id(job_id: str) -> str:
    """A job id is `<machine id>.<32 hex>`; the first 8 hex tell jobs apart in a list."""
    return job_id.rsplit(".", 1)[-1][:8]


def truncate(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def render_table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, right: Iterable[int] = ()) -> str:
    """Columns padded to their widest cell, two spaces apart; `right` columns are right-aligned."""
    body = [[str(cell) for cell in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in body:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    right_cols = set(right)

    def line(cells: Sequence[str]) -> str:
        out = [cell.rjust(widths[i]) if i in right_cols else cell.ljust(widths[i]) for i, cell in enumerate(cells)]
        return "  ".join(out).rstrip()

    return "\n".join([line(list(headers)), *(line(row) for row in body)])


def machines_table(machines: Sequence[Mapping[str, Any]], now_ms: float | None = None) -> str:
    rows = []
    for m in machines:
        meta = m.get("metadata") or {}
        online = m.get("online", True)
        rows.append(
            [
                str(m.get("id", "?")),
                ("online" if online else "offline") + (" (drained)" if m.get("drained") else ""),
                str(meta.get("platform") or "-"),
                str(meta.get("version") or "-"),
                format_age(m.get("lastSeen"), now_ms),
                _count(m.get("queueDepth")),
                _count(m.get("inFlight")),
            ]
        )
    headers = ("ID", "STATE", "PLATFORM", "VERSION", "LAST SEEN", "QUEUE", "IN FLIGHT")
    return render_table(headers, rows, right=(5, 6))


def job_error(job: Mapping[str, Any]) -> str:
    result = job.get("result")
    result = result if isinstance(result, Mapping) else {}
    error = job.get("error") or result.get("error") or ""
    code = job.get("code") or result.get("code") or ""
    if error and code:
        return f"{code}: {error}"
    return str(error or code)


def jobs_table(jobs: Sequence[Mapping[str, Any]], now_ms: float | None = None) -> str:
    rows = [
        [
            short_job_id(str(job.get("id", "?"))),
            str(job.get("kind", "?")),
            str(job.get("machineId", "?")),
            str(job.get("state", "?")),
            format_age(job.get("createdAt"), now_ms),
            format_latency(job.get("latencyMs")),
            truncate(job_error(job), MAX_ERROR_WIDTH),
        ]
        for job in jobs
    ]
    return render_table(("JOB", "KIND", "MACHINE", "STATE", "AGE", "LATENCY", "ERROR"), rows, right=(5,))


def _count(value: object) -> str:
    return "-" if value is None else str(value)
