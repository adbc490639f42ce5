"""Every Prometheus metric the gateway and the worker expose, on a registry passed in.

Names follow the OpenTelemetry GenAI semantic conventions (v1.41) where one exists, translated
the way the OTel→Prometheus mapping does it: dots become underscores, the unit ``s`` becomes the
``_seconds`` suffix, an annotation unit such as ``{token}`` is dropped, and attribute keys become
label names with underscores (``gen_ai.token.type`` → ``gen_ai_token_type``). Bucket boundaries
are the ones the conventions recommend. The GenAI histograms carry only the semconv attributes
(model, provider, server): tenant and persona live on the ``soma_*`` counters, so a histogram
never multiplies its 15 buckets by the number of tenants.

Label values that come from outside (tenant, persona, model, reasons, topics) pass through a
:class:`LabelGuard`, so each label holds a bounded number of values. Session and trace ids are
never labels: they belong in logs, traces and the event store.

``soma_spend_usd_total`` is a float counter for dashboards and alerts; the exact spend, in
decimal, lives in the ClickHouse event store and the Postgres ledger.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from typing import Any, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from somaagent.domain.routing.selection import EscalationReason
from somaagent.observability._labels import OTHER, LabelGuard
from somaagent.observability._pipeline import (
    ConsumerStatsLike,
    PipelineCollector,
    PublisherStatsLike,
    WorkerStatsLike,
)
from somaagent.observability._slots import SlotsCollector, SlotsSnapshotLike

__all__ = [
    "AUDIO_FAILURE_REASONS",
    "ESCALATION_REASONS",
    "DURATION_BUCKETS",
    "POLICY_LATENCY_BUCKETS",
    "REFUSAL_VERDICTS",
    "TIME_PER_OUTPUT_TOKEN_BUCKETS",
    "TIME_TO_FIRST_TOKEN_BUCKETS",
    "TOKEN_BUCKETS",
    "VERDICTS",
    "GatewayMetrics",
]

# ExplicitBucketBoundaries from the GenAI metrics conventions.
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304,
                 16777216, 67108864)  # fmt: skip
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48,
                    40.96, 81.92)  # fmt: skip
TIME_TO_FIRST_TOKEN_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
                               1.0, 2.5, 5.0, 7.5, 10.0)  # fmt: skip
TIME_PER_OUTPUT_TOKEN_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
                                 1.0, 2.5)  # fmt: skip
# An in-process OPA evaluation takes well under a millisecond; a remote one a few.
POLICY_LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                          0.25, 0.5, 1.0)  # fmt: skip

# The verdict enum of ``policy.events.v1``; anything else is counted as ``other``.
VERDICTS = frozenset(
    {"allow", "block", "deny", "downgrade", "override", "pause", "require_approval", "warn"}
)
# Reasons the router records for a climb to the escalation tier (``selection.EscalationReason``
# plus an explicit request for that tier) and the audio failure classes.
ESCALATION_REASONS = (*get_args(EscalationReason), "requested")
AUDIO_FAILURE_REASONS = ("asr_error", "tts_error", "timeout", "quality")
# Verdicts that refuse the request as asked; the refusal-rate alert counts these.
REFUSAL_VERDICTS = frozenset({"block", "deny", "pause", "require_approval"})

_GEN_AI_LABELS = (
    "gen_ai_operation_name",
    "gen_ai_provider_name",
    "gen_ai_request_model",
    "gen_ai_response_model",
    "server_address",
    "server_port",
)


_SERIES_KEPT = 4096


class _CallSeries:
    """The guarded labels of one kind of call and the metric children used so far (a child
    is created on first use, as ``labels()`` would, so no empty series appears early)."""

    __slots__ = ("base", "children", "error", "overflowed", "request_labels")

    def __init__(self, request_labels: tuple[str, ...], base: tuple[str, ...], error: str) -> None:
        self.request_labels = request_labels
        self.base = base
        self.error = error
        self.overflowed = OTHER in request_labels or OTHER in base or error == OTHER
        self.children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def child(self, metric: Any, labels: tuple[str, ...]) -> Any:
        key = (id(metric), labels)
        found = self.children.get(key)
        if found is None:
            found = self.children[key] = metric.labels(*labels)
        return found


class GatewayMetrics:
    """The gateway's and worker's metrics, created on ``registry`` (never the global one).

    ``label_limits`` caps the distinct values per label (see :class:`LabelGuard`);
    ``escalation_reasons``, ``audio_failure_reasons`` and the verdicts are created at 0. The
    gateway calls the ``record_*``/``set_*`` methods, and ``collect_pipeline`` with the
    publisher/worker/consumer stats (best right before rendering ``/metrics``).
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        label_limits: Mapping[str, int] | None = None,
        escalation_reasons: Iterable[str] = ESCALATION_REASONS,
        audio_failure_reasons: Iterable[str] = AUDIO_FAILURE_REASONS,
    ) -> None:
        self.registry = registry
        r = registry
        self.label_overflow = Counter(
            "soma_metric_label_overflow_total",
            "Label values mapped to 'other' because the label reached its cardinality cap",
            ["label"],
            registry=r,
        )
        self.guard = LabelGuard(
            label_limits, on_overflow=lambda label: self.label_overflow.labels(label).inc()
        )
        self.token_usage = Histogram(
            "gen_ai_client_token_usage",
            "Number of input and output tokens used (OTel gen_ai.client.token.usage, {token})",
            [*_GEN_AI_LABELS, "gen_ai_token_type"],
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.operation_duration = Histogram(
            "gen_ai_client_operation_duration_seconds",
            "GenAI operation duration (OTel gen_ai.client.operation.duration)",
            [*_GEN_AI_LABELS, "error_type"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.time_to_first_token = Histogram(
            "gen_ai_server_time_to_first_token_seconds",
            "Time to generate the first token of a successful response, as the gateway sees it "
            "(OTel gen_ai.server.time_to_first_token)",
            list(_GEN_AI_LABELS),
            buckets=TIME_TO_FIRST_TOKEN_BUCKETS,
            registry=r,
        )
        self.time_per_output_token = Histogram(
            "gen_ai_server_time_per_output_token_seconds",
            "Time per output token after the first, for successful responses "
            "(OTel gen_ai.server.time_per_output_token)",
            list(_GEN_AI_LABELS),
            buckets=TIME_PER_OUTPUT_TOKEN_BUCKETS,
            registry=r,
        )
        self.spend = Counter(
            "soma_spend_usd_total",
            "Spend in US dollars (float, for dashboards; the exact decimal ledger is in "
            "ClickHouse/Postgres)",
            ["tenant", "persona", "model"],
            registry=r,
        )
        self.budget_remaining = Gauge(
            "soma_budget_remaining_ratio",
            "Fraction of the budget left in the window (1 = untouched, <= 0 = exhausted)",
            ["tenant", "persona", "window"],
            registry=r,
        )
        self.requests = Counter(
            "soma_requests_total",
            "Gateway requests by outcome (status: ok, refused, or an error class)",
            ["tenant", "persona", "model", "tier", "status"],
            registry=r,
        )
        self.policy_verdicts = Counter(
            "soma_policy_verdicts_total", "Policy decisions by verdict", ["verdict"], registry=r
        )
        self.policy_reuses = Counter(
            "soma_policy_verdict_reuses_total",
            "Policy decisions answered by a verdict the policy declared reusable (no evaluation)",
            registry=r,
        )
        self.policy_latency = Histogram(
            "soma_policy_latency_seconds",
            "Time to reach a policy decision",
            buckets=POLICY_LATENCY_BUCKETS,
            registry=r,
        )
        self.rate_limited = Counter(
            "soma_rate_limited_total",
            "Requests refused by their API key's rate limit (limit: requests, tokens, too_large)",
            ["tenant", "limit"],
            registry=r,
        )
        self.model_rate_limited = Counter(
            "soma_model_rate_limited_total",
            "Attempts a model's own rate limit (catalog rate_limits: its provider's quota) kept"
            " back; the call went to the next candidate (limit: requests, tokens, too_large)",
            ["model", "limit"],
            registry=r,
        )
        self.escalations = Counter(
            "soma_escalations_total",
            "Requests sent up to the escalation tier",
            ["reason"],
            registry=r,
        )
        self.fallbacks = Counter(
            "soma_fallbacks_total",
            "Upstream calls retried on another model after a failure",
            ["from_model", "to_model"],
            registry=r,
        )
        self.audio_failures = Counter(
            "soma_audio_failures_total",
            "Failed audio operations (ASR/TTS)",
            ["reason"],
            registry=r,
        )
        self.dependency_up = Gauge(
            "soma_dependency_up",
            "1 when the dependency answered its last health probe",
            ["component"],
            registry=r,
        )
        # Known label values start at 0, so rate() and increase() see their first event.
        for verdict in VERDICTS:
            self.policy_verdicts.labels(verdict)
        for reason in escalation_reasons:
            self.escalations.labels(self.guard("reason", reason))
        for reason in audio_failure_reasons:
            self.audio_failures.labels(self.guard("reason", reason))
        self._pipeline = PipelineCollector(self.guard)
        r.register(self._pipeline)
        self._budget_lock = threading.Lock()
        self._call_series: dict[tuple[object, ...], _CallSeries] = {}
        self._overflowed_budgets: dict[tuple[str, str, str], dict[tuple[str, str, str], float]] = {}

    # ------------------------------------------------------------------ requests
    def record_call(
        self,
        *,
        tenant: str,
        persona: str,
        model: str,
        tier: str,
        status: str,
        input_tokens: int | None,
        output_tokens: int | None,
        duration_s: float,
        cost_usd: Decimal,
        ttft_s: float | None = None,
        time_per_output_token_s: float | None = None,
        provider: str = "openai",
        operation: str = "chat",
        response_model: str | None = None,
        server_address: str | None = None,
        server_port: int | None = None,
        error_type: str | None = None,
    ) -> None:
        """Record one gateway request and, unless it was refused, its upstream call.

        ``status`` is ``"ok"`` for a success, ``"refused"`` for a policy or budget refusal
        (no upstream call: only ``soma_requests_total`` moves; success % leaves these out),
        anything else an error class. ``model`` is the model the gateway called
        (``gen_ai.request.model``). Token counts of ``None`` mean unknown and are not
        recorded. TTFT and time per output token are recorded for successes only; the latter
        is derived as ``(duration - ttft) / (output_tokens - 1)`` when not given.
        """
        if cost_usd < 0:
            raise ValueError(f"negative cost {cost_usd}")
        key: tuple[object, ...] = (tenant, persona, model, tier, status, operation, provider)
        key += (response_model, server_address, server_port, error_type)
        series = self._call_series.get(key)
        if series is None:
            series = self._series(key)
            if not series.overflowed:  # an overflowed label is guarded (and counted) each time
                if len(self._call_series) >= _SERIES_KEPT:
                    self._call_series.clear()
                self._call_series[key] = series
        series.child(self.requests, series.request_labels).inc()
        if cost_usd > 0:
            series.child(self.spend, series.request_labels[:3]).inc(float(cost_usd))
        if status == "refused":
            return
        base = series.base
        if input_tokens is not None:
            series.child(self.token_usage, (*base, "input")).observe(input_tokens)
        if output_tokens is not None:
            series.child(self.token_usage, (*base, "output")).observe(output_tokens)
        series.child(self.operation_duration, (*base, series.error)).observe(duration_s)
        if status != "ok" or ttft_s is None:
            return
        series.child(self.time_to_first_token, base).observe(ttft_s)
        tpot = time_per_output_token_s
        if tpot is None and output_tokens is not None and output_tokens > 1:
            tpot = (duration_s - ttft_s) / (output_tokens - 1)
        if tpot is not None and tpot >= 0:
            series.child(self.time_per_output_token, base).observe(tpot)

    def _series(self, key: tuple[object, ...]) -> _CallSeries:
        """The guarded labels of one kind of call (``key`` as ``record_call`` builds it)."""
        tenant, persona, model, tier, status, operation, provider, response_model = key[:8]
        server_address, server_port, error_type = key[8:]
        g = self.guard
        model_label = g("model", model)
        request_labels = (
            g("tenant", tenant),
            g("persona", persona),
            model_label,
            g("tier", tier),
            g("status", status),
        )
        base = (
            g("gen_ai_operation_name", operation),
            g("gen_ai_provider_name", provider),
            model_label,
            g("model", response_model),
            g("server_address", server_address),
            "" if server_port is None else str(server_port),
        )
        error = g("error_type", error_type or "_OTHER") if status != "ok" else ""
        return _CallSeries(request_labels, base, error)

    def record_policy(self, verdict: str, latency_s: float, *, reused: bool = False) -> None:
        """Count a policy decision, how long it took and whether it was a reused verdict;
        unknown verdicts count as ``other``."""
        self.policy_verdicts.labels(verdict if verdict in VERDICTS else OTHER).inc()
        self.policy_latency.observe(latency_s)
        if reused:
            self.policy_reuses.inc()

    def record_rate_limited(self, tenant: str, limit: str) -> None:
        """Count a request refused by its key's rate limit."""
        self.rate_limited.labels(self.guard("tenant", tenant), limit).inc()

    def record_model_rate_limited(self, model: str, limit: str) -> None:
        """Count an attempt a model's own rate limit (its provider's quota) kept back."""
        self.model_rate_limited.labels(self.guard("model", model), limit).inc()

    def record_escalation(self, reason: str) -> None:
        """Count a request routed up to the escalation tier."""
        self.escalations.labels(self.guard("reason", reason)).inc()

    def record_fallback(self, from_model: str, to_model: str) -> None:
        """Count an upstream call retried on ``to_model`` after ``from_model`` failed."""
        self.fallbacks.labels(self.guard("model", from_model), self.guard("model", to_model)).inc()

    def record_audio_failure(self, reason: str) -> None:
        """Count a failed audio operation (``asr_error``, ``tts_error``, ``quality``...)."""
        self.audio_failures.labels(self.guard("reason", reason)).inc()

    def set_dependency(self, component: str, up: bool) -> None:
        """Publish the last health-probe result for ``component``."""
        self.dependency_up.labels(self.guard("component", component)).set(1 if up else 0)

    def set_budget_remaining(self, *, tenant: str, persona: str, window: str, ratio: float) -> None:
        """Publish the fraction of a budget left (``persona`` ``"-"`` for a tenant-wide budget).

        Budgets whose labels overflowed share one ``other`` series, which shows the lowest
        ratio among them, so an exhausted budget past the cardinality cap still alerts.
        """
        key = (tenant, persona, window)
        g = self.guard
        labels = (g("tenant", tenant), g("persona", persona), g("window", window))
        value = ratio
        if labels != key:
            with self._budget_lock:
                members = self._overflowed_budgets.setdefault(labels, {})
                members[key] = ratio
                value = min(members.values())
        self.budget_remaining.labels(*labels).set(value)

    def watch_slots(self, read: Callable[[], Mapping[str, SlotsSnapshotLike]]) -> None:
        """Report the upstreams' concurrency (``read``: model id -> its slots' snapshot) at
        every scrape."""
        self.registry.register(SlotsCollector(read, self.guard))

    # ------------------------------------------------------------------ pipeline
    def collect_pipeline(
        self,
        *,
        publisher_stats: PublisherStatsLike | None = None,
        spool_depth: int | None = None,
        worker_stats: WorkerStatsLike | None = None,
        consumer_stats: ConsumerStatsLike | None = None,
        producer: str = "gateway",
        spool_writable: bool | None = None,
    ) -> None:
        """Take the current publisher, spool, worker and consumer figures for the next scrape.

        The stats objects hold cumulative counts; they are reported as they are (see
        ``_pipeline``), so calling this often or rarely never double-counts. A source left
        ``None`` keeps its previous values (a gateway without a worker passes none).
        """
        self._pipeline.update(
            producer=producer,
            publisher=publisher_stats,
            spool_depth=spool_depth,
            worker=worker_stats,
            consumer=consumer_stats,
            spool_writable=spool_writable,
        )
