"""The telemetry worker loop: poll, process each partition's batch, commit, repeat.

Offsets are committed only after a batch is stored (ClickHouse), dead-lettered and folded
into the session summaries (PostgreSQL). A failing sink leaves the batch buffered and it is
retried with backoff; nothing is committed past it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from somaagent.service.ingest import BatchResult, Ingestor, RawMessage

__all__ = ["BatchSource", "WorkerStats", "run_worker"]

log = logging.getLogger("somaagent.worker")


class BatchSource(Protocol):
    def poll(self, max_messages: int, timeout_s: float) -> int: ...

    @property
    def buffered(self) -> int: ...

    def ready_batches(self) -> list[list[RawMessage]]: ...

    def commit(self, batch: list[RawMessage]) -> None: ...


@dataclass
class WorkerStats:
    batches: int = 0
    stored: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    failures: int = 0
    last_error: str = ""
    by_reason: dict[str, int] = field(default_factory=dict)


def _record(stats: WorkerStats, result: BatchResult) -> None:
    stats.batches += 1
    stats.stored += result.stored
    stats.duplicates += result.duplicates
    stats.dead_letters += result.dead_letters
    for reason in result.reasons:
        key = reason.split(":", 1)[0][:64]
        stats.by_reason[key] = stats.by_reason.get(key, 0) + 1


def run_worker(
    source: BatchSource,
    ingestor: Ingestor,
    stop: threading.Event,
    *,
    stats: WorkerStats | None = None,
    max_batch: int = 20_000,
    max_wait_s: float = 2.0,
    backoff_s: float = 1.0,
    after_flush: Callable[[], object] | None = None,
) -> WorkerStats:
    """Run until ``stop`` is set; return the statistics.

    ``after_flush`` runs after each round of batches, stored or not (the worker's own
    process collects its garbage there; see ``bootstrap.WorkerRuntime``).
    """
    stats = stats or WorkerStats()
    last_flush = time.monotonic()
    while not stop.is_set():
        if source.buffered < max_batch:
            source.poll(max_batch - source.buffered, 0.1)
        due = time.monotonic() - last_flush >= max_wait_s or source.buffered >= max_batch
        if not due:
            continue
        last_flush = time.monotonic()
        try:
            _flush(source, ingestor, stop, stats, backoff_s)
        finally:
            if after_flush is not None:
                after_flush()
    return stats


def _flush(
    source: BatchSource,
    ingestor: Ingestor,
    stop: threading.Event,
    stats: WorkerStats,
    backoff_s: float,
) -> None:
    """Store and commit one batch per partition; on a failure, pause and stop this round."""
    for batch in source.ready_batches():
        try:
            result = ingestor.process(batch)
            source.commit(batch)
        except Exception as exc:  # noqa: BLE001 - keep the batch, retry after a pause
            stats.failures += 1
            stats.last_error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            log.warning(
                "batch %s[%s] %s-%s failed: %s",
                batch[0].topic,
                batch[0].partition,
                batch[0].offset,
                batch[-1].offset,
                stats.last_error,
            )
            stop.wait(backoff_s)
            break
        _record(stats, result)
