"""Waiting in async tests: poll a condition until a deadline, never a fixed sleep to hope it holds."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

POLL_S = 0.02


async def eventually(condition: Callable[[], object], what: str, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(POLL_S)


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def cli_records(cli_log: Path, count: int = 1, timeout_s: float = 5.0) -> list[dict[str, Any]]:
    """The fake CLI's records (tests/fixtures/fake_cli.py), once there are `count` of them."""
    await eventually(lambda: len(lines(cli_log)) >= count, f"{count} fake CLI records", timeout_s)
    return [json.loads(line) for line in lines(cli_log)]
