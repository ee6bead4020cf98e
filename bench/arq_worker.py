"""arq worker for bench/roundtrip.py: the same path check the agent runs, as an arq job.

Run by the benchmark as `python -m arq bench.arq_worker.WorkerSettings` with BENCH_REDIS_URL and
BENCH_ARQ_POLL_DELAY (seconds; arq's default is 0.5) in the environment.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, ClassVar

from arq.connections import RedisSettings


def _exists(paths: list[str]) -> dict[str, bool]:
    return {path: os.path.exists(path) for path in paths}


async def check_paths(ctx: dict[str, Any], paths: list[str]) -> dict[str, bool]:
    """In a thread, like the agent's paths job."""
    return await asyncio.to_thread(_exists, paths)


class WorkerSettings:
    functions: ClassVar[list[Any]] = [check_paths]
    redis_settings = RedisSettings.from_dsn(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
    poll_delay = float(os.environ.get("BENCH_ARQ_POLL_DELAY", "0.5"))
