"""worker.tasks: a delivery attempt that Redis failed is tried again, whatever the topology."""

from __future__ import annotations

from typing import Any

import pytest
from arq.worker import Retry
from redis.exceptions import ConnectionError as RedisConnectionError, RedisClusterException

from core.deliveries import Delivery
from core.settings import Settings
from worker import tasks


class FailingSender:
    def __init__(self, error: Exception) -> None:
        self.error = error

    async def attempt(self, delivery: Delivery, *, attempt: int) -> float | None:
        raise self.error


@pytest.mark.parametrize(
    "error",
    [
        RedisConnectionError("Connection reset by peer"),
        RedisClusterException("Redis Cluster cannot be connected."),  # no RedisError: no node answered
        OSError("Network is unreachable"),
    ],
)
async def test_a_delivery_redis_failed_is_tried_again(error: Exception) -> None:
    settings = Settings()
    found: Any = tasks.DeliveryDeps(settings, None, None, FailingSender(error))  # type: ignore[arg-type]
    delivery = {"namespace": "team", "webhookId": "wh_1", "streamId": "1-0", "event": "job.failed", "data": "{}"}
    with pytest.raises(Retry) as raised:
        await tasks.deliver({"delivery_deps": found, "job_try": 1}, delivery)
    assert raised.value.defer_score == settings.webhook_retry_base_s * 1000
