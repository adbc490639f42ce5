"""Shared helpers for telemetry tests: an isolated worker on the session stack, fresh events."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import msgspec

from somaagent.bootstrap import Container, bootstrap
from somaagent.domain.events import Event, new_event_id, utc_now_iso
from somaagent.settings import Settings, TopicSettings, load_settings
from tests.conftest import TEST_STATE_ROOT
from tests.unit.domain._event_examples import examples


def isolated_env(stack: Settings, **extra: str) -> dict[str, str]:
    """Environment for a worker on the session stack with its own topics, chDB and group."""
    tag = uuid.uuid4().hex[:8]
    env = {
        **os.environ,
        "SOMA_STATE_DIR": str(stack.state_dir),
        "SOMA_PORT_BASE": str(stack.port_base),
        "SOMA_CLICKHOUSE_PATH": str(TEST_STATE_ROOT / f"ch-{tag}"),
        "SOMA_SPOOL_DIR": str(TEST_STATE_ROOT / f"spool-{tag}"),
        "SOMA_WORKER_GROUP": f"worker-{tag}",
        "SOMA_WORKER_MAX_WAIT_S": "0.2",
    }
    for name, value in TopicSettings().model_dump().items():
        env[f"SOMA_TOPICS__{name.upper()}"] = f"t{tag}.{value}"
    env.update(extra)
    return env


@contextmanager
def running_worker(stack: Settings, **extra: str) -> Iterator[Container]:
    settings = load_settings(isolated_env(stack, **extra))
    container = bootstrap(settings, publisher=True, worker=True)
    try:
        yield container
    finally:
        container.close()


def fresh(event: Event, session_id: str, **changes: Any) -> Event:
    return msgspec.structs.replace(
        event, event_id=new_event_id(), session_id=session_id, occurred_at=utc_now_iso(), **changes
    )


def slm_events(session: str, n: int) -> list[Event]:
    """``n`` fresh copies of the example ``slm.metrics`` event in ``session``."""
    base = [e for e in examples() if e.event_type == "slm.metrics"][0]
    return [fresh(base, session) for _ in range(n)]


def publish_slm(container: Container, events: list[Event]) -> None:
    """Publish ``slm.metrics`` events through the container's durable publisher."""
    assert container.publisher is not None
    topic = container.settings.topics.slm_metrics
    container.publisher.publish_many(
        [(topic, e.tenant.encode(), container.codec.encode(e)) for e in events]
    )


def stored_slm(container: Container) -> tuple[int, int]:
    """Rows and distinct event ids in the container worker's ``slm_metrics``."""
    assert container.worker is not None
    store = container.worker.store
    row = store.query(
        f"SELECT count() AS n, uniqExact(event_id) AS u FROM {store.database}.slm_metrics"
        " SETTINGS output_format_json_quote_64bit_integers=0"
    )[0]
    return int(row["n"]), int(row["u"])


def fresh_examples(session_id: str) -> list[Event]:
    return [fresh(e, session_id) for e in examples()]


def wait_until(predicate: Callable[[], bool], timeout_s: float = 60, step_s: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step_s)
    return predicate()


JSON_OUT = (
    " SETTINGS output_format_json_quote_decimals=1, output_format_json_quote_64bit_integers=0"
)


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)


def normalise_stored(field: str, expected: Any, stored: Any) -> tuple[Any, Any]:
    """Bring a stored ClickHouse value and the produced value to comparable forms."""
    if isinstance(expected, dict):
        return expected, json.loads(stored)
    if field in ("occurred_at", "window_start", "window_end"):
        got = datetime.fromisoformat(stored).replace(tzinfo=UTC)
        return _ts(expected), got
    if field == "cost_usd":
        return Decimal(expected), Decimal(stored)
    return expected, stored
