"""GatewayMetrics and LabelGuard: names, labels, buckets, cardinality caps, pipeline stats."""

from __future__ import annotations

import threading
from decimal import Decimal

import prometheus_client
import pytest
from prometheus_client import CollectorRegistry

from somaagent.adapters.kafka_consumer import ConsumerStats
from somaagent.adapters.kafka_publisher import PublisherStats
from somaagent.observability import OTHER, GatewayMetrics, LabelGuard
from somaagent.service.worker import WorkerStats

# ExplicitBucketBoundaries written out from the OTel GenAI metrics conventions.
SEMCONV_BUCKETS: dict[str, list[float]] = {
    "gen_ai_client_token_usage": [1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576,
                                  4194304, 16777216, 67108864],
    "gen_ai_client_operation_duration_seconds": [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28,
                                                 2.56, 5.12, 10.24, 20.48, 40.96, 81.92],
    "gen_ai_server_time_to_first_token_seconds": [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,
                                                  0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0],
    "gen_ai_server_time_per_output_token_seconds": [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3,
                                                    0.4, 0.5, 0.75, 1.0, 2.5],
}  # fmt: skip
GEN_AI = {
    "gen_ai_operation_name": "chat",
    "gen_ai_provider_name": "openai",
    "gen_ai_request_model": "smollm2",
    "gen_ai_response_model": "smollm2-135m",
    "server_address": "127.0.0.1",
    "server_port": "18081",
}


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> GatewayMetrics:
    return GatewayMetrics(registry)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def ok_call(metrics: GatewayMetrics, **overrides: object) -> None:
    call: dict[str, object] = dict(
        tenant="acme", persona="coder", model="smollm2", tier="primary", status="ok",
        input_tokens=100, output_tokens=21, duration_s=1.2, cost_usd=Decimal("0.000125"),
        ttft_s=0.2, server_address="127.0.0.1", server_port=18081, response_model="smollm2-135m",
    )  # fmt: skip
    call.update(overrides)
    metrics.record_call(**call)  # type: ignore[arg-type]


# ---------------------------------------------------------------- LabelGuard


def test_label_guard_admits_up_to_the_cap_then_maps_to_other() -> None:
    overflowed: list[str] = []
    guard = LabelGuard({"tenant": 3}, on_overflow=overflowed.append)
    assert [guard("tenant", f"t{i}") for i in range(5)] == ["t0", "t1", "t2", OTHER, OTHER]
    assert guard("tenant", "t1") == "t1"  # admitted values stay admitted
    assert guard("tenant", "t4") == OTHER  # and late ones stay out
    assert guard.admitted("tenant") == {"t0", "t1", "t2"}
    assert overflowed == ["tenant"] * 3


def test_label_guard_counts_each_label_separately() -> None:
    guard = LabelGuard({"tenant": 1, "persona": 2}, default_limit=1)
    assert guard("tenant", "a") == "a"
    assert guard("persona", "a") == "a"
    assert guard("persona", "b") == "b"
    assert guard("persona", "c") == OTHER
    assert guard.limit("reason") == 50  # from the defaults
    assert guard.limit("unlisted") == 1
    assert guard("unlisted", "x") == "x"
    assert guard("unlisted", "y") == OTHER


def test_label_guard_passes_empty_and_other_and_cuts_long_values() -> None:
    guard = LabelGuard({"model": 1}, max_length=8)
    assert guard("model", None) == ""
    assert guard("model", "") == ""
    assert guard("model", OTHER) == OTHER
    assert guard.admitted("model") == frozenset()  # none of those used the one slot
    assert guard("model", "a-very-long-model-name") == "a-very-l"
    assert guard("model", "a-very-long-other-model") == "a-very-l"  # same cut: same series


def test_label_guard_cap_holds_under_concurrency() -> None:
    guard = LabelGuard({"tenant": 50})
    results: list[str] = []
    lock = threading.Lock()

    def worker(offset: int) -> None:
        out = [guard("tenant", f"t{offset + i}") for i in range(100)]
        with lock:
            results.extend(out)

    threads = [threading.Thread(target=worker, args=(n * 100,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(guard.admitted("tenant")) == 50
    assert set(results) - {OTHER} == guard.admitted("tenant")


def test_label_guard_rejects_negative_limits() -> None:
    with pytest.raises(ValueError):
        LabelGuard({"tenant": -1})


# ---------------------------------------------------------------- GenAI semconv


def test_record_call_emits_semconv_histograms(
    registry: CollectorRegistry, metrics: GatewayMetrics
) -> None:
    ok_call(metrics)
    tokens = "gen_ai_client_token_usage"
    assert value(registry, f"{tokens}_sum", **GEN_AI, gen_ai_token_type="input") == 100
    assert value(registry, f"{tokens}_sum", **GEN_AI, gen_ai_token_type="output") == 21
    assert value(registry, f"{tokens}_count", **GEN_AI, gen_ai_token_type="input") == 1
    duration = "gen_ai_client_operation_duration_seconds"
    assert value(registry, f"{duration}_sum", **GEN_AI, error_type="") == pytest.approx(1.2)
    assert value(registry, f"{duration}_bucket", **GEN_AI, error_type="", le="1.28") == 1
    assert value(registry, f"{duration}_bucket", **GEN_AI, error_type="", le="0.64") == 0
    ttft = "gen_ai_server_time_to_first_token_seconds"
    assert value(registry, f"{ttft}_sum", **GEN_AI) == pytest.approx(0.2)
    # (1.2 s - 0.2 s to the first token) / the 20 tokens after it
    tpot = "gen_ai_server_time_per_output_token_seconds"
    assert value(registry, f"{tpot}_sum", **GEN_AI) == pytest.approx(0.05)


def test_histogram_buckets_are_the_semconv_boundaries(
    registry: CollectorRegistry, metrics: GatewayMetrics
) -> None:
    ok_call(metrics)
    for family in registry.collect():
        if family.name in SEMCONV_BUCKETS:
            bounds = sorted(
                {float(s.labels["le"]) for s in family.samples if s.name.endswith("_bucket")}
            )
            assert bounds == [*SEMCONV_BUCKETS[family.name], float("inf")]


def test_explicit_time_per_output_token_wins(
    registry: CollectorRegistry, metrics: GatewayMetrics
) -> None:
    ok_call(metrics, time_per_output_token_s=0.031)
    tpot = "gen_ai_server_time_per_output_token_seconds_sum"
    assert value(registry, tpot, **GEN_AI) == pytest.approx(0.031)


def test_failed_call_sets_error_type_and_skips_success_only_metrics(
    registry: CollectorRegistry, metrics: GatewayMetrics
) -> None:
    ok_call(metrics, status="upstream_error", error_type="timeout", output_tokens=None)
    duration = "gen_ai_client_operation_duration_seconds_count"
    assert value(registry, duration, **GEN_AI, error_type="timeout") == 1
    assert value(registry, duration, **GEN_AI, error_type="") is None
    assert value(registry, "gen_ai_server_time_to_first_token_seconds_count", **GEN_AI) is None
    assert value(registry, "gen_ai_client_token_usage_count", **GEN_AI,
                 gen_ai_token_type="output") is None  # fmt: skip
    ok_call(metrics, status="upstream_error")  # no error class given: semconv's _OTHER
    assert value(registry, duration, **GEN_AI, error_type="_OTHER") == 1


def test_refused_request_counts_only_the_request(
    registry: CollectorRegistry, metrics: GatewayMetrics
) -> None:
    ok_call(metrics, status="refused", cost_usd=Decimal(0), input_tokens=None, output_tokens=None)
    labels = dict(tenant="acme", persona="coder", model="smollm2", tier="primary")
    assert value(registry, "soma_requests_total", **labels, status="refused") == 1
    names = {s.name for f in registry.collect() for s in f.samples}
    assert not any(n.startswith("gen_ai_") for n in names)
    assert value(registry, "soma_spend_usd_total", tenant="acme", persona="coder",
                 model="smollm2") is None  # fmt: skip


# ---------------------------------------------------------------- soma_* metrics


def test_spend_and_requests_by_tenant_persona_model(
    registry: CollectorRegistry, metrics: GatewayMetrics
) -> None:
    ok_call(metrics)
    ok_call(metrics, cost_usd=Decimal("0.000375"))
    spend = value(registry, "soma_spend_usd_total", tenant="acme", persona="coder", model="smollm2")
    assert spend == pytest.approx(0.0005)
    requests = value(registry, "soma_requests_total", tenant="acme", persona="coder",
                     model="smollm2", tier="primary", status="ok")  # fmt: skip
    assert requests == 2
    with pytest.raises(ValueError):
        ok_call(metrics, cost_usd=Decimal("-0.01"))


def test_tenants_past_the_cap_share_other_and_overflow_is_counted(
    registry: CollectorRegistry,
) -> None:
    metrics = GatewayMetrics(registry, label_limits={"tenant": 2})
    for tenant in ("a", "b", "c", "d"):
        ok_call(metrics, tenant=tenant)
    tenants = {
        s.labels["tenant"]
        for f in registry.collect()
        for s in f.samples
        if s.name == "soma_requests_total"
    }
    assert tenants == {"a", "b", OTHER}
    other = value(registry, "soma_requests_total", tenant=OTHER, persona="coder",
                  model="smollm2", tier="primary", status="ok")  # fmt: skip
    assert other == 2
    assert value(registry, "soma_metric_label_overflow_total", label="tenant") == 2  # one a call


def test_no_identifier_labels_anywhere(
    registry: CollectorRegistry, metrics: GatewayMetrics
) -> None:
    ok_call(metrics)
    metrics.record_policy("deny", 0.001)
    metrics.set_budget_remaining(tenant="acme", persona="-", window="day", ratio=0.5)
    metrics.collect_pipeline(worker_stats=WorkerStats(), consumer_stats=ConsumerStats())
    label_names = {label for f in registry.collect() for s in f.samples for label in s.labels}
    assert not {n for n in label_names if "session" in n or "trace" in n or n.endswith("_id")}


def test_budget_gauge_and_overflowed_budgets_show_the_lowest(
    registry: CollectorRegistry,
) -> None:
    metrics = GatewayMetrics(registry, label_limits={"tenant": 1})
    metrics.set_budget_remaining(tenant="acme", persona="-", window="day", ratio=0.5)
    metrics.set_budget_remaining(tenant="b", persona="-", window="day", ratio=0.4)
    metrics.set_budget_remaining(tenant="c", persona="-", window="day", ratio=0.1)
    metrics.set_budget_remaining(tenant="b", persona="-", window="day", ratio=0.3)
    gauge = "soma_budget_remaining_ratio"
    assert value(registry, gauge, tenant="acme", persona="-", window="day") == 0.5
    assert value(registry, gauge, tenant=OTHER, persona="-", window="day") == 0.1
    metrics.set_budget_remaining(tenant="c", persona="-", window="day", ratio=0.9)  # reset
    assert value(registry, gauge, tenant=OTHER, persona="-", window="day") == 0.3


def test_policy_escalation_fallback_audio_dependency(
    registry: CollectorRegistry, metrics: GatewayMetrics
) -> None:
    # Known values exist at 0 before anything happens, so rate() sees the first event.
    assert value(registry, "soma_policy_verdicts_total", verdict="require_approval") == 0
    assert value(registry, "soma_escalations_total", reason="length_fallback") == 0
    assert value(registry, "soma_audio_failures_total", reason="asr_error") == 0
    metrics.record_policy("deny", 0.0007)
    metrics.record_policy("made-up", 0.0001)
    metrics.record_escalation("high_risk")
    metrics.record_fallback("smollm2", "qwen")
    metrics.record_audio_failure("tts_error")
    metrics.set_dependency("kafka", False)
    assert value(registry, "soma_policy_verdicts_total", verdict="deny") == 1
    assert value(registry, "soma_policy_verdicts_total", verdict=OTHER) == 1
    assert value(registry, "soma_policy_latency_seconds_count") == 2
    assert value(registry, "soma_policy_latency_seconds_bucket", le="0.001") == 2
    assert value(registry, "soma_escalations_total", reason="high_risk") == 1
    assert value(registry, "soma_fallbacks_total", from_model="smollm2", to_model="qwen") == 1
    assert value(registry, "soma_audio_failures_total", reason="tts_error") == 1
    assert value(registry, "soma_dependency_up", component="kafka") == 0


# ---------------------------------------------------------------- pipeline stats


def test_collect_pipeline_reports_cumulative_stats_without_double_counting(
    registry: CollectorRegistry, metrics: GatewayMetrics
) -> None:
    publisher = PublisherStats(published=10, delivered=8, spooled=2, replayed=1,
                               delivery_failures=1, unspooled=3)  # fmt: skip
    worker = WorkerStats(batches=3, stored=25, duplicates=4, dead_letters=2, failures=1,
                         by_reason={"schema": 2})  # fmt: skip
    consumer = ConsumerStats(lag={"llm.escalation.metrics": 7, "slm.metrics": 0})
    for _ in range(3):  # however often it is called, the figures are the stats' own
        metrics.collect_pipeline(publisher_stats=publisher, spool_depth=2, worker_stats=worker,
                                 consumer_stats=consumer, spool_writable=False)  # fmt: skip
    events = "soma_publisher_events_total"
    expected = {"published": 10, "delivered": 8, "spooled": 2, "replayed": 1, "failed": 1,
                "unspooled": 3}  # fmt: skip
    for state, count in expected.items():
        assert value(registry, events, producer="gateway", state=state) == count
    assert value(registry, "soma_spool_depth", producer="gateway") == 2
    assert value(registry, "soma_spool_writable", producer="gateway") == 0
    assert value(registry, "soma_worker_batches_total") == 3
    assert value(registry, "soma_worker_stored_events_total") == 25
    assert value(registry, "soma_worker_duplicates_total") == 4
    assert value(registry, "soma_worker_dead_letters_total") == 2
    assert value(registry, "soma_worker_failures_total") == 1
    assert value(registry, "soma_dead_letters_total", reason="schema") == 2
    assert value(registry, "soma_consumer_lag_messages", topic="llm.escalation.metrics") == 7
    # The stats move on; the next scrape shows the new totals.
    worker.stored += 5
    consumer.lag["llm.escalation.metrics"] = 0
    metrics.collect_pipeline(worker_stats=worker, consumer_stats=consumer)
    assert value(registry, "soma_worker_stored_events_total") == 30
    assert value(registry, "soma_consumer_lag_messages", topic="llm.escalation.metrics") == 0
    # Sources not passed keep their last figures.
    assert value(registry, events, producer="gateway", state="published") == 10


def test_rebuilt_component_reads_as_a_counter_reset(
    registry: CollectorRegistry, metrics: GatewayMetrics
) -> None:
    metrics.collect_pipeline(worker_stats=WorkerStats(stored=100))
    metrics.collect_pipeline(worker_stats=WorkerStats(stored=3))
    assert value(registry, "soma_worker_stored_events_total") == 3


def test_dead_letters_without_a_reason_count_as_unknown(
    registry: CollectorRegistry, metrics: GatewayMetrics
) -> None:
    metrics.collect_pipeline(worker_stats=WorkerStats(dead_letters=5, by_reason={"schema": 2}))
    assert value(registry, "soma_dead_letters_total", reason="schema") == 2
    assert value(registry, "soma_dead_letters_total", reason="unknown") == 3


def test_producers_are_labelled(registry: CollectorRegistry, metrics: GatewayMetrics) -> None:
    metrics.collect_pipeline(publisher_stats=PublisherStats(published=1), spool_depth=0)
    metrics.collect_pipeline(
        publisher_stats=PublisherStats(published=4), spool_depth=3, producer="worker"
    )
    events = "soma_publisher_events_total"
    assert value(registry, events, producer="gateway", state="published") == 1
    assert value(registry, events, producer="worker", state="published") == 4
    assert value(registry, "soma_spool_depth", producer="worker") == 3


# ---------------------------------------------------------------- no global state


def test_instances_are_independent_and_the_global_registry_is_untouched() -> None:
    first, second = CollectorRegistry(), CollectorRegistry()
    a, b = GatewayMetrics(first), GatewayMetrics(second)
    ok_call(a)
    assert value(first, "soma_requests_total", tenant="acme", persona="coder", model="smollm2",
                 tier="primary", status="ok") == 1  # fmt: skip
    assert value(second, "soma_requests_total", tenant="acme", persona="coder",
                 model="smollm2", tier="primary", status="ok") is None  # fmt: skip
    assert b.registry is second
    global_names = {s.name for f in prometheus_client.REGISTRY.collect() for s in f.samples}
    assert not {n for n in global_names if n.startswith(("soma_", "gen_ai_"))}
    with pytest.raises(ValueError):  # one set per registry: a second would duplicate series
        GatewayMetrics(first)


def test_repeated_calls_reuse_their_series_and_overflow_still_counts_each_call(
    registry: CollectorRegistry,
) -> None:
    metrics = GatewayMetrics(registry, label_limits={"tenant": 1})
    for tenant in ("a", "a", "z", "z", "z"):
        ok_call(metrics, tenant=tenant)
    ok_call(metrics, tenant="a", status="upstream_error", error_type="timeout")
    requests = "soma_requests_total"
    common = dict(persona="coder", model="smollm2", tier="primary")
    assert value(registry, requests, tenant="a", **common, status="ok") == 2
    assert value(registry, requests, tenant=OTHER, **common, status="ok") == 3
    assert value(registry, requests, tenant="a", **common, status="upstream_error") == 1
    assert value(registry, "soma_metric_label_overflow_total", label="tenant") == 3
    duration = "gen_ai_client_operation_duration_seconds_count"
    assert value(registry, duration, **GEN_AI, error_type="") == 5
    assert value(registry, duration, **GEN_AI, error_type="timeout") == 1
