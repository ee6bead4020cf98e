"""What bench/failover.py asks the hubs besides its traffic: whether they are ready, list every
machine, and take requests (their own /metrics), polled until true."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable

import httpx2

from bench.ha_stack import HaStack


async def until(what: str, check: Callable[[], Awaitable[bool]], stack: HaStack, timeout_s: float = 60.0) -> None:
    """Poll an async `check` until it is true; fail if a process exits or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stack.check()
        try:
            if await check():
                return
        except httpx2.TransportError:
            pass
        await asyncio.sleep(0.1)
    raise TimeoutError(f"timed out after {timeout_s:g} s waiting for {what}")


async def listed(url: str, stack: HaStack) -> bool:
    auth = {"Authorization": f"Bearer {stack.settings.cli_api_token}"}
    async with httpx2.AsyncClient() as http:
        response = await http.get(f"{url}/api/machines", headers=auth, timeout=5)
    return response.status_code == 200 and len(response.json()["machines"]) == len(stack.machines)


async def ready(url: str) -> bool:
    async with httpx2.AsyncClient() as http:
        return (await http.get(f"{url}/readyz", timeout=2)).status_code == 200


async def served(url: str) -> float:
    async with httpx2.AsyncClient() as http:
        text = (await http.get(f"{url}/metrics", timeout=5)).text
    return sum(float(v) for v in re.findall(r'machine_hub_http_requests_total\{[^}]*route="/api[^}]*\} (\S+)', text))


async def served_more(url: str, before: float) -> bool:
    return await served(url) > before
