"""Caddy in front of the bench's hubs, and what its log says about each request it failed."""

from __future__ import annotations

import collections
import json

from bench.ha_stack import HaStack, Proc
from machine_hub.redis_server import free_port

# The proxy of deploy/Caddyfile, with the hubs as fixed upstreams and tuned for Caddy 2.6 (the version
# installed here and pinned by compose), as measured by this bench:
# - no retries: 2.6 sends a retried POST without its body (fixed in 2.8, caddy#6259), so even a
#   path check or a spawn with an Idempotency-Key, safe to send again, would fail, and the passive
#   health check would count that against the healthy hub it went to. The client sends a request
#   the proxy answered 502 again itself (bench/traffic.py); from 2.8 on, `lb_retries` with
#   `lb_retry_match` for GETs, path checks and `header Idempotency-Key *` can do it instead.
# - a hub that failed a request is left out for 5 s (passive health), besides the /readyz checks,
#   so a killed hub costs one or two requests, not every other one until its next check.
# - no `buffer_requests`: in 2.6 a failed attempt gives its buffer back while it is still in use,
#   and later requests reach the hubs without their bodies.
# `debug` logs every attempt, so that bench/failover.py can tell why a request failed.
CADDYFILE = """\
{
\tdebug
\tadmin off
\tauto_https off
\tskip_install_trust
\tservers {
\t\ttimeouts {
\t\t\tread_header 10s
\t\t\tread_body 10s
\t\t\tidle 60s
\t\t}
\t}
}
http://127.0.0.1:{port} {
\treverse_proxy {upstreams} {
\t\tlb_policy round_robin
\t\thealth_uri /readyz
\t\thealth_interval 2s
\t\tfail_duration 5s
\t\tmax_fails 1
\t\tflush_interval -1
\t\ttransport http {
\t\t\tkeepalive 4s
\t\t\tdial_timeout 2s
\t\t}
\t}
}
"""


def start_proxy(stack: HaStack) -> str:
    """Caddy in front of every hub of `stack`; its URL."""
    port = free_port()
    upstreams = " ".join(f"127.0.0.1:{p}" for p in stack.hub_ports.values())
    config = stack.tmp / "Caddyfile"
    config.write_text(CADDYFILE.replace("{port}", str(port)).replace("{upstreams}", upstreams))
    argv = ["caddy", "run", "--config", str(config), "--adapter", "caddyfile"]
    stack.procs["caddy"] = Proc("caddy", argv, stack.env(""), stack.tmp / "caddy.log").start()
    return f"http://127.0.0.1:{port}"


def proxy_attempts(stack: HaStack) -> dict[str, list[str]]:
    """What went wrong in each attempt the proxy made for a request, by the request's X-Bench-Id."""
    attempts: dict[str, list[str]] = collections.defaultdict(list)
    for line in (stack.tmp / "caddy.log").read_text(errors="replace").splitlines():
        if '"upstream roundtrip"' not in line or '"error"' not in line:
            continue
        entry = json.loads(line)
        for request_id in entry.get("request", {}).get("headers", {}).get("X-Bench-Id", []):
            attempts[request_id].append(str(entry["error"]))
    return attempts
