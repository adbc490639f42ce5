"""``recompute`` and ``soma cost recompute`` over real events in chDB, priced by rate cards
stored in the stack's PostgreSQL.

Events are priced with ``call_cost`` the way the gateway prices them, go through the real
pipeline (spool -> Kafka -> worker -> chDB), and are recomputed from what ClickHouse stored.
"""

from __future__ import annotations

import json
import os
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from pydantic import SecretStr

from somaagent.adapters.ratecards_store import RateCardStore
from somaagent.domain.events import EscalationInvocation, Event, Money, SlmMetrics
from somaagent.domain.pricing import call_cost
from somaagent.domain.ratecards import RateBook, default_ratecards_text, parse_ratecards
from somaagent.service.cost_recompute import Mismatch, UnknownVersion, recompute
from somaagent.settings import Settings
from tests.integration.telemetry_support import fresh, running_worker, wait_until
from tests.integration.test_ratecards_store import soma
from tests.integration.test_telemetry_pipeline import publish
from tests.unit.domain._event_examples import examples

# (version, gpu_ms): awkward floats, including one no gateway would write (not rounded to
# microseconds) and the largest the contract allows, to prove the float round trip exact.
GPU_CALLS = [
    ("v1", 1234.567),
    ("v1", 0.001),
    ("v2", 98765.432),
    ("v2", 3.3),
    ("v1", 1000 / 3),
    ("v2", 0.0),
    ("v2", 86_400_000.0),
]
# (input, output, cached) tokens for the per-1K model.
TOKEN_CALLS = [(1830, 512, 64), (1, 0, 0), (9_999_999, 9_999_999, 5_000_000), (0, 0, 0)]


def cards(tag: str) -> str:
    return f"""
version: 1
cards:
  - version: "v1"
    effective_from: "2026-10-01T00:00:00Z"
    models:
      {tag}-gpu: {{gpu_hour_usd: "0.10", gpus: 2, max_ms_per_token: "250"}}
      {tag}-tok: {{input_per_1k: "0.0006", output_per_1k: "0.0018", cached_input_per_1k: "0.00015"}}
  - version: "v2"
    effective_from: "2026-11-01T00:00:00Z"
    models:
      {tag}-gpu: {{gpu_hour_usd: "0.37", gpus: 1, max_ms_per_token: "250"}}
"""  # noqa: E501


def priced_events(tag: str, session: str, book: RateBook) -> list[Event]:
    slm = next(e for e in examples() if isinstance(e, SlmMetrics))
    esc = next(e for e in examples() if isinstance(e, EscalationInvocation))
    events: list[Event] = []
    for version, gpu_ms in GPU_CALLS:
        entry = book.get(f"{tag}-gpu", version)
        assert entry is not None
        cost = call_cost(entry.pricing, input_tokens=40, output_tokens=12, cached_tokens=0,
                         gpu_ms=gpu_ms)  # fmt: skip
        events.append(
            fresh(
                slm,
                session,
                model_id=f"{tag}-gpu",
                rate_card_version=version,
                input_tokens=40,
                output_tokens=12,
                total_tokens=52,
                cached_tokens=0,
                gpu_ms=gpu_ms,
                cost_usd=Money(cost),
            )  # fmt: skip
        )
    entry = book.get(f"{tag}-tok", "v1")
    assert entry is not None
    for tokens_in, tokens_out, cached in TOKEN_CALLS:
        cost = call_cost(entry.pricing, input_tokens=tokens_in, output_tokens=tokens_out,
                         cached_tokens=cached, gpu_ms=5.5)  # fmt: skip
        events.append(
            fresh(
                esc,
                session,
                model_id=f"{tag}-tok",
                rate_card_version="v1",
                input_tokens=tokens_in,
                output_tokens=tokens_out,
                total_tokens=tokens_in + tokens_out,
                cached_tokens=cached,
                gpu_ms=5.5,
                cost_usd=Money(cost),
            )  # fmt: skip
        )
    return events


def test_recompute_finds_no_difference_then_exactly_the_altered_row(
    stack: Settings, dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    tag = f"rc-{uuid.uuid4().hex[:10]}"
    session = f"recompute-{tag}"
    store = RateCardStore(dsn)
    store.load(parse_ratecards(cards(tag), source="test"))
    book = store.book()
    start = datetime.now(UTC) - timedelta(minutes=1)
    end = start + timedelta(minutes=30)
    events = priced_events(tag, session, book)
    costs = {e.event_id: e.cost_usd for e in events}  # type: ignore[attr-defined]
    assert len(set(costs.values())) == len(events) - 1  # two zero-cost calls, else distinct

    with running_worker(stack) as container:
        assert container.worker is not None
        ch = container.worker.store
        db = ch.database

        def stored(n: int) -> bool:
            where = f"session_id = '{session}'"
            return (
                ch.count(f"{db}.slm_metrics", where) + ch.count(f"{db}.escalation_metrics", where)
                == n
            )

        publish(container, events)
        assert wait_until(lambda: stored(len(events)))

        report = recompute(ch.query, book, start=start, end=end, database=db, page_size=2)
        assert report.ok, report.to_dict()
        assert report.rows_checked == len(events)
        assert report.stored_total == report.recomputed_total == sum(costs.values())
        assert dict(report.rows_by_version) == {"v1": 7, "v2": 4}
        whole = recompute(ch.query, book, start=start, end=end, database=db)
        assert whole == report  # one page or eleven: the same answer

        # Alter one stored cost; add a call that names a version no card has.
        victim = events[4]  # gpu_ms 1000/3 under v1
        ch.driver.command(
            f"ALTER TABLE {db}.slm_metrics UPDATE cost_usd = toDecimal128('0.5', 18)"
            f" WHERE event_id = toUUID('{victim.event_id}') SETTINGS mutations_sync = 1"
        )
        stray = fresh(events[0], session, rate_card_version="v-missing")
        publish(container, [stray])
        assert wait_until(lambda: stored(len(events) + 1))

        report = recompute(ch.query, book, start=start, end=end, database=db, page_size=3)
        assert report.mismatches == (
            Mismatch(victim.event_id, "slm.metrics", f"{tag}-gpu", "v1", Decimal("0.5"),
                     costs[victim.event_id]),
        )  # fmt: skip
        assert report.unknown_versions == (
            UnknownVersion(stray.event_id, "slm.metrics", f"{tag}-gpu", "v-missing",
                           stray.cost_usd),  # type: ignore[attr-defined]
        )  # fmt: skip
        assert (report.differences, report.ok, report.rows_checked) == (2, False, 12)
        expected_stored = sum(costs.values()) - costs[victim.event_id] + Decimal("0.5")
        assert report.stored_total == expected_stored + stray.cost_usd  # type: ignore[attr-defined]
        assert report.recomputed_total == sum(costs.values())

        later = recompute(ch.query, book, start=end, end=end + timedelta(hours=1), database=db)
        assert (later.rows_checked, later.ok) == (0, True)

        # While this process holds the chDB path, the CLI cannot open it, and says why.
        window = ["--from", start.isoformat(), "--to", end.isoformat()]
        assert soma(container.settings, "cost", "recompute", *window) == 2
        err = capsys.readouterr().err
        assert f"is held by process {os.getpid()}" in err and err.count("\n") == 1

    # The worker has let go of the path: the CLI opens it and finds the same two rows.
    cli_finds_the_two_rows(container.settings, window, victim, stray, costs, capsys)


def cli_finds_the_two_rows(
    settings: Settings,
    window: list[str],
    victim: Event,
    stray: Event,
    costs: dict[str, Decimal],
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert soma(settings, "cost", "recompute", *window, "--json") == 1
    out = json.loads(capsys.readouterr().out)
    assert (out["rows_checked"], out["mismatch_count"], out["unknown_version_count"]) == (12, 1, 1)
    model = victim.model_id  # type: ignore[attr-defined]
    assert out["mismatches"] == [
        {
            "event_id": victim.event_id,
            "event_type": "slm.metrics",
            "model_id": model,
            "rate_card_version": "v1",
            "stored_usd": "0.500000000000000000",
            "recomputed_usd": format(costs[victim.event_id], "f"),
        }
    ]
    assert [u["event_id"] for u in out["unknown_versions"]] == [stray.event_id]
    assert soma(settings, "cost", "recompute", *window) == 1
    text = capsys.readouterr().out
    assert f"MISMATCH {victim.event_id} {model}@v1: stored 0.500000000000000000" in text
    assert f"UNKNOWN  {stray.event_id} {model}@v-missing" in text


def test_cli_recompute_refuses_what_it_cannot_check(
    stack: Settings, dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    RateCardStore(dsn).load(parse_ratecards(default_ratecards_text(), source="packaged"))
    empty = stack.model_copy(update={"clickhouse_path": stack.state_dir / "no-such-store"})
    assert soma(empty, "cost", "recompute", "--from", "2026-11-01", "--to", "2026-11-02") == 2
    assert "no telemetry store at" in capsys.readouterr().err
    assert soma(empty, "cost", "recompute", "--from", "2026-11-02", "--to", "2026-11-01") == 2
    assert "--from must be before --to" in capsys.readouterr().err
    down = stack.model_copy(
        update={"clickhouse_driver": "server", "clickhouse_url": SecretStr("http://127.0.0.1:1")}
    )
    assert soma(down, "cost", "recompute", "--from", "2026-11-01", "--to", "2026-11-02") == 2
    err = capsys.readouterr().err
    assert err.startswith("soma: error: cannot open the ClickHouse server: ")
    assert err.count("\n") == 1
    with pytest.raises(SystemExit):  # argparse: not a date
        soma(empty, "cost", "recompute", "--from", "yesterday", "--to", "2026-11-01")
    assert "is not an ISO 8601 date" in capsys.readouterr().err
