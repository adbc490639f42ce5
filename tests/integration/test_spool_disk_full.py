"""A full disk under the write-ahead spool: nothing torn, nothing lost, recovery on its own.

Each test mounts a small tmpfs of its own and fills it, so the kernel itself refuses the
writes (ENOSPC, short writes included).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from somaagent.adapters.kafka_publisher import KafkaPublisher
from somaagent.adapters.spool import Spool, SpoolWriteError
from somaagent.settings import Settings
from somaagent.stack import Supervisor
from tests.conftest import private_stack
from tests.disk_support import filled, small_disk
from tests.integration.telemetry_support import wait_until
from tests.integration.test_publisher import consume_all


def records(prefix: str, n: int, topic: str = "t") -> list[tuple[str, bytes, bytes]]:
    return [(topic, b"k", f"{prefix}-{i}-".encode().ljust(1500, b"x")) for i in range(n)]


def test_a_refused_write_leaves_no_trace_and_the_spool_recovers() -> None:
    with small_disk(1 << 20) as disk:
        spool = Spool(disk / "spool")
        first = records("a", 10)
        assert spool.append_many(first) == list(range(10))
        segment = next((disk / "spool").glob("*.seg"))
        size = segment.stat().st_size
        with filled(disk):
            with pytest.raises(SpoolWriteError, match="No space left"):
                spool.append_many(records("refused", 4))  # 6 KB: more than a page is free
            assert not spool.writable
            assert spool.write_error is not None and "No space left" in spool.write_error
            assert segment.stat().st_size == size  # cut back: no torn record in the middle
            assert (spool.depth, spool.next_seq) == (10, 10)
            assert not spool.probe()
            spool.ack_many([0, 1])
            spool.checkpoint()  # the watermark cannot be written: logged, nothing raised
        assert spool.probe() and spool.writable
        later = records("b", 3)
        assert spool.append_many(later) == [10, 11, 12]  # no gap where the refused ones were
        spool.close()
        again = Spool(disk / "spool")
        assert [r.value for r in again.pending()] == [v for _t, _k, v in first[2:] + later]
        again.close()


def test_a_segment_left_torn_is_cut_back_before_it_is_appended_to() -> None:
    with small_disk(1 << 20) as disk:
        spool = Spool(disk / "spool")
        spool.close()
        torn = disk / "spool" / f"{0:020d}.seg"  # the next segment's name, torn by a crash
        torn.write_bytes(b"\x10\x00\x00\x00garbage")
        again = Spool(disk / "spool")
        assert again.pending() == []
        kept = records("c", 2)
        again.append_many(kept)
        again.close()
        third = Spool(disk / "spool")
        assert [r.value for r in third.pending()] == [v for _t, _k, v in kept]
        third.close()


def test_records_the_spool_refuses_still_reach_the_broker(stack: Settings) -> None:
    bootstrap = stack.url("kafka_bootstrap")
    topic = f"full-{uuid.uuid4().hex[:8]}"
    with small_disk(1 << 20) as disk:
        publisher = KafkaPublisher(bootstrap=bootstrap, spool=Spool(disk / "spool"))
        try:
            before = records("before", 5, topic)
            assert publisher.publish_many(before)
            with filled(disk):
                held = records("held", 20, topic)
                assert publisher.publish_many(held) is False
                assert publisher.spool_error is not None
                assert publisher.stats.unspooled == 20
                assert publisher.flush(30), publisher.stats  # delivered straight from memory
                assert publisher.held == 0 and publisher.spool_error is not None
            # The background thread's probe finds the space again.
            assert wait_until(lambda: publisher.spool_error is None)
            after = records("after", 5, topic)
            assert publisher.publish_many(after)
            assert publisher.flush(30)
        finally:
            publisher.close()
    got = consume_all(bootstrap, topic, 30)
    assert sorted(got) == sorted(v for _t, _k, v in before + held + after)


@pytest.fixture()
def private_broker() -> Iterator[Supervisor]:
    with private_stack("disk-full", 27400, ["kafka"]) as supervisor:
        yield supervisor


def test_with_the_broker_away_too_held_records_wait_for_the_disk(
    private_broker: Supervisor,
) -> None:
    bootstrap = private_broker.settings.url("kafka_bootstrap")
    topic = f"full-away-{uuid.uuid4().hex[:8]}"
    with small_disk(1 << 20) as disk:
        publisher = KafkaPublisher(
            bootstrap=bootstrap,
            spool=Spool(disk / "spool"),
            message_timeout_ms=2000,
            probe_interval_s=0.2,
        )
        try:
            private_broker.down(only=["kafka"])
            with filled(disk):
                held = records("held", 20, topic)
                assert publisher.publish_many(held) is False
                assert wait_until(lambda: publisher.degraded)  # their deliveries timed out
                time.sleep(0.5)
                assert publisher.held == 20 and publisher.spool.depth == 0
            # Space again: the held records move into the spool, the broker still away.
            assert wait_until(lambda: publisher.held == 0), publisher.stats
            assert publisher.spool.depth == 20
            private_broker.up(only=["kafka"])
            assert publisher.flush(60), publisher.stats
        finally:
            publisher.close(timeout_s=1)
    assert consume_all(bootstrap, topic, 20) == [v for _t, _k, v in held]
