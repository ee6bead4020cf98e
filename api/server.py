"""Running the hub under uvicorn, with a drain before it stops.

On the first SIGTERM (or SIGINT) the hub turns not-ready at once (`/readyz` answers 503, event
streams end) but keeps serving for `shutdown_drain_s`, long enough for a load balancer's health
check to take it out of rotation; only then does uvicorn stop taking connections and finish the
requests in flight. Without the drain, a proxy could still send a request down a keep-alive
connection the hub is closing, and that request would fail. A second signal stops at once.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType

import uvicorn

from api.app import create_app
from api.health import start_draining
from api.metrics import Metrics
from api.protocol import ConnectionLimits, connection_budget, protocol_class
from core.settings import Settings

GRACEFUL_SHUTDOWN_S = 5


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, drain_s: float) -> None:
        super().__init__(config)
        self.drain_s = drain_s
        self.draining = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.draining or self.drain_s <= 0:
            super().handle_exit(sig, frame)
            return
        self.draining = True
        start_draining()
        stop = threading.Timer(self.drain_s, super().handle_exit, (sig, frame))
        stop.daemon = True
        stop.start()


def run(settings: Settings, log_level: str) -> None:
    app = create_app(settings)
    metrics: Metrics = app.state.metrics
    limits = ConnectionLimits.from_settings(settings, connection_budget(settings), metrics.refused)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        access_log=False,
        loop="uvloop",
        http=protocol_class(limits),  # uvicorn's httptools protocol with deadlines (api/protocol.py)
        limit_concurrency=None,  # api/limits.py and the protocol answer overload with a JSON 503
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    # uvicorn raises the signal that stopped it again under the handler that was there before:
    # make that one end the process as the clean stop it was.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    DrainingServer(config, settings.shutdown_drain_s).run()
