"""Event codec: round trips, one clear reason per malformed input, ids and timestamps."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import msgspec
import pytest

from somaagent.domain.events import (
    EVENT_TYPES,
    MAX_EVENT_BYTES,
    Codec,
    ContractError,
    Money,
    SlmMetrics,
    format_timestamp,
    new_event_id,
    utc_now_iso,
)
from somaagent.domain.events._types import EVENT_ID_PATTERN, UTC_TIMESTAMP_PATTERN
from somaagent.domain.events.codec import uuid7_from

from ._event_examples import examples

Doc = dict[str, Any]


@pytest.fixture(scope="module")
def codec() -> Codec:
    return Codec()


def as_doc(codec: Codec, index: int = 0) -> Doc:
    doc: Doc = json.loads(codec.encode(examples()[index]))
    return doc


def test_examples_cover_every_event_type() -> None:
    assert [e.event_type for e in examples()] == list(EVENT_TYPES)
    assert [type(e) for e in examples()] == list(EVENT_TYPES.values())


@pytest.mark.parametrize("event", examples(), ids=lambda e: e.event_type)
def test_round_trip_keeps_every_field(codec: Codec, event: Any) -> None:
    data = codec.encode(event)
    decoded = codec.decode(data)
    assert type(decoded) is type(event)
    for name in event.__struct_fields__:
        original, back = getattr(event, name), getattr(decoded, name)
        assert back == original, name
        assert type(back) is type(original), name
    assert decoded == event
    wire = json.loads(data)
    assert wire["event_type"] == event.event_type
    assert set(wire) == {"event_type", *event.__struct_fields__}


def test_money_travels_as_fixed_point_string(codec: Codec) -> None:
    slm = examples()[0]
    assert isinstance(slm, SlmMetrics)
    # 412 tokens at 0.0001/1K + 96 at 0.0002/1K, to the last digit.
    assert slm.cost_usd == Decimal("0.0000604")
    tiny = msgspec.structs.replace(slm, cost_usd=Money("0.000000015"))
    wire = json.loads(codec.encode(tiny))
    assert wire["cost_usd"] == "0.000000015"  # str(Decimal) would say 1.5E-8
    back = codec.decode(codec.encode(tiny))
    assert isinstance(back, SlmMetrics)
    assert back.cost_usd == Decimal("0.000000015")


def _set(key: str, value: Any) -> Callable[[Doc], None]:
    return lambda doc: doc.__setitem__(key, value)


def _drop(key: str) -> Callable[[Doc], None]:
    return lambda doc: doc.__delitem__(key)


MALFORMED: list[tuple[str, int, Callable[[Doc], None], str]] = [
    ("unknown event_type", 0, _set("event_type", "slm.metric"), "event_type"),
    ("unknown schema_version", 0, _set("schema_version", 2), "schema_version"),
    ("schema_version as string", 0, _set("schema_version", "1"), "schema_version"),
    ("missing field", 0, _drop("prompt_hash"), "prompt_hash"),
    ("missing event_type", 0, _drop("event_type"), "event_type"),
    ("wrong type", 0, _set("input_tokens", "412"), "input_tokens"),
    ("bool for a number", 0, _set("latency_ms", True), "latency_ms"),
    ("below bound", 0, _set("queue_delay_ms", -0.5), "queue_delay_ms"),
    ("above bound", 0, _set("gpu_utilization", 1.5), "gpu_utilization"),
    ("unknown field", 0, _set("prompt", "the raw prompt"), "prompt"),
    ("bad UUID version", 0, _set("event_id", str(uuid.uuid4())), "event_id"),
    ("uppercase UUID", 0, lambda d: d.update(event_id=d["event_id"].upper()), "event_id"),
    ("non-UTC timestamp", 0, _set("occurred_at", "2025-01-31T13:00:00+01:00"), "occurred_at"),
    ("nanosecond timestamp", 0, _set("occurred_at", "2025-01-31T12:00:00.1234567Z"), "occurred_at"),
    ("not a real date", 0, _set("occurred_at", "2025-02-29T12:00:00Z"), "occurred_at"),
    ("total_tokens mismatch", 0, _set("total_tokens", 509), "total_tokens"),
    ("cached above input", 0, _set("cached_tokens", 413), "cached_tokens"),
    ("money as JSON number", 0, _set("cost_usd", 0.0000604), "cost_usd"),
    ("negative money", 0, _set("cost_usd", "-0.01"), "cost_usd"),
    ("money with exponent", 0, _set("cost_usd", "6.04E-5"), "cost_usd"),
    ("all-zero trace id", 0, _set("trace_id", "0" * 32), "trace_id"),
    ("uppercase span id", 0, _set("span_id", "00F067AA0BA902B7"), "span_id"),
    ("unsafe tenant", 0, _set("tenant", "acme corp"), "tenant"),
    ("tenant with final newline", 0, _set("tenant", "acme\n"), "tenant"),
    ("empty persona", 0, _set("persona", ""), "persona"),
    ("overlong role", 0, _set("role", "r" * 129), "role"),
    ("unknown enum value", 0, _set("status", "timeout"), "status"),
    ("bad prompt hash", 0, _set("prompt_hash", "F" * 64), "prompt_hash"),
    ("too many filters", 0, _set("safety_filters", ["f"] * 33), "safety_filters"),
    ("base_url with credentials", 1, _set("base_url", "https://u:p@llm.example/v1"), "base_url"),
    ("window reversed", 2, _set("window_end", "2025-01-31T10:00:00Z"), "window_end"),
    ("outcomes do not add up", 2, _set("errors", 4), "invocations"),
    ("percentiles out of order", 2, _set("latency_p99_ms", 10.0), "latency_p"),
    ("exit code out of range", 3, _set("exit_code", 256), "exit_code"),
    ("mos_lqo below 1", 5, _set("mos_lqo", 0.9), "mos_lqo"),
    ("reason with control char", 6, _set("reasons", ["a\u0007"]), "reasons"),
]


@pytest.mark.parametrize(
    ("index", "mutate", "field"),
    [case[1:] for case in MALFORMED],
    ids=[case[0] for case in MALFORMED],
)
def test_malformed_event_is_rejected_naming_the_field(
    codec: Codec, index: int, mutate: Callable[[Doc], None], field: str
) -> None:
    doc = as_doc(codec, index)
    mutate(doc)
    with pytest.raises(ContractError) as info:
        codec.decode(json.dumps(doc).encode())
    reason = info.value.reason
    assert field in reason
    assert "\n" not in reason
    assert str(info.value) == reason


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"{not json", "not JSON"),
        (b"", "not JSON"),
        (b"[]", "Expected `object`, got `array`"),
        (b'"slm.metrics"', "Expected `object`, got `str`"),
        (b"null", "Expected `object`, got `null`"),
    ],
)
def test_non_object_input_is_rejected(codec: Codec, data: bytes, expected: str) -> None:
    with pytest.raises(ContractError, match=re.escape(expected)):
        codec.decode(data)


def test_oversize_is_rejected_before_parsing(codec: Codec) -> None:
    doc = as_doc(codec)
    doc["decision_tree"] = {"note": "x" * MAX_EVENT_BYTES}
    data = json.dumps(doc).encode()
    with pytest.raises(ContractError, match=f"oversize: {len(data)} bytes, limit 65536"):
        codec.decode(data)
    with pytest.raises(ContractError, match="oversize"):
        Codec(max_bytes=1024).decode(codec.encode(examples()[1]))


def test_encode_validates_what_python_construction_does_not(codec: Codec) -> None:
    slm = examples()[0]
    broken = msgspec.structs.replace(slm, latency_ms=-1.0)
    with pytest.raises(ContractError, match="latency_ms"):
        codec.encode(broken)
    with pytest.raises(ContractError, match="total_tokens: invariant violated"):
        SlmMetrics(**{**msgspec.structs.asdict(slm), "total_tokens": 1})
    with pytest.raises(ContractError, match="not encodable"):
        codec.encode(msgspec.structs.replace(slm, decision_tree={"z": 1j}))


def test_uuid7_matches_the_rfc_9562_test_vector() -> None:
    # RFC 9562 appendix A.6: unix_ts_ms 0x017F22E279B0, rand_a 0xCC3, rand_b 0x18C4DC0C0C07398F
    unix_ns = 0x017F22E279B0 * 1_000_000 + 797_608  # 797608 ns is 0xCC3 / 4096 of a ms
    value = uuid7_from(unix_ns, bytes.fromhex("18C4DC0C0C07398F"))
    assert value == "017f22e2-79b0-7cc3-98c4-dc0c0c07398f"


def test_new_event_ids_are_uuid7_with_the_current_time() -> None:
    before_ms = int(datetime.now(UTC).timestamp() * 1000)
    value = new_event_id()
    after_ms = int(datetime.now(UTC).timestamp() * 1000)
    parsed = uuid.UUID(value)
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
    assert str(parsed) == value
    assert re.search(EVENT_ID_PATTERN, value)
    assert before_ms - 1 <= parsed.int >> 80 <= after_ms + 1


def test_codec_event_ids_strictly_increase(codec: Codec) -> None:
    ids = [codec.new_event_id() for _ in range(20_000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert all(uuid.UUID(i).version == 7 for i in ids[::997])


def test_timestamps_are_utc_microseconds_with_z() -> None:
    now = utc_now_iso()
    assert re.search(UTC_TIMESTAMP_PATTERN, now)
    assert now.endswith("Z") and len(now) == len("2025-01-31T12:00:00.000000Z")
    paris = timezone(timedelta(hours=1))
    moment = datetime(2025, 1, 31, 13, 0, 0, 5, tzinfo=paris)
    assert format_timestamp(moment) == "2025-01-31T12:00:00.000005Z"
    with pytest.raises(ValueError, match="naive"):
        format_timestamp(datetime(2025, 1, 31))


def test_an_event_that_breaks_the_contract_can_still_be_kept_for_the_dead_letters(
    codec: Codec,
) -> None:
    """The gateway publishes such an event unchecked (a bug, or an upstream's figures): the
    consumer's decode then refuses it with the same reason, and dead-letters it."""
    event = msgspec.structs.replace(examples()[0], queue_delay_ms=-0.5)
    with pytest.raises(ContractError) as produced:
        codec.encode(event)
    data = codec.encode_unchecked(event)
    with pytest.raises(ContractError) as consumed:
        codec.decode(data)
    assert "queue_delay_ms" in produced.value.reason
    assert consumed.value.reason == produced.value.reason
