"""The gateway with its spool on a disk that fills up: calls under way are still accounted,
new ones are refused with a clear 503 until the disk has room again, and no event is lost."""

from __future__ import annotations

import re
import uuid

import httpx
import msgspec
import openai
import pytest

from somaagent.bootstrap import Container
from somaagent.domain.events import Codec
from tests.disk_support import filled, small_disk
from tests.e2e.gateway_support import running_gateway
from tests.e2e.test_chat_gateway import client, events_for
from tests.integration.telemetry_support import fresh_examples, wait_until


def publisher_count(base: str, state: str) -> float:
    text = httpx.get(f"{base}/metrics", timeout=5).text
    found = re.search(rf'soma_publisher_events_total\{{[^}}]*state="{state}"[^}}]*\}} (\S+)', text)
    assert found, f"no {state} count on /metrics"
    return float(found.group(1))


def unspooled(base: str) -> float:
    return publisher_count(base, "unspooled")


def test_a_full_spool_disk_refuses_new_calls_and_loses_no_event(
    pipeline: tuple[Container, dict[str, str]],
) -> None:
    worker, env = pipeline
    session = f"full-{uuid.uuid4().hex[:8]}"
    ask = {
        "model": "auto",
        "messages": [{"role": "user", "content": "Name a colour."}],
        "max_tokens": 4,
        "temperature": 0,
        "extra_headers": {"X-Soma-Session-Id": session},
    }
    with (
        small_disk(2 << 20) as disk,
        running_gateway({**env, "SOMA_SPOOL_DIR": str(disk)}) as gw,
        client(gw) as sdk,
    ):
        base = f"http://127.0.0.1:{gw.gateway_port}"
        sdk.chat.completions.create(**ask)
        # The answer goes out before its events are written: fill the disk only after them
        # (one write of all of a call's events).
        assert wait_until(lambda: publisher_count(base, "published") >= 2)
        with filled(disk):
            # Admitted while the spool still took writes: answered, its events held in memory.
            held = sdk.chat.completions.create(**ask)
            assert held.choices[0].message.content is not None
            assert unspooled(base) >= 2  # its call event and its conversation event
            with pytest.raises(openai.InternalServerError) as refused:
                sdk.chat.completions.create(**ask)
            assert refused.value.status_code == 503
            assert refused.value.response.headers["retry-after"] == "5"
            error = refused.value.response.json()["error"]
            assert error["code"] == "telemetry_unavailable"
            assert "No space left on device" in error["message"]
            ingest = httpx.post(f"{base}/v1/telemetry/events", json=[{"x": 1}], timeout=15)
            assert ingest.status_code == 503, ingest.text  # nothing taken while it refuses
            assert ingest.json()["error"]["code"] == "telemetry_unavailable"
            health = httpx.get(f"{base}/healthz", timeout=15)
            assert health.status_code == 503
            assert health.json()["components"]["spool"]["healthy"] is False
            metrics = httpx.get(f"{base}/metrics", timeout=5).text
            assert re.search(r"soma_spool_writable\{[^}]*\} 0\.0", metrics), metrics[-2000:]
        # Room again: the background probe finds it, and calls are taken.
        assert wait_until(lambda: httpx.get(f"{base}/healthz", timeout=15).status_code == 200)
        sdk.chat.completions.create(**ask)
    # Three answered calls, three of each event; the refused one left none.
    assert wait_until(lambda: len(events_for(worker, "slm_metrics", session)) >= 3)
    assert wait_until(lambda: len(events_for(worker, "conversation_metrics", session)) >= 3)
    assert len(events_for(worker, "slm_metrics", session)) == 3
    assert len(events_for(worker, "conversation_metrics", session)) == 3


def test_ingest_says_when_its_events_are_only_held_and_a_resend_counts_once(
    pipeline: tuple[Container, dict[str, str]],
) -> None:
    worker, env = pipeline
    session = f"full-ingest-{uuid.uuid4().hex[:8]}"
    codec = Codec()
    events = fresh_examples(session)
    body = [msgspec.json.decode(codec.encode(e)) for e in events]
    slm = sum(1 for e in events if e.event_type == "slm.metrics")
    with small_disk(2 << 20) as disk, running_gateway({**env, "SOMA_SPOOL_DIR": str(disk)}) as gw:
        url = f"http://127.0.0.1:{gw.gateway_port}/v1/telemetry/events"
        with filled(disk):
            held = httpx.post(url, json=body, timeout=15)
            assert held.status_code == 503, held.text
            assert "sending the batch again is safe" in held.json()["error"]["message"]
        assert wait_until(lambda: httpx.post(url, json=body, timeout=15).status_code == 202)
    assert slm >= 1
    assert wait_until(lambda: len(events_for(worker, "slm_metrics", session)) >= slm)
    assert len(events_for(worker, "slm_metrics", session)) == slm  # held, then sent again
