"""The telemetry worker's progress, read as its consumer group's committed offsets."""

from __future__ import annotations

from types import TracebackType

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from somaagent.settings import Settings

__all__ = ["GroupProbe"]


class GroupProbe:
    """The worker group's committed offsets on ``topics`` (one consumer, reused; it never
    joins the group, it only reads the group's commits)."""

    def __init__(self, settings: Settings, topics: list[str]) -> None:
        bootstrap = settings.url("kafka_bootstrap")
        meta = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=5).topics
        self.parts = [TopicPartition(t, p) for t in topics for p in meta[t].partitions]
        self._consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": settings.worker_group}
        )

    def committed(self) -> list[int]:
        """Per partition, the committed offset (0 before any)."""
        return [max(tp.offset, 0) for tp in self._consumer.committed(self.parts, timeout=5)]

    def total(self) -> int:
        return sum(self.committed())

    def progress(self) -> list[tuple[int, int]]:
        """Per partition, the committed offset and the high watermark. Committed first:
        what is read after it can only be as far or further."""
        committed = self.committed()
        ends = [self._consumer.get_watermark_offsets(tp, timeout=5)[1] for tp in self.parts]
        return list(zip(committed, ends, strict=True))

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> GroupProbe:
        return self

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.close()
