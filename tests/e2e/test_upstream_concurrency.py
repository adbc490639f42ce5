"""An upstream's concurrency limit, against the real llama.cpp servers: calls beyond its slots
wait in the gateway's queue (their wait is the event's queue delay), a full queue sends the
call to the next model, and with no model left the client gets 503 ``upstream_overloaded``
with a Retry-After instead of an unbounded wait."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from somaagent.bootstrap import Container
from somaagent.settings import Settings
from tests.e2e.gateway_support import (
    PRIMARY,
    REPLICA,
    catalog_with_replica,
    open_chat,
    packaged_catalog,
    running_gateway,
)
from tests.e2e.test_chat_gateway import client, events_for
from tests.integration.telemetry_support import wait_until

# A generation of this length takes seconds on the LOCAL primary: the slot stays taken
# while the test sends its other calls (milliseconds), and is freed by closing the stream.
LONG = {"max_tokens": 1500, "extra_body": {"ignore_eos": True}}


def ask(session: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": "auto",
        "messages": [{"role": "user", "content": "Say hi."}],
        "max_tokens": 4,
        "temperature": 0,
        "extra_headers": {"X-Soma-Session-Id": session},
        **extra,
    }


@contextmanager
def holding_a_slot(sdk: OpenAI, session: str, model: str = PRIMARY) -> Iterator[None]:
    """A streamed call whose answer has started on ``model`` (so it holds one of its slots)
    until the block ends, when the client leaves it."""
    with sdk.chat.completions.with_streaming_response.create(
        stream=True, **ask(session, **LONG)
    ) as raw:
        assert raw.headers["x-soma-model"] == model
        lines = raw.iter_lines()  # kept: a dropped iterator closes the response
        next(lines)
        yield


def series(settings: Settings, name: str, **labels: str) -> float | None:
    """One sample of the gateway's /metrics (None: no such series)."""
    text = httpx.get(f"http://127.0.0.1:{settings.gateway_port}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None


def in_flight(settings: Settings) -> float | None:
    return series(settings, "soma_upstream_in_flight", model=PRIMARY)


def test_a_full_model_gives_way_to_a_free_peer_then_calls_queue_then_are_refused(
    stack: Settings, pipeline: tuple[Container, dict[str, str]], tmp_path: Path
) -> None:
    worker, env = pipeline
    path = tmp_path / "catalog.yaml"
    limits = {"max_in_flight": 1, "max_queued": 1, "max_wait_ms": 60000}
    replica = catalog_with_replica(stack, path, stack.url("primary_model_url"), concurrency=limits)
    replica["concurrency"] = {"max_in_flight": 1, "max_queued": 0}
    catalog = yaml.safe_load(path.read_text())
    catalog["models"][-1] = replica
    path.write_text(yaml.safe_dump(catalog, sort_keys=False))
    session = f"slots-{uuid.uuid4().hex[:8]}"
    queued: dict[str, Any] = {}
    with running_gateway({**env, "SOMA_CATALOG_FILE": str(path)}) as gw, client(gw) as sdk:
        assert series(gw, "soma_upstream_slots", model=PRIMARY) == 1
        with holding_a_slot(sdk, session):
            assert in_flight(gw) == 1
            peer = sdk.chat.completions.with_raw_response.create(**ask(session))
            assert peer.headers["x-soma-model"] == REPLICA  # at once: it had room
            with holding_a_slot(sdk, session, REPLICA):  # now both are full

                def wait_in_line() -> None:
                    queued["answer"] = sdk.chat.completions.with_raw_response.create(**ask(session))

                waiter = threading.Thread(target=wait_in_line)
                waiter.start()
                assert wait_until(lambda: series(gw, "soma_upstream_queued", model=PRIMARY) == 1)
                with pytest.raises(openai.APIStatusError) as refused:
                    sdk.chat.completions.create(**ask(session))  # no room, no queue left
                time.sleep(0.5)
                assert "answer" not in queued  # still waiting for the slot
        waiter.join(timeout=60)
        answer = queued["answer"]
        assert answer.headers["x-soma-model"] == PRIMARY
        assert answer.parse().choices[0].message.content
        assert wait_until(lambda: in_flight(gw) == 0)
        assert series(gw, "soma_upstream_queued", model=PRIMARY) == 0
        for model in (PRIMARY, REPLICA):
            assert series(gw, "soma_upstream_shed_total", model=model, reason="queue_full") == 1
        waited = series(gw, "soma_upstream_queue_wait_seconds_total", model=PRIMARY)
        assert waited is not None and waited >= 0.5
    assert refused.value.status_code == 503
    assert refused.value.response.headers["retry-after"] == "1"
    error = refused.value.response.json()["error"]
    assert error["code"] == "upstream_overloaded"
    assert f"{PRIMARY}: overloaded, {REPLICA}: overloaded" in error["message"]
    assert wait_until(lambda: len(events_for(worker, "slm_metrics", session)) == 4)
    rows = events_for(worker, "slm_metrics", session)
    assert sorted((str(r["model_id"]), str(r["status"])) for r in rows) == sorted(
        [(PRIMARY, "interrupted"), (REPLICA, "ok"), (REPLICA, "interrupted"), (PRIMARY, "ok")]
    )
    gave_way = next(r for r in rows if r["model_id"] == REPLICA and r["status"] == "ok")
    assert json.loads(str(gave_way["decision_tree"]))["attempts"] == [
        {"model_id": PRIMARY, "skipped": "busy", "gave_way_to": REPLICA},
        {"model_id": REPLICA, "status": "ok"},
    ]
    waited_row = next(r for r in rows if r["model_id"] == PRIMARY and r["status"] == "ok")
    assert float(str(waited_row["queue_delay_ms"])) >= 500  # its wait for the slot
    assert json.loads(str(waited_row["decision_tree"]))["attempts"] == [
        {"model_id": PRIMARY, "status": "ok"}  # no peer had room: it waited in line
    ]


@pytest.fixture()
def one_slot_catalog(tmp_path: Path) -> Path:
    """The packaged catalog with one slot on the primary, one place in its queue, 300 ms."""
    catalog = packaged_catalog()
    primary = next(m for m in catalog["models"] if m["model_id"] == PRIMARY)
    primary["concurrency"] = {"max_in_flight": 1, "max_queued": 1, "max_wait_ms": 300}
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(catalog, sort_keys=False))
    return path


def test_with_no_model_left_the_client_gets_503_overloaded_with_retry_after(
    pipeline: tuple[Container, dict[str, str]], one_slot_catalog: Path
) -> None:
    worker, env = pipeline
    session = f"shed-{uuid.uuid4().hex[:8]}"
    refusals: dict[str, openai.APIStatusError] = {}
    with (
        running_gateway({**env, "SOMA_CATALOG_FILE": str(one_slot_catalog)}) as gw,
        client(gw) as sdk,
    ):
        with holding_a_slot(sdk, session):

            def waits_its_longest() -> None:
                try:
                    sdk.chat.completions.create(**ask(session))
                except openai.APIStatusError as exc:
                    refusals["timeout"] = exc

            waiter = threading.Thread(target=waits_its_longest)
            started = time.monotonic()
            waiter.start()
            assert wait_until(lambda: series(gw, "soma_upstream_queued", model=PRIMARY) == 1)
            with pytest.raises(openai.APIStatusError) as full:
                with sdk.chat.completions.with_streaming_response.create(
                    stream=True, **ask(session)
                ):
                    pass
            waiter.join(timeout=30)
            waited = time.monotonic() - started
        for refusal in (full.value, refusals["timeout"]):
            assert refusal.status_code == 503
            assert refusal.response.headers["retry-after"] == "1"
            error = refusal.response.json()["error"]
            assert (error["code"], error["type"]) == ("upstream_overloaded", "server_error")
            assert f"{PRIMARY}: overloaded" in error["message"]
        assert 0.3 <= waited < 10
        assert series(gw, "soma_upstream_shed_total", model=PRIMARY, reason="queue_full") == 1
        assert series(gw, "soma_upstream_shed_total", model=PRIMARY, reason="queue_timeout") == 1
        assert wait_until(lambda: in_flight(gw) == 0)  # the stream's slot came back
        after = sdk.chat.completions.with_raw_response.create(**ask(session))
        assert after.headers["x-soma-model"] == PRIMARY
    assert wait_until(lambda: len(events_for(worker, "conversation_metrics", session)) == 4)
    turns = events_for(worker, "conversation_metrics", session)
    assert sorted(str(t["status"]) for t in turns) == [
        "completed",
        "failed",
        "failed",
        "interrupted",
    ]


def test_a_client_that_leaves_while_its_call_waits_gives_its_place_up(
    pipeline: tuple[Container, dict[str, str]], tmp_path: Path
) -> None:
    worker, env = pipeline
    catalog = packaged_catalog()
    primary = next(m for m in catalog["models"] if m["model_id"] == PRIMARY)
    primary["concurrency"] = {"max_in_flight": 1, "max_queued": 1, "max_wait_ms": 60000}
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(catalog, sort_keys=False))
    session, leaving = f"left-{uuid.uuid4().hex[:8]}", f"left-{uuid.uuid4().hex[:8]}"
    body = {"model": "auto", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4}
    with running_gateway({**env, "SOMA_CATALOG_FILE": str(path)}) as gw, client(gw) as sdk:
        with holding_a_slot(sdk, session):
            with open_chat(gw.gateway_port, body, leaving):  # not streamed; closed unread
                assert wait_until(lambda: series(gw, "soma_upstream_queued", model=PRIMARY) == 1)
            left_at = time.monotonic()
            assert wait_until(lambda: series(gw, "soma_upstream_queued", model=PRIMARY) == 0)
            assert time.monotonic() - left_at < 2  # well before the slot frees
            assert in_flight(gw) == 1  # the stream still holds it
        shed = series(gw, "soma_upstream_shed_total", model=PRIMARY, reason="queue_timeout")
        assert shed == 0  # leaving is not a shed
    assert wait_until(lambda: len(events_for(worker, "conversation_metrics", leaving)) == 1)
    turn = events_for(worker, "conversation_metrics", leaving)[0]
    assert (turn["status"], turn["interrupt_count"], turn["requeue_count"]) == ("interrupted", 1, 0)
    assert turn["model_id"] == ""  # no attempt was made: no model to name
    assert events_for(worker, "slm_metrics", leaving) == []
