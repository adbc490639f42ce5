"""Accept a batch of events over HTTP: validate each, publish the valid ones, report each."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from somaagent.domain.events import Codec, ContractError

__all__ = ["IngestReport", "Publisher", "accept_events"]


class Publisher(Protocol):
    def publish_many(self, records: list[tuple[str, bytes, bytes]]) -> bool: ...


@dataclass
class IngestReport:
    accepted: int = 0
    rejected: int = 0
    results: list[dict[str, Any]] = field(default_factory=list)
    durable: bool = True  # False: the spool refused the accepted ones (held in memory)

    def to_dict(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "rejected": self.rejected, "results": self.results}


def accept_events(
    items: Sequence[bytes],
    *,
    codec: Codec,
    publisher: Publisher,
    topic_for_event_type: Mapping[str, str],
) -> IngestReport:
    """Validate every item; publish the valid ones (durably) even when others are invalid."""
    report = IngestReport()
    records: list[tuple[str, bytes, bytes]] = []
    verdicts = codec.decode_many(items)
    for index, (raw, event) in enumerate(zip(items, verdicts, strict=True)):
        if isinstance(event, ContractError):
            report.rejected += 1
            report.results.append({"index": index, "status": "rejected", "reason": str(event)})
            continue
        records.append((topic_for_event_type[event.event_type], event.tenant.encode(), raw))
        report.accepted += 1
        report.results.append(
            {
                "index": index,
                "status": "accepted",
                "event_id": event.event_id,
                "event_type": event.event_type,
            }
        )
    if records:
        report.durable = publisher.publish_many(records)
    return report
