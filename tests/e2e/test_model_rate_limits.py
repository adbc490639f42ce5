"""A model's own rate limits (its provider's quota), against the real servers: shared by
every gateway through Redis, an attempt the quota has no room for goes to the next model,
with none left the client gets 503 with the exact wait, and every attempt's hold is settled
to the tokens it used."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import openai
import pytest
import redis
import yaml

from somaagent.adapters.ratecards_store import RateCardStore
from somaagent.bootstrap import Container
from somaagent.domain.ratecards import parse_ratecards
from somaagent.settings import Settings
from tests.e2e.gateway_support import PRIMARY, packaged_catalog, running_gateway
from tests.e2e.test_chat_gateway import client, events_for
from tests.e2e.test_upstream_concurrency import ask, series
from tests.integration.telemetry_support import wait_until


def limited_catalog(stack: Settings, path: Path, rate_limits: dict[str, int]) -> str:
    """The packaged catalog plus a priced alias of the primary with ``rate_limits``, whose id
    (new per test: the quota lives in the stack's Redis) ranks it first among equals, the
    primary next; its id."""
    catalog = packaged_catalog()
    primary = next(m for m in catalog["models"] if m["model_id"] == PRIMARY)
    limited = f"smollm2-0quota-{uuid.uuid4().hex[:8]}"
    catalog["models"].insert(0, {**primary, "model_id": limited, "rate_limits": rate_limits})
    path.write_text(yaml.safe_dump(catalog, sort_keys=False))
    card = {
        "version": f"{limited}-1",
        "effective_from": "2026-01-01T00:00:00Z",
        "source": "test: the primary's price",
        "models": {limited: {"gpu_hour_usd": "0.10", "gpus": 1, "max_ms_per_token": "250"}},
    }
    store = RateCardStore(stack.secret("postgres_dsn"))
    store.load(parse_ratecards(yaml.safe_dump({"version": 1, "cards": [card]}), source="test"))
    return limited


def tree(row: dict[str, Any]) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(str(row["decision_tree"]))
    return parsed


def test_the_quota_is_shared_by_gateways_and_a_full_one_goes_to_the_next_model(
    stack: Settings, pipeline: tuple[Container, dict[str, str]], tmp_path: Path
) -> None:
    worker, env = pipeline
    path = tmp_path / "catalog.yaml"
    limited = limited_catalog(stack, path, {"rpm": 3, "tpm": 100000})
    session = f"quota-{uuid.uuid4().hex[:8]}"
    gw_env = {**env, "SOMA_CATALOG_FILE": str(path)}
    with (
        running_gateway(gw_env) as one,
        running_gateway(gw_env) as two,
        client(one) as first,
        client(two) as second,
    ):
        served = [
            sdk.chat.completions.with_raw_response.create(**ask(session)).headers["x-soma-model"]
            for sdk in (first, second, first, second, first)
        ]
        assert served == [limited, limited, limited, PRIMARY, PRIMARY]  # 3 a minute, in all
        refused = [
            series(gw, "soma_model_rate_limited_total", model=limited, limit="requests")
            for gw in (one, two)
        ]
        assert refused == [1, 1]
    assert wait_until(lambda: len(events_for(worker, "slm_metrics", session)) == 5)
    rows = events_for(worker, "slm_metrics", session)
    skipped = [tree(r)["attempts"][0] for r in rows if r["model_id"] == PRIMARY]
    assert len(skipped) == 2
    for attempt in skipped:
        assert attempt["model_id"] == limited
        assert attempt["skipped"] == "rate_limited" and attempt["limit"] == "requests"
        assert 0 < attempt["retry_after_ms"] <= 60000
    # Every hold was settled to what its call used: no hold left open, and the window
    # counts exactly the tokens the three calls on the limited model recorded.
    used = sum(
        int(str(r["input_tokens"])) + int(str(r["output_tokens"]))
        for r in rows
        if r["model_id"] == limited
    )
    db = redis.Redis.from_url(stack.url("redis_url"))
    tag = f"soma:{{key:model:{limited}}}:rl"
    assert wait_until(lambda: db.zcard(f"{tag}:held") == 0)
    assert int(db.hget(f"{tag}:tokens", "=") or 0) == used > 0


def test_with_no_model_left_the_client_gets_503_with_the_quota_s_exact_wait(
    stack: Settings, pipeline: tuple[Container, dict[str, str]], tmp_path: Path
) -> None:
    _worker, env = pipeline
    path = tmp_path / "catalog.yaml"
    limited = limited_catalog(stack, path, {"rpm": 1})
    catalog = yaml.safe_load(path.read_text())
    catalog["models"] = [m for m in catalog["models"] if m["model_id"] == limited]
    path.write_text(yaml.safe_dump(catalog, sort_keys=False))
    session = f"quota-{uuid.uuid4().hex[:8]}"
    with running_gateway({**env, "SOMA_CATALOG_FILE": str(path)}) as gw, client(gw) as sdk:
        answered = sdk.chat.completions.with_raw_response.create(**ask(session))
        assert answered.headers["x-soma-model"] == limited
        with pytest.raises(openai.APIStatusError) as refused:
            sdk.chat.completions.create(**ask(session))
    assert refused.value.status_code == 503
    headers = refused.value.response.headers
    wait_ms = int(headers["retry-after-ms"])
    assert 55000 < wait_ms <= 60000  # the window frees one minute after the first call
    assert headers["retry-after"] == str(-(-wait_ms // 1000))
    error = refused.value.response.json()["error"]
    assert error["code"] == "upstream_overloaded"
    assert f"{limited}: rate_limited" in error["message"]


def test_a_call_too_large_for_every_quota_is_a_400(
    stack: Settings, pipeline: tuple[Container, dict[str, str]], tmp_path: Path
) -> None:
    _worker, env = pipeline
    path = tmp_path / "catalog.yaml"
    limited = limited_catalog(stack, path, {"tpm": 10})  # below any prompt + max_tokens
    catalog = yaml.safe_load(path.read_text())
    catalog["models"] = [m for m in catalog["models"] if m["model_id"] == limited]
    path.write_text(yaml.safe_dump(catalog, sort_keys=False))
    with running_gateway({**env, "SOMA_CATALOG_FILE": str(path)}) as gw, client(gw) as sdk:
        with pytest.raises(openai.BadRequestError) as refused:
            sdk.chat.completions.create(**ask(f"quota-{uuid.uuid4().hex[:8]}"))
    error = refused.value.response.json()["error"]
    assert (error["code"], error["param"]) == ("request_too_large", "max_tokens")
    assert f"{limited}: rate_limited" in error["message"]
