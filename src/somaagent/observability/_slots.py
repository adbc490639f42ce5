"""Upstream concurrency metrics, read from each model's slots at scrape time.

Nothing is counted on the request path: the slots keep their own figures (in flight,
queued, shed, time waited) and this collector reports them as they are when Prometheus
scrapes, cumulative ones as counters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from somaagent.observability._labels import LabelGuard

__all__ = ["SlotsCollector", "SlotsSnapshotLike"]


class SlotsSnapshotLike(Protocol):
    """What the collector reads from ``service.upstream_slots.SlotsSnapshot``."""

    @property
    def limit(self) -> int: ...
    @property
    def in_flight(self) -> int: ...
    @property
    def queued(self) -> int: ...
    @property
    def shed_full(self) -> int: ...
    @property
    def shed_timeout(self) -> int: ...
    @property
    def waited_s(self) -> float: ...


class SlotsCollector:
    """A ``prometheus_client`` collector over ``read()``: model id -> its slots' snapshot."""

    def __init__(
        self, read: Callable[[], Mapping[str, SlotsSnapshotLike]], guard: LabelGuard
    ) -> None:
        self._read = read
        self._guard = guard

    def describe(self) -> Iterable[Metric]:
        return list(self._families({}))

    def collect(self) -> Iterable[Metric]:
        return list(self._families(self._read()))

    def _families(self, snaps: Mapping[str, SlotsSnapshotLike]) -> Iterable[Metric]:
        limit = GaugeMetricFamily(
            "soma_upstream_slots",
            "Calls this process may have in flight to the model at once (catalog concurrency)",
            labels=["model"],
        )
        in_flight = GaugeMetricFamily(
            "soma_upstream_in_flight", "Calls in flight to the model now", labels=["model"]
        )
        queued = GaugeMetricFamily(
            "soma_upstream_queued", "Calls waiting for one of the model's slots", labels=["model"]
        )
        shed = CounterMetricFamily(
            "soma_upstream_shed",
            "Calls that found no slot (reason: queue_full, queue_timeout) and went to the next"
            " candidate model or were answered 503 upstream_overloaded",
            labels=["model", "reason"],
        )
        waited = CounterMetricFamily(
            "soma_upstream_queue_wait_seconds",
            "Time calls spent waiting for the model's slots",
            labels=["model"],
        )
        for model, snap in snaps.items():
            label = self._guard("model", model)
            limit.add_metric([label], snap.limit)
            in_flight.add_metric([label], snap.in_flight)
            queued.add_metric([label], snap.queued)
            shed.add_metric([label, "queue_full"], snap.shed_full)
            shed.add_metric([label, "queue_timeout"], snap.shed_timeout)
            waited.add_metric([label], snap.waited_s)
        return [limit, in_flight, queued, shed, waited]
