"""Publish validated events to Kafka without ever losing one.

Every record is first appended to the local :class:`Spool` (write-ahead), then handed to an
idempotent confluent-kafka producer (``acks=all``, key = tenant). A delivery report
acknowledges the spool record. When the broker is unreachable (a delivery fails, or the
client's queue is full) the publisher turns *degraded*: new records only go to the spool,
and a background thread probes the broker and replays the spool, oldest first, once it is
back. ``publish`` never blocks on the network.

When the spool's file system refuses a write (disk full), the records are *held* in memory
and handed to the producer at once; they leave memory when the broker acknowledges them, or
go into the spool once it can be written again while the broker is away. Meanwhile
``spool_error`` says why, and the gateway takes no new call whose events could not be made
durable; only the records of calls already under way are held. They are lost only if the
process dies before either the broker or the disk takes them (``close`` tries both).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, Message, Producer
from confluent_kafka.admin import AdminClient

from somaagent.adapters.spool import Spool, SpoolWriteError

__all__ = ["KafkaPublisher", "PublisherStats"]

log = logging.getLogger("somaagent.publisher")


@dataclass
class PublisherStats:
    """Counters exposed on ``/metrics`` (spooled = written while the broker was away;
    unspooled = refused by the spool's file system and held in memory)."""

    published: int = 0
    delivered: int = 0
    spooled: int = 0
    replayed: int = 0
    delivery_failures: int = 0
    unspooled: int = 0
    degraded_since: float | None = None
    last_error: str = ""


class KafkaPublisher:
    """Write-ahead spool + idempotent producer + replay loop; thread-safe."""

    def __init__(
        self,
        *,
        bootstrap: str,
        spool: Spool,
        client_id: str = "somaagent",
        message_timeout_ms: int = 10_000,
        probe_interval_s: float = 1.0,
        serve_interval_s: float = 0.1,
        extra_config: dict[str, Any] | None = None,
    ) -> None:
        self._bootstrap = bootstrap
        self._config: dict[str, Any] = {
            "bootstrap.servers": bootstrap,
            "client.id": client_id,
            "acks": "all",
            "enable.idempotence": True,
            "compression.type": "lz4",
            # The spool already holds every record durably: waiting 50 ms for a fuller batch
            # costs no caller anything and makes far fewer produce requests (the broker's
            # and this process's librdkafka thread's CPU) than 5 ms did.
            "linger.ms": 50,
            "batch.num.messages": 10_000,
            "queue.buffering.max.messages": 500_000,
            "message.timeout.ms": message_timeout_ms,
            "socket.connection.setup.timeout.ms": 3_000,
            "reconnect.backoff.max.ms": 1_000,
            "error_cb": self._on_error,
            "logger": logging.getLogger("somaagent.kafka"),
            **(extra_config or {}),
        }
        self.spool = spool
        self.stats = PublisherStats()
        self._probe_interval_s = probe_interval_s
        self._serve_interval_s = serve_interval_s
        self._served_at = float("-inf")
        self._lock = threading.Lock()
        self._degraded = spool.depth > 0  # records left by a previous run are replayed first
        if self._degraded:
            self.stats.degraded_since = time.time()
        self._fatal = threading.Event()
        # Delivery callbacks only note the record here; whoever served them
        # (``serve_deliveries``, the background thread or ``flush``) then acknowledges the
        # lot in the spool under one lock. A callback runs holding the GIL, often in a
        # thread beside the caller's event loop: the less each does, the less the loop waits.
        self._acked: deque[int] = deque()
        # Records the spool refused, by a negative id of their own (delivery reports carry
        # it like a spool sequence number); guarded by ``_held_lock``.
        self._held: dict[int, tuple[str, bytes, bytes]] = {}
        self._held_lock = threading.Lock()
        self._next_held_id = -1
        self._stats_lock = threading.Lock()
        self._producer = Producer(self._config)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kafka-publisher", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ publish
    @property
    def degraded(self) -> bool:
        return self._degraded

    @property
    def spool_error(self) -> str | None:
        """Why the spool refuses writes (disk full...), or ``None`` while it takes them."""
        return self.spool.write_error

    @property
    def held(self) -> int:
        """Records the spool refused that neither the broker nor the spool has taken yet."""
        return len(self._held)

    def publish_many(self, records: list[tuple[str, bytes, bytes]]) -> bool:
        """Accept ``(topic, key, value)`` records without network waits: True when they are
        durable (in the spool), False when the spool refused them and they are held."""
        if not records:
            return True
        with self._lock:
            try:
                seqs = self.spool.append_many(records)
            except SpoolWriteError as exc:
                self._hold(records, str(exc))
                return False
            self.stats.published += len(records)
            if self._degraded:
                self.stats.spooled += len(records)
                return True
            for seq, (topic, key, value) in zip(seqs, records, strict=True):
                if not self._produce(seq, topic, key, value):
                    self._enter_degraded("local producer queue full")
                    self.stats.spooled += len(records)
                    return True
        # Delivery reports are served by ``serve_deliveries`` (the gateway calls it after
        # each answer) or, when that has not been called for ``serve_interval_s``, by the
        # background thread.
        return True

    def _hold(self, records: list[tuple[str, bytes, bytes]], reason: str) -> None:
        """Keep records the spool refused, and hand them to the producer (under ``_lock``)."""
        with self._held_lock:
            ids = list(range(self._next_held_id, self._next_held_id - len(records), -1))
            self._next_held_id -= len(records)
            self._held.update(zip(ids, records, strict=True))
        self.stats.published += len(records)
        self.stats.unspooled += len(records)
        self.stats.last_error = reason
        log.error("telemetry spool refused %d records, held in memory: %s", len(records), reason)
        if self._degraded:
            return
        for held_id, (topic, key, value) in zip(ids, records, strict=True):
            if not self._produce(held_id, topic, key, value):
                self._enter_degraded("local producer queue full")
                return

    def _respool_held(self) -> None:
        """Move held records into the spool once it takes them (the broker being away)."""
        with self._held_lock:
            held = list(self._held.items())
        if not held:
            return
        try:
            self.spool.append_many([record for _id, record in held])
        except SpoolWriteError:
            return
        with self._held_lock:
            for held_id, _record in held:
                self._held.pop(held_id, None)
        self.stats.spooled += len(held)

    def serve_deliveries(self) -> None:
        """Serve the delivery reports that have come in, without waiting.

        In the caller's thread they need no hand-over of the GIL from a thread beside it
        (on the gateway's one core, a context switch the event loop waits for); called
        after an answer has left, they cost no caller any time. While this is called, the
        background thread leaves the reports (and the client's error events) to it.
        """
        self._served_at = time.monotonic()
        self._serve(0)

    def publish(self, topic: str, key: bytes, value: bytes) -> bool:
        return self.publish_many([(topic, key, value)])

    def _produce(self, seq: int, topic: str, key: bytes, value: bytes) -> bool:
        try:
            self._producer.produce(topic, value=value, key=key, on_delivery=self._callback(seq))
        except BufferError:
            return False
        return True

    def _callback(self, seq: int) -> Callable[[KafkaError | None, Message], None]:
        acked = self._acked

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            if err is None:
                acked.append(seq)
            else:
                self.stats.delivery_failures += 1
                self._enter_degraded(str(err))

        return delivered

    def _serve(self, timeout_s: float) -> None:
        """Serve delivery reports for up to ``timeout_s``, then acknowledge the delivered."""
        self._producer.poll(timeout_s)
        self._ack_delivered()

    def _ack_delivered(self) -> None:
        # popleft, not a swap of lists: two threads may drain at once (``flush`` from the
        # caller's thread) and each record must be taken exactly once.
        acked = self._acked
        seqs = []
        try:
            while True:
                seqs.append(acked.popleft())
        except IndexError:
            pass
        if seqs:
            if self._held:  # a held record's id is negative: no spool record has it
                with self._held_lock:
                    for seq in seqs:
                        self._held.pop(seq, None)
            self.spool.ack_many(seqs)
            with self._stats_lock:  # not ``_lock``: publish_many holds that one
                self.stats.delivered += len(seqs)

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            # e.g. a restarted broker no longer knows our idempotent producer id: this client
            # can never deliver again. Its unacknowledged records are in the spool.
            self._fatal.set()
            self._enter_degraded(str(err))
        elif err.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT):
            self._enter_degraded(str(err))

    def _renew_producer(self) -> None:
        with self._lock:
            old = self._producer
            self._producer = Producer(self._config)
            self._fatal.clear()
        old.purge()
        old.flush(0)

    def _enter_degraded(self, reason: str) -> None:
        self.stats.last_error = reason
        if not self._degraded:
            self._degraded = True
            self.stats.degraded_since = time.time()

    # ------------------------------------------------------------------ background
    def _broker_reachable(self) -> bool:
        try:
            admin = AdminClient({"bootstrap.servers": self._bootstrap})
            admin.list_topics(timeout=1.0)
        except Exception:  # noqa: BLE001 - any failure means "not yet"
            return False
        return True

    def _replay(self) -> None:
        """Re-send every unacknowledged spool record in order, then leave degraded mode."""
        # A fresh client for every recovery: a restarted broker may not know the old
        # idempotent producer id/sequence, which would stall or fail every retry. Records
        # still queued in the old client are in the spool and are re-sent below.
        self._renew_producer()
        self._respool_held()
        last = -1
        while not self._stop.is_set():
            batch = self.spool.pending(after=last, limit=5_000)
            if not batch:
                if self._held and not self._send_held():
                    return  # the broker did not take them all; stay degraded
                with self._lock:
                    if not self.spool.pending(after=last, limit=1) and not self._held:
                        self._degraded = False
                        self.stats.degraded_since = None
                        return
                continue
            flushed = self._resend([(r.seq, r.topic, r.key, r.value) for r in batch])
            self.stats.replayed += len(batch)
            last = batch[-1].seq
            if not flushed:
                return  # broker went away again; stay degraded and retry later
            if self._failed_since_replay(batch):
                return  # some deliveries failed again; stay degraded

    def _send_held(self) -> bool:
        """Hand the held records to the producer and wait for them: True if all were taken."""
        with self._held_lock:
            held = list(self._held.items())
        flushed = self._resend([(held_id, *record) for held_id, record in held])
        with self._held_lock:
            return flushed and not any(held_id in self._held for held_id, _r in held)

    def _resend(self, records: list[tuple[int, str, bytes, bytes]]) -> bool:
        """Produce ``(id, topic, key, value)`` records (waiting while the client's queue is
        full), then wait for their delivery reports: False if some were still unsent after
        15 s or the client failed for good."""
        for seq, topic, key, value in records:
            while not self._produce(seq, topic, key, value):
                self._serve(0.05)
        unsent = self._producer.flush(15)
        self._ack_delivered()
        return unsent == 0 and not self._fatal.is_set()

    def _failed_since_replay(self, batch: list[Any]) -> bool:
        pending = {r.seq for r in self.spool.pending(limit=len(batch) + 1)}
        return any(r.seq in pending for r in batch)

    def _run(self) -> None:
        next_checkpoint = time.monotonic() + 1.0
        while not self._stop.is_set():
            try:
                self._tick()
                if time.monotonic() >= next_checkpoint:
                    self.spool.checkpoint()
                    next_checkpoint = time.monotonic() + 1.0
            except Exception:  # this thread must outlive any one failure
                log.exception("publisher background round failed")
                self._stop.wait(self._probe_interval_s)

    def _tick(self) -> None:
        if time.monotonic() - self._served_at < self._serve_interval_s:
            self._stop.wait(self._serve_interval_s)  # the publishing side serves
        else:
            self._serve(0.1)  # returns as soon as a report or an error is served
        if self._fatal.is_set():
            self._renew_producer()
        if not self.spool.writable and self.spool.probe():
            log.info("telemetry spool %s is writable again", self.spool.directory)
        if self._degraded and self._held and self.spool.writable:
            self._respool_held()
        if self._degraded and self._broker_reachable():
            self._replay()
            if self._degraded:
                self._stop.wait(self._probe_interval_s)
        elif self._degraded:
            self._stop.wait(self._probe_interval_s)

    # ------------------------------------------------------------------ lifecycle
    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every published record is delivered (True) or the timeout passes."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._producer.flush(min(0.5, max(0.0, deadline - time.monotonic())))
            self._ack_delivered()
            if self.spool.depth == 0 and not self._held:
                return True
            time.sleep(0.05)
        return self.spool.depth == 0 and not self._held

    def close(self, timeout_s: float = 5.0) -> None:
        """Flush what can be delivered in ``timeout_s``; the rest stays in the spool (held
        records too, if it takes them now)."""
        self.flush(timeout_s)
        self._stop.set()
        self._thread.join(timeout=5)
        self._respool_held()
        if self._held:
            log.error(
                "%d telemetry records are lost: neither the broker nor the spool took them (%s)",
                len(self._held),
                self.spool.write_error,
            )
        self.spool.close()
