"""Ingest throughput: producer → Kafka (Tansu) → worker → rows queryable in ClickHouse (chDB).

Starts Kafka and PostgreSQL through the project's own stack code (own state dir and ports),
runs the worker as a separate process (`soma worker`), publishes N validated events through
the durable publisher, and measures until the worker has committed every message (commits
follow the ClickHouse insert, so the rows are queryable then). Zero loss is verified by
counting rows in ClickHouse afterwards. The baseline, measured in the same run on the same
broker, is raw confluent-kafka produce + consume of the same bytes without validation or
storage: the ceiling this machine's broker and client allow.

With ``--drain`` the events are all in Kafka before the worker starts, and the time runs
from the worker's group becoming STABLE (its partitions assigned) to the last commit: what
the consuming side alone does with both cores to itself.

Prints one JSON object. Usage: .venv/bin/python benchmarks/ingest.py [--events 200000]
[--drain]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, ConsumerGroupState, Producer
from confluent_kafka.admin import AdminClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _group_probe import GroupProbe  # noqa: E402
from tests.integration.telemetry_support import fresh  # noqa: E402
from tests.unit.domain._event_examples import examples  # noqa: E402

from somaagent.adapters import kafka  # noqa: E402
from somaagent.adapters.clickhouse import ChdbDriver  # noqa: E402
from somaagent.adapters.kafka_publisher import KafkaPublisher  # noqa: E402
from somaagent.bootstrap import build_publisher  # noqa: E402
from somaagent.domain.events import Codec, Event  # noqa: E402
from somaagent.settings import Settings, load_settings  # noqa: E402
from somaagent.stack import Supervisor  # noqa: E402


def committed_total(settings: Settings, topic: str) -> int:
    with GroupProbe(settings, [topic]) as probe:
        return probe.total()


class Progress(threading.Thread):
    """Samples the worker group's committed total every 0.1 s until it reaches ``target``.

    The whole run's rate includes the last partial round, which the worker holds for up to
    ``worker_max_wait_s`` waiting for more events; the steady rate is taken between the
    first samples at or above 10% and 90% of the events, from rounds triggered by size.
    """

    def __init__(self, settings: Settings, topic: str, target: int) -> None:
        super().__init__(daemon=True)
        self.target = target
        self.samples: list[tuple[float, int]] = []
        self._probe = GroupProbe(settings, [topic])

    def run(self) -> None:
        try:
            while True:
                done = self._probe.total()
                self.samples.append((time.perf_counter(), done))
                if done >= self.target:
                    return
                time.sleep(0.1)
        finally:
            self._probe.close()

    def steady_rate(self) -> float:
        lo = next(s for s in self.samples if s[1] >= self.target * 0.1)
        hi = next(s for s in self.samples if s[1] >= self.target * 0.9)
        return (hi[1] - lo[1]) / (hi[0] - lo[0]) if hi[0] > lo[0] else float("nan")


def baseline(bootstrap: str, payloads: list[bytes], partitions: int) -> float:
    """Raw produce + consume of the same bytes: events per second, from the moment the
    consumer has its partitions (the topic is new and empty, so ``poll`` returns none)."""
    topic = f"bench-raw-{uuid.uuid4().hex[:6]}"
    kafka.ensure_topics(bootstrap, [topic], partitions)
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 5,
            "compression.type": "lz4",
            "acks": "all",
            "enable.idempotence": True,
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": topic,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 500,
        }
    )
    consumer.subscribe([topic])
    deadline = time.monotonic() + 60
    while not consumer.assignment() and time.monotonic() < deadline:
        consumer.poll(0.1)  # the group join (~3 s) is not the broker's throughput
    start = time.perf_counter()
    for i, p in enumerate(payloads):
        producer.produce(topic, p, key=str(i % 5).encode())
        if i % 10_000 == 0:
            producer.poll(0)
    producer.flush(120)
    got = 0
    deadline = time.monotonic() + 300
    while got < len(payloads) and time.monotonic() < deadline:
        got += len([m for m in consumer.consume(20_000, 0.5) if not m.error()])
    elapsed = time.perf_counter() - start
    consumer.close()
    return got / elapsed


def wait_stable(settings: Settings, timeout_s: float = 120) -> None:
    """Until the worker's group is STABLE, i.e. its partitions are assigned."""
    admin = AdminClient({"bootstrap.servers": settings.url("kafka_bootstrap")})
    group, deadline = settings.worker_group, time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            state = admin.describe_consumer_groups([group])[group].result(timeout=5).state
        except Exception:  # noqa: BLE001 - the group does not exist yet
            state = None
        if state == ConsumerGroupState.STABLE:
            return
        time.sleep(0.05)
    raise TimeoutError(f"group {group} not STABLE after {timeout_s} s")


def spawn_worker(env: dict[str, str], state: Path) -> subprocess.Popen[bytes]:
    log = open(state / "worker.log", "ab")  # noqa: SIM115
    return subprocess.Popen(
        [sys.executable, "-m", "somaagent.entrypoints.cli", "worker"],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def publish_all(
    publisher: KafkaPublisher, codec: Codec, events: list[Event], topic: str
) -> tuple[float, float]:
    """Encode (the producer's check included) and publish through the durable publisher;
    seconds until the last publish call returned and until the broker acknowledged all."""
    t0 = time.perf_counter()
    for start in range(0, len(events), 5000):
        chunk = events[start : start + 5000]
        publisher.publish_many([(topic, e.tenant.encode(), codec.encode(e)) for e in chunk])
    produced_s = time.perf_counter() - t0
    publisher.flush(300)
    return produced_s, time.perf_counter() - t0


def start_worker(
    env: dict[str, str], state: Path, settings: Settings, topic: str
) -> subprocess.Popen[bytes]:
    """`soma worker` as its own process; returns once its topics exist and it joined."""
    worker = spawn_worker(env, state)
    while True:  # the worker creates topics and schema first
        try:
            committed_total(settings, topic)
            break
        except Exception:  # noqa: BLE001
            time.sleep(0.5)
    time.sleep(3)  # group join
    return worker


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--port-base", type=int, default=26200)
    parser.add_argument("--drain", action="store_true", help="publish first, then consume")
    args = parser.parse_args()

    state = ROOT / ".soma-bench" / "ingest"
    env = {
        **os.environ,
        "SOMA_STATE_DIR": str(state),
        "SOMA_PORT_BASE": str(args.port_base),
        "SOMA_WORKER_GROUP": f"bench-{uuid.uuid4().hex[:6]}",
    }
    settings = load_settings(env)
    if state.exists():
        Supervisor(settings).down()
        shutil.rmtree(state)
    supervisor = Supervisor(settings)
    supervisor.up(only=["postgres", "kafka"])
    worker: subprocess.Popen[bytes] | None = None
    try:
        base = [e for e in examples() if e.event_type == "slm.metrics"][0]
        events = [fresh(base, f"bench-s{i % 500}", tenant=f"t{i % 5}") for i in range(args.events)]
        codec = Codec()
        topic = settings.topics.slm_metrics
        publisher = build_publisher(settings, "bench")
        if args.drain:
            kafka.ensure_topics(
                settings.url("kafka_bootstrap"),
                list(settings.topics.event_type_for_topic()),
                settings.kafka_partitions,
            )
            produced_s, delivered_s = publish_all(publisher, codec, events, topic)
            worker = spawn_worker(env, state)
            wait_stable(settings)
        else:
            worker = start_worker(env, state, settings, topic)
        progress = Progress(settings, topic, args.events)
        t0 = time.perf_counter()
        progress.start()
        if not args.drain:
            produced_s, delivered_s = publish_all(publisher, codec, events, topic)
        progress.join()
        total_s = progress.samples[-1][0] - t0
        publisher.close()
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
        worker = None
        assert settings.clickhouse_path is not None
        ch = ChdbDriver(settings.clickhouse_path)
        row = ch.query_json(
            "SELECT count() AS n, uniqExact(event_id) AS u FROM soma.slm_metrics"
            " SETTINGS output_format_json_quote_64bit_integers=0"
        )[0]
        ch.close()
        payloads = [codec.encode(e) for e in events[: min(args.events, 100_000)]]
        raw = baseline(settings.url("kafka_bootstrap"), payloads, settings.kafka_partitions)
        report(
            args.events,
            row,
            (total_s, produced_s, delivered_s),
            (progress.steady_rate(), raw),
            drain=args.drain,
        )
    finally:
        if worker is not None:
            worker.kill()
        supervisor.down()


def report(
    events: int,
    row: dict[str, int],
    seconds: tuple[float, float, float],
    rates: tuple[float, float],
    *,
    drain: bool = False,
) -> None:
    total_s, produced_s, delivered_s = seconds
    steady, raw = rates
    rate = events / total_s
    print(
        json.dumps(
            {
                "benchmark": "ingest",
                "mode": "drain (all published first; from assignment to the last commit)"
                if drain
                else "concurrent (publishing and consuming at once)",
                "events": events,
                "stored_rows": row["n"],
                "distinct_event_ids": row["u"],
                "zero_loss": row["n"] == events == row["u"],
                "seconds_total": round(total_s, 3),
                "seconds_publish_calls": round(produced_s, 3),
                "seconds_until_broker_acked": round(delivered_s, 3),
                "events_per_s": round(rate),
                "steady_events_per_s": round(steady),
                "steady": "committed from 10% to 90% of the events (the whole run's rate"
                " includes the last partial round, held up to worker_max_wait_s)",
                "target_events_per_s": 50_000,
                "baseline": "raw confluent-kafka produce+consume, same bytes, same broker",
                "baseline_events_per_s": round(raw),
                "ratio_to_baseline": round(rate / raw, 3),
                "cores": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
