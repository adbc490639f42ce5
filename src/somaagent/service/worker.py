"""The telemetry worker loop: poll, process each partition's batch, commit, repeat.

Offsets are committed only after a batch is stored (ClickHouse), dead-lettered and folded
into the session summaries (PostgreSQL). A failing sink leaves the batch buffered and it is
retried with backoff; nothing is committed past it.

Given a ``writer`` (``DaemonThreads``: a thread per write, one write at a time), a round's
batches are written there, one after another in order, each committed before the next is
written, exactly as without it. What moves is the validation of the next batch
(``Ingestor.prepare``, pure CPU): it runs in the loop's thread while the batch before is
written, and chDB and PostgreSQL release the GIL while they work, so the two overlap on a
second core. A round's last write is waited for before the round ends, so nothing is under
way while the consumer is polled (where partitions are revoked).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import ParamSpec, Protocol, TypeVar

from somaagent.service.ingest import BatchResult, Ingestor, PreparedBatch, RawMessage

__all__ = ["BatchSource", "DaemonThreads", "WorkerStats", "run_worker"]

log = logging.getLogger("somaagent.worker")

P = ParamSpec("P")
T = TypeVar("T")


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
    writer: Executor | None = None,
) -> WorkerStats:
    """Run until ``stop`` is set; return the statistics.

    ``after_flush`` runs after each round of batches, stored or not (the worker's own
    process collects its garbage there; see ``bootstrap.WorkerRuntime``). ``writer``: see
    the module; without one, each batch is written in this thread.
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
            ok = _flush(source, ingestor, stats, writer)
        finally:
            if after_flush is not None:
                after_flush()
        if not ok:
            stop.wait(backoff_s)
    return stats


Writing = tuple[list[RawMessage], Future[BatchResult]]


class DaemonThreads(Executor):
    """Runs each call submitted in a new daemon thread named ``name``.

    Not a ``ThreadPoolExecutor``: the interpreter joins those threads at exit, so one write
    hung on a stalled sink would hold the process; the loop's own thread is a daemon too.
    A thread per batch costs ~0.1 ms against a write's tens of milliseconds, and on Linux
    it inherits its creator's nice value.
    """

    def __init__(self, name: str) -> None:
        self._name = name

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        future: Future[T] = Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # noqa: BLE001 - handed to whoever waits
                future.set_exception(exc)

        threading.Thread(target=run, name=self._name, daemon=True).start()
        return future


def _flush(
    source: BatchSource, ingestor: Ingestor, stats: WorkerStats, writer: Executor | None
) -> bool:
    """Store and commit one batch per partition, each prepared while the one before is
    written. False when one failed: the round stops there (the rest is handed out again)."""
    writing: Writing | None = None
    try:
        for batch in source.ready_batches():
            try:
                prepared = ingestor.prepare(batch)
            except Exception as exc:  # noqa: BLE001 - keep the batch, retry after a pause
                _failed(stats, batch, exc)
                prepared = None
            if writing is not None:
                done, writing = writing, None
                if not _finish(source, stats, done):
                    return False
            if prepared is None:
                return False
            writing = (batch, _write(ingestor, prepared, writer))
        if writing is not None:
            done, writing = writing, None
            return _finish(source, stats, done)
        return True
    finally:
        if writing is not None:  # only if something above raised: leave no write running
            writing[1].exception()


def _write(
    ingestor: Ingestor, prepared: PreparedBatch, writer: Executor | None
) -> Future[BatchResult]:
    if writer is not None:
        return writer.submit(ingestor.write, prepared)
    future: Future[BatchResult] = Future()
    try:
        future.set_result(ingestor.write(prepared))
    except Exception as exc:  # noqa: BLE001 - reported by ``_finish``
        future.set_exception(exc)
    return future


def _finish(source: BatchSource, stats: WorkerStats, writing: Writing) -> bool:
    """Wait for a batch's write, commit it and count it; False (counted) if either failed."""
    batch, future = writing
    try:
        result = future.result()
        source.commit(batch)
    except Exception as exc:  # noqa: BLE001 - keep the batch, retry after a pause
        _failed(stats, batch, exc)
        return False
    _record(stats, result)
    return True


def _failed(stats: WorkerStats, batch: list[RawMessage], exc: BaseException) -> None:
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
