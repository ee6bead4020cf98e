"""Waiting in async tests: poll a condition until a deadline, never a fixed sleep to hope it holds."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

POLL_S = 0.02


async def eventually(condition: Callable[[], object], what: str, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(POLL_S)


async def until(condition: Callable[[], Awaitable[object]], what: str, timeout_s: float = 5.0) -> None:
    """`eventually` for a condition that asks Redis (or anything else awaited)."""
    deadline = time.monotonic() + timeout_s
    while not await condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(POLL_S)


async def redis_ms(redis: Any) -> int:
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def redis_clock_past(redis: Any, ms: int, timeout_s: float = 5.0) -> None:
    """Until Redis's own clock (the one every deadline is kept on) is past `ms`."""

    async def past() -> bool:
        return await redis_ms(redis) > ms

    await until(past, f"the Redis clock past {ms}", timeout_s)


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def cli_records(cli_log: Path, count: int = 1, timeout_s: float = 5.0) -> list[dict[str, Any]]:
    """The fake CLI's records (tests/fixtures/fake_cli.py), once there are `count` of them."""
    await eventually(lambda: len(lines(cli_log)) >= count, f"{count} fake CLI records", timeout_s)
    return [json.loads(line) for line in lines(cli_log)]
