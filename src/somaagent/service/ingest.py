"""Ingest one batch of Kafka messages from one topic partition: validate, de-duplicate, store.

A *batch* is a contiguous run of offsets ``[first, last]`` of one partition. Everything it
writes is keyed by those coordinates, so processing the same batch twice (a crash between
the insert and the offset commit) stores nothing twice:

* ClickHouse inserts carry ``insert_deduplication_token = <topic_id>:<partition>:<first>-<last>``
  and every row records ``_batch_end = last``, which tells a restarted worker the exact
  boundaries of a batch it may have stored but not committed;
* an event already stored *from other coordinates* (a producer replayed it after an outage)
  is dropped by its ``event_id``, looked up among its batch's tenants and span of
  ``occurred_at`` only (see ``Lookup``);
* session summaries apply each batch once (a ledger of batch keys in the same transaction);
  the events a retried batch keeps are the same as the first time, because the ``event_id``
  filter only drops events stored from *other* coordinates.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import msgspec

from somaagent.domain.events import Codec, ContractError, Event

__all__ = [
    "BatchResult",
    "DeadLetter",
    "DeadLetterSink",
    "Ingestor",
    "Lookup",
    "PreparedBatch",
    "RawMessage",
    "StoredCoordinates",
    "SummaryStore",
    "TelemetryStore",
    "json_row",
]


@dataclass(frozen=True, slots=True)
class StoredCoordinates:
    """Where a stored row came from."""

    topic_id: str
    partition: int
    offset: int


def json_row(value: bytes, extra: dict[str, Any]) -> bytes:
    """Append ``extra`` columns to a validated JSON object's bytes without re-encoding it."""
    tail = msgspec.json.encode(extra)
    return value.rstrip()[:-1] + b"," + tail[1:]


@dataclass(frozen=True, slots=True)
class Lookup:
    """Events to look for in the store: their ids, tenants and span of ``occurred_at``.

    A copy of an event (a producer's replay, a client's retry) has its id, its tenant and
    its ``occurred_at``, so the store only searches the rows of those tenants in that span:
    a look-up's cost stays the same however large the table grows.
    """

    event_ids: list[str]
    tenants: list[str]
    earliest: datetime
    latest: datetime

    @classmethod
    def of(cls, events: Sequence[Event]) -> Lookup:
        stamps = [datetime.fromisoformat(e.occurred_at) for e in events]
        tenants = sorted({e.tenant for e in events})
        return cls([e.event_id for e in events], tenants, min(stamps), max(stamps))


@dataclass(frozen=True, slots=True)
class RawMessage:
    topic: str
    topic_id: str
    partition: int
    offset: int
    value: bytes | None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    message: RawMessage
    reason: str
    event_type: str = ""
    tenant: str = ""
    event_id: str = ""


class TelemetryStore(Protocol):
    database: str

    def table(self, event_type: str) -> str: ...

    def insert(self, table: str, rows: bytes, *, token: str) -> None: ...

    def existing(self, table: str, lookup: Lookup) -> dict[str, StoredCoordinates]: ...


class SummaryStore(Protocol):
    def apply(self, events: Sequence[Event], *, batch_key: str) -> int: ...


class DeadLetterSink(Protocol):
    def publish_dead_letters(self, letters: Sequence[DeadLetter]) -> None: ...


@dataclass
class BatchResult:
    stored: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    summaries_applied: int = 0
    reasons: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class PreparedBatch:
    """A batch validated and turned into rows, nothing written yet (``Ingestor.prepare``).

    ``rows[i]`` is the stored row of ``accepted[i]``; ``lookup`` is None when nothing was
    accepted.
    """

    token: str
    accepted: list[tuple[Event, RawMessage]]
    rows: list[bytes]
    lookup: Lookup | None
    dead: list[DeadLetter]
    dead_rows: bytes


def _peek(value: bytes) -> tuple[str, str, str]:
    """Best-effort event_type, tenant, event_id of an invalid message (for triage)."""
    try:
        obj = msgspec.json.decode(value)
    except msgspec.DecodeError:
        return "", "", ""
    if not isinstance(obj, dict):
        return "", "", ""

    def text(key: str) -> str:
        v = obj.get(key)
        return v[:128] if isinstance(v, str) else ""

    return text("event_type"), text("tenant"), text("event_id")


class Ingestor:
    """Validate and store batches; the ports are passed in (see ``bootstrap``)."""

    def __init__(
        self,
        *,
        codec: Codec,
        store: TelemetryStore,
        summaries: SummaryStore,
        dead_letters: DeadLetterSink,
        event_type_for_topic: Mapping[str, str],
    ) -> None:
        self.codec = codec
        self.store = store
        self.summaries = summaries
        self.dead_letters = dead_letters
        self.event_type_for_topic = dict(event_type_for_topic)

    def _classify(self, messages: Sequence[RawMessage]) -> tuple[list[Any], list[DeadLetter]]:
        expected = self.event_type_for_topic.get(messages[0].topic)
        accepted: list[tuple[Event, RawMessage]] = []
        dead: list[DeadLetter] = []
        seen: set[str] = set()
        verdicts = iter(self.codec.decode_many([m.value for m in messages if m.value is not None]))
        for m in messages:
            if m.value is None:
                dead.append(DeadLetter(m, "empty message (no value)"))
                continue
            event = next(verdicts)
            if isinstance(event, ContractError):
                dead.append(DeadLetter(m, str(event), *_peek(m.value)))
                continue
            if expected is None or event.event_type != expected:
                reason = f"event_type {event.event_type} does not belong on topic {m.topic}"
                dead.append(DeadLetter(m, reason, event.event_type, event.tenant, event.event_id))
                continue
            if event.event_id in seen:
                continue  # the same event twice in one batch: keep the first
            seen.add(event.event_id)
            accepted.append((event, m))
        return accepted, dead

    def prepare(self, messages: Sequence[RawMessage]) -> PreparedBatch:
        """Validate a non-empty batch and build its rows: no I/O, so the worker runs it
        while the batch before is being written (``write``)."""
        first, last = messages[0], messages[-1]
        accepted, dead = self._classify(messages)
        return PreparedBatch(
            token=f"{first.topic_id}:{first.partition}:{first.offset}-{last.offset}",
            accepted=accepted,
            rows=[json_row(m.value or b"", self._coordinates(m, last.offset)) for _, m in accepted],
            lookup=Lookup.of([e for e, _ in accepted]) if accepted else None,
            dead=dead,
            dead_rows=b"\n".join(self._dead_row(d, last.offset) for d in dead),
        )

    def write(self, batch: PreparedBatch) -> BatchResult:
        """Store a prepared batch; safe to call again after a crash (see the module)."""
        token, accepted, dead = batch.token, batch.accepted, batch.dead
        result = BatchResult(dead_letters=len(dead), reasons=[d.reason for d in dead])
        keep = accepted
        if batch.lookup is not None:  # None exactly when nothing was accepted
            table = self.store.table(accepted[0][0].event_type)
            stored = self.store.existing(table, batch.lookup)
            rows = batch.rows
            if stored:
                kept = [
                    i
                    for i, (e, m) in enumerate(accepted)
                    if e.event_id not in stored
                    or stored[e.event_id] == StoredCoordinates(m.topic_id, m.partition, m.offset)
                ]
                keep = [accepted[i] for i in kept]
                rows = [rows[i] for i in kept]
            result.duplicates = len(accepted) - len(keep)
            self.store.insert(table, b"\n".join(rows), token=token)
            result.stored = len(keep)
        if dead:
            database = self.store.database
            self.store.insert(f"{database}.dead_letters", batch.dead_rows, token="dlq:" + token)
            self.dead_letters.publish_dead_letters(dead)
        result.summaries_applied = self.summaries.apply([e for e, _ in keep], batch_key=token)
        return result

    def process(self, messages: Sequence[RawMessage]) -> BatchResult:
        """Store one contiguous batch of one partition; safe to call again after a crash."""
        if not messages:
            return BatchResult()
        return self.write(self.prepare(messages))

    @staticmethod
    def _coordinates(m: RawMessage, batch_end: int) -> dict[str, Any]:
        return {
            "_topic": m.topic,
            "_topic_id": m.topic_id,
            "_partition": m.partition,
            "_offset": m.offset,
            "_batch_end": batch_end,
        }

    def _dead_row(self, d: DeadLetter, batch_end: int) -> bytes:
        raw = d.message.value or b""
        row = {
            "reason": d.reason,
            "event_type": d.event_type,
            "tenant": d.tenant,
            "event_id": d.event_id,
            "original_bytes": len(raw),
            "original_sha256": hashlib.sha256(raw).hexdigest(),
            "original_b64": base64.b64encode(raw).decode(),
            **self._coordinates(d.message, batch_end),
        }
        return msgspec.json.encode(row)
