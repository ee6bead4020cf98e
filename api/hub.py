"""What one hub process holds while it runs: its Redis clients and the services built on them."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from redis.asyncio import Redis
from starlette.requests import Request

from api.auth import bearer_token, namespace_of
from api.dispatch import Dispatcher
from api.inbox import Inbox
from core.history import JobHistory
from core.keys import Keys
from core.queue import JobQueue
from core.registry import Registry
from core.settings import Settings
from core.tokens import TokenStore


@dataclass
class Hub:
    settings: Settings
    redis: Redis
    blocking: Redis
    hub_id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])

    def __post_init__(self) -> None:
        keys = Keys(self.settings.key_prefix)
        self.registry = Registry(self.redis, keys)
        self.history = JobHistory(self.redis, keys)
        self.tokens = TokenStore(self.redis, keys)
        self.queue = JobQueue(
            self.redis, keys, history_length=self.settings.job_history_per_machine, max_events=self.settings.max_events
        )
        self.inbox = Inbox(
            self.queue,
            self.blocking,
            keys,
            self.hub_id,
            block_s=self.settings.block_s,
            reconnect_max_s=self.settings.reconnect_max_s,
        )
        self.dispatcher = Dispatcher(self.queue, self.inbox, self.settings)

    async def authenticate(self, request: Request, token: str | None = None) -> str:
        """The caller's namespace, from its Authorization header (or a token found elsewhere)."""
        return await namespace_of(token or bearer_token(request), self.settings.cli_api_token, self.tokens)


def hub_of(request: Request) -> Hub:
    hub = request.state.hub
    assert isinstance(hub, Hub)
    return hub
