"""The Prometheus collectors whose values are not plain per-process counters: the fleet gauges,
read from Redis's counters at scrape time (one read however large the fleet), and the limit
refusals by namespace, shown only to a scraper that presented the metrics token (api/metrics.py
decides who sees which).
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from api.hub import Hub
from core import stats

PREFIX = "machine_hub"
MAX_REFUSAL_NAMESPACES = 1000  # beyond this many namespaces, refusals count under OTHER
OTHER = "_other"  # not a valid namespace name, so it cannot collide with one


Counters = dict[str, int]  # core.stats counter name -> value


async def read_fleet(hub: Hub) -> dict[str, Counters]:
    """Every namespace's fleet counters: one HGETALL, however large the fleet (core.stats)."""
    return await stats.read(hub.redis, hub.queue.keys)


class FleetCollector(Collector):
    """Yields the gauges of the last Redis read, per namespace or summed over them."""

    def __init__(self, *, by_namespace: bool) -> None:
        self.fleet: dict[str, Counters] | None = None
        self.by_namespace = by_namespace

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily(f"{PREFIX}_fleet_up", "1 when the fleet gauges below could be read from Redis")
        up.add_metric([], 0 if self.fleet is None else 1)
        yield up
        if self.fleet is None:
            return
        labels = ["namespace"] if self.by_namespace else []
        online = GaugeMetricFamily(f"{PREFIX}_machines_online", "Machines marked online", labels=labels)
        registered = GaugeMetricFamily(
            f"{PREFIX}_machines_registered", "Machines registered, online or not", labels=labels
        )
        drained = GaugeMetricFamily(
            f"{PREFIX}_machines_drained", "Machines drained: they take no new spawns", labels=labels
        )
        finished = CounterMetricFamily(
            f"{PREFIX}_jobs_finished",
            "Spawn and stop jobs that reached a final state (or unknown)",
            labels=[*labels, "state"],
        )
        delivered = CounterMetricFamily(
            f"{PREFIX}_webhook_deliveries",
            "Webhook deliveries that succeeded or failed for good (after their last attempt)",
            labels=[*labels, "outcome"],
        )
        groups = sorted(self.fleet.items()) if self.by_namespace else [("", _total(self.fleet.values()))]
        for ns, counters in groups:
            key = [ns] if self.by_namespace else []
            online.add_metric(key, counters.get(stats.ONLINE, 0))
            registered.add_metric(key, counters.get(stats.REGISTERED, 0))
            drained.add_metric(key, counters.get(stats.DRAINED, 0))
            for name, count in sorted(counters.items()):
                head, _, state = name.partition(":")
                if head == stats.FINISHED and state:
                    finished.add_metric([*key, state], count)
                elif head == stats.DELIVERIES and state:
                    delivered.add_metric([*key, state], count)
        yield from (online, registered, drained, finished, delivered)


def _total(fleets: Iterable[Counters]) -> Counters:
    total: Counters = {}
    for counters in fleets:
        for name, count in counters.items():
            total[name] = total.get(name, 0) + count
    return total


class RefusalsByNamespace(Collector):
    """Refusals of the limits that know the caller's namespace, for the metrics token's eyes only."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}
        self.namespaces: set[str] = set()

    def add(self, limit: str, ns: str) -> None:
        if ns not in self.namespaces and len(self.namespaces) >= MAX_REFUSAL_NAMESPACES:
            ns = OTHER
        self.namespaces.add(ns)
        self.counts[(limit, ns)] = self.counts.get((limit, ns), 0) + 1

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(
            f"{PREFIX}_limit_refusals_by_namespace",
            "Requests refused by a limit, by limit and namespace (rate and stream limits)",
            labels=["limit", "namespace"],
        )
        for (limit, ns), count in sorted(self.counts.items()):
            family.add_metric([limit, ns], count)
        yield family
