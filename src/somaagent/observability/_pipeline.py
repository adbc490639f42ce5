"""Telemetry-pipeline metrics read from the publisher's, worker's and consumer's own counters.

The publisher, the worker and the consumer already keep cumulative counts in their stats
dataclasses. Rather than mirroring them into ``Counter`` objects (remember the last value seen,
``inc`` by the difference, and special-case the drop to zero when a component is rebuilt), this
collector keeps the latest snapshot and reports the cumulative values as they are at scrape
time. A rebuilt component restarts from zero, which Prometheus reads as an ordinary counter
reset, exactly as it would for a restarted process.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from somaagent.observability._labels import LabelGuard

__all__ = ["ConsumerStatsLike", "PipelineCollector", "PublisherStatsLike", "WorkerStatsLike"]

PUBLISHER_STATES = ("published", "delivered", "spooled", "replayed", "failed", "unspooled")


class PublisherStatsLike(Protocol):
    """What the collector reads from ``kafka_publisher.PublisherStats``."""

    published: int
    delivered: int
    spooled: int
    replayed: int
    delivery_failures: int
    unspooled: int


class WorkerStatsLike(Protocol):
    """What the collector reads from ``service.worker.WorkerStats``."""

    batches: int
    stored: int
    duplicates: int
    dead_letters: int
    failures: int
    by_reason: dict[str, int]


class ConsumerStatsLike(Protocol):
    """What the collector reads from ``kafka_consumer.ConsumerStats``."""

    lag: dict[str, int]


@dataclass
class _Snapshot:
    publisher: dict[str, dict[str, int]] = field(default_factory=dict)
    spool_depth: dict[str, int] = field(default_factory=dict)
    spool_writable: dict[str, int] = field(default_factory=dict)
    worker: dict[str, int] = field(default_factory=dict)
    dead_letters: dict[str, int] = field(default_factory=dict)
    lag: dict[str, int] = field(default_factory=dict)


def _summed(pairs: Iterable[tuple[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for key, value in pairs:
        out[key] = out.get(key, 0) + value
    return out


class PipelineCollector:
    """A ``prometheus_client`` collector over the latest pipeline stats; thread-safe."""

    def __init__(self, guard: LabelGuard) -> None:
        self._guard = guard
        self._lock = threading.Lock()
        self._snap = _Snapshot()

    def update(
        self,
        *,
        producer: str,
        publisher: PublisherStatsLike | None,
        spool_depth: int | None,
        worker: WorkerStatsLike | None,
        consumer: ConsumerStatsLike | None,
        spool_writable: bool | None = None,
    ) -> None:
        """Copy the given stats; a source passed as ``None`` keeps its previous values."""
        snap = self._snap
        producer = self._guard("producer", producer)
        with self._lock:
            if publisher is not None:
                snap.publisher[producer] = {
                    "published": publisher.published,
                    "delivered": publisher.delivered,
                    "spooled": publisher.spooled,
                    "replayed": publisher.replayed,
                    "failed": publisher.delivery_failures,
                    "unspooled": publisher.unspooled,
                }
            if spool_depth is not None:
                snap.spool_depth[producer] = spool_depth
            if spool_writable is not None:
                snap.spool_writable[producer] = int(spool_writable)
            if worker is not None:
                snap.worker = {
                    "batches": worker.batches,
                    "stored_events": worker.stored,
                    "duplicates": worker.duplicates,
                    "dead_letters": worker.dead_letters,
                    "failures": worker.failures,
                }
                by_reason = dict(worker.by_reason)
                unexplained = worker.dead_letters - sum(by_reason.values())
                if unexplained > 0:
                    by_reason["unknown"] = by_reason.get("unknown", 0) + unexplained
                snap.dead_letters = _summed(
                    (self._guard("reason", reason), count) for reason, count in by_reason.items()
                )
            if consumer is not None:
                snap.lag = _summed(
                    (self._guard("topic", topic), lag) for topic, lag in dict(consumer.lag).items()
                )

    def describe(self) -> Iterable[Metric]:
        """The families this collector owns, so the registry can reject duplicates."""
        return list(self._families(_Snapshot()))

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            snap = _Snapshot(
                {k: dict(v) for k, v in self._snap.publisher.items()},
                dict(self._snap.spool_depth),
                dict(self._snap.spool_writable),
                dict(self._snap.worker),
                dict(self._snap.dead_letters),
                dict(self._snap.lag),
            )
        return list(self._families(snap))

    @staticmethod
    def _families(snap: _Snapshot) -> Iterable[Metric]:
        events = CounterMetricFamily(
            "soma_publisher_events",
            "Telemetry events by publisher state (spooled = written while the broker was away;"
            " unspooled = refused by the spool's file system, held in memory)",
            labels=["producer", "state"],
        )
        for producer, counts in sorted(snap.publisher.items()):
            for state in PUBLISHER_STATES:
                events.add_metric([producer, state], counts[state])
        yield events
        yield _labelled_gauge(
            "soma_spool_depth",
            "Events in the write-ahead spool not yet acknowledged by the broker",
            "producer",
            snap.spool_depth,
        )
        yield _labelled_gauge(
            "soma_spool_writable",
            "1 while the write-ahead spool takes writes; 0 while its file system refuses them"
            " (the gateway then refuses new calls)",
            "producer",
            snap.spool_writable,
        )
        for key, doc in (
            ("batches", "Batches the telemetry worker has processed"),
            ("stored_events", "Events the telemetry worker has stored"),
            ("duplicates", "Events the telemetry worker skipped as already stored"),
            ("dead_letters", "Events the telemetry worker dead-lettered (all reasons)"),
            ("failures", "Batches the telemetry worker failed to process (retried)"),
        ):
            family = CounterMetricFamily(f"soma_worker_{key}", doc)
            if key in snap.worker:
                family.add_metric([], snap.worker[key])
            yield family
        dead = CounterMetricFamily(
            "soma_dead_letters", "Events sent to the dead-letter topic", labels=["reason"]
        )
        for reason, count in sorted(snap.dead_letters.items()):
            dead.add_metric([reason], count)
        yield dead
        yield _labelled_gauge(
            "soma_consumer_lag_messages",
            "Messages between the committed offset and the end of each topic",
            "topic",
            snap.lag,
        )


def _labelled_gauge(name: str, doc: str, label: str, values: Mapping[str, int]) -> Metric:
    family = GaugeMetricFamily(name, doc, labels=[label])
    for value_label, value in sorted(values.items()):
        family.add_metric([value_label], value)
    return family
