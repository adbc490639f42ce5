"""Query validation of GET /v1/telemetry/tokens and the escalation notice's number format."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from somaagent.domain.chat_request import RequestError
from somaagent.service.escalation_notice import format_usd_delta
from somaagent.service.usage_report import parse_usage_query

NOW = datetime(2026, 11, 22, 10, 30, tzinfo=UTC)


def test_defaults_cover_the_last_day_widened_to_whole_hours() -> None:
    q = parse_usage_query({}, tenant="acme", now=NOW)
    assert q.start == datetime(2026, 11, 21, 10, tzinfo=UTC)
    assert q.end == datetime(2026, 11, 22, 11, tzinfo=UTC)
    assert q.group_by == ("model",)


def test_filters_and_group_by_are_kept_in_order_without_duplicates() -> None:
    q = parse_usage_query(
        {
            "from": "2026-11-22T00:00:00Z",
            "to": "2026-11-22T02:00:00+00:00",
            "persona": "dev",
            "model": "m",
            "group_by": "persona,hour,persona",
        },
        tenant="acme",
        now=NOW,
    )
    assert (q.persona, q.model, q.group_by) == ("dev", "m", ("persona", "hour"))
    assert q.end == datetime(2026, 11, 22, 2, tzinfo=UTC)


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"from": "yesterday"}, "ISO 8601"),
        ({"from": "2026-11-22T00:00:00"}, "time zone"),
        ({"from": "2026-11-23T00:00:00Z", "to": "2026-11-22T00:00:00Z"}, "before"),
        ({"from": "2020-01-01T00:00:00Z"}, "400 days"),
        ({"group_by": "session"}, "cannot group by 'session'"),
        ({"tenantt": "x"}, "unknown query parameter"),
    ],
)
def test_bad_queries_are_400_with_a_message(params: dict[str, str], fragment: str) -> None:
    with pytest.raises(RequestError) as info:
        parse_usage_query(params, tenant="acme", now=NOW)
    assert info.value.status == 400
    assert fragment in info.value.message


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (Decimal("0.000004000000000001"), "+0.000004"),
        (Decimal("-0.0012"), "-0.0012"),
        (Decimal("0"), "+0"),
        (Decimal("12.5"), "+12.5"),
        (Decimal("0.0000000004"), "+0"),
    ],
)
def test_usd_delta_format(delta: Decimal, text: str) -> None:
    assert format_usd_delta(delta) == text
