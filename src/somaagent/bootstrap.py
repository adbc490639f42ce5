"""The one place that turns :class:`Settings` into live adapters.

Nothing in the package opens a connection at import time; entrypoints call
:func:`bootstrap` with the settings they were given, and :meth:`Container.close` releases
everything.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

from prometheus_client import CollectorRegistry

from somaagent.adapters import http_probe, kafka, postgres, redis_store, vault
from somaagent.adapters.api_keys import ApiKeyStore
from somaagent.adapters.approvals import ApprovalStore
from somaagent.adapters.budget_store import BudgetStore, ChargeWriter
from somaagent.adapters.clickhouse import open_driver
from somaagent.adapters.clickhouse_schema import ClusterSpec, Retention
from somaagent.adapters.dead_letters import KafkaDeadLetterSink
from somaagent.adapters.kafka_consumer import TelemetryConsumer
from somaagent.adapters.kafka_publisher import KafkaPublisher
from somaagent.adapters.opa import (
    InProcessPolicyEngine,
    PolicyUnavailable,
    RestPolicyEngine,
    constitution_hash,
    load_policy_bundle,
)
from somaagent.adapters.postgres_summaries import SessionSummaryStore
from somaagent.adapters.ratecards_store import RateCardStore
from somaagent.adapters.redis_budget import RedisBudgetCounters
from somaagent.adapters.redis_rate_limit import RateLimitUnavailable, RedisRateLimiter
from somaagent.adapters.spool import Spool
from somaagent.adapters.telemetry_store import ClickHouseTelemetryStore
from somaagent.adapters.upstream import UpstreamClient, UsageCounter
from somaagent.domain.events import Codec
from somaagent.domain.identity import Caller
from somaagent.domain.ratecards import (
    RateBook,
    RateCardError,
    default_ratecards_text,
    parse_ratecards,
)
from somaagent.domain.routing import (
    BreakerConfig,
    Catalog,
    CircuitBreaker,
    ClassifierConfig,
    ModelEntry,
    RouterFlags,
    default_catalog_text,
    load_catalog,
    render_catalog,
)
from somaagent.domain.routing.retry import RetryPolicy
from somaagent.observability import GatewayMetrics
from somaagent.observability.tracing import Tracing, build_tracing
from somaagent.service.admission import Gatekeeper
from somaagent.service.budgets import BudgetService
from somaagent.service.chat import ChatService, Upstream
from somaagent.service.health import HealthCheck
from somaagent.service.ingest import Ingestor
from somaagent.service.model_stats import ModelStatsCache
from somaagent.service.rate_limits import RateGate
from somaagent.service.upstream_slots import UpstreamSlots
from somaagent.service.verdict_cache import VerdictCache
from somaagent.service.worker import DaemonThreads, WorkerStats, run_worker
from somaagent.settings import Settings

__all__ = [
    "Container",
    "WorkerRuntime",
    "bootstrap",
    "build_publisher",
    "build_store",
    "build_worker",
    "health_checks",
]

log = logging.getLogger("somaagent.bootstrap")


def health_checks(settings: Settings) -> dict[str, HealthCheck]:
    """A real round-trip probe for every dependency of the gateway, keyed by component."""
    t = settings.health_timeout_s
    return {
        "kafka": partial(kafka.ping, settings.url("kafka_bootstrap"), t),
        "redis": partial(redis_store.ping, settings.url("redis_url"), t),
        "postgres": partial(postgres.ping, settings.secret("postgres_dsn"), t),
        "vault": partial(vault.ping, settings.url("vault_addr"), settings.secret("vault_token"), t),
        "prometheus": partial(http_probe.get_ok, settings.url("prometheus_url") + "/-/ready", t),
        "alertmanager": partial(
            http_probe.get_ok, settings.url("alertmanager_url") + "/-/ready", t
        ),
        "model-primary": partial(
            http_probe.get_ok, settings.url("primary_model_url") + "/models", t
        ),
        "model-escalation": partial(
            http_probe.get_ok, settings.url("escalation_model_url") + "/models", t
        ),
    }


def spool_health(publisher: KafkaPublisher) -> str:
    """The spool's state for ``/healthz``; unhealthy while its file system refuses writes."""
    if publisher.spool_error is not None:
        raise OSError(f"spool not writable: {publisher.spool_error}; {publisher.held} held")
    return f"writable, {publisher.spool.depth} records not yet delivered"


def build_publisher(settings: Settings, name: str | None = None) -> KafkaPublisher:
    """The durable event publisher of this process (its spool is ``<spool_dir>/<name>``)."""
    assert settings.spool_dir is not None
    spool = Spool(settings.spool_dir / (name or settings.producer_name))
    return KafkaPublisher(
        bootstrap=settings.url("kafka_bootstrap"),
        spool=spool,
        client_id=f"somaagent-{name or settings.producer_name}",
        message_timeout_ms=settings.publisher_message_timeout_ms,
    )


def build_store(settings: Settings) -> ClickHouseTelemetryStore:
    url = settings.clickhouse_url.get_secret_value() if settings.clickhouse_url else None
    driver = open_driver(
        settings.clickhouse_driver or "chdb", path=settings.clickhouse_path, url=url
    )
    r = settings.retention
    return ClickHouseTelemetryStore(
        driver,
        database=settings.clickhouse_database,
        retention=Retention(r.metrics_days, r.dead_letters_days, r.hourly_aggregates_days),
        cluster=ClusterSpec(settings.clickhouse_cluster) if settings.clickhouse_cluster else None,
    )


@dataclass
class WorkerRuntime:
    """The telemetry worker's adapters and its thread."""

    settings: Settings
    store: ClickHouseTelemetryStore
    summaries: SessionSummaryStore
    consumer: TelemetryConsumer
    ingestor: Ingestor
    stats: WorkerStats = field(default_factory=WorkerStats)
    stop_event: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    # ``soma worker``: the process is the worker's own, so it may run the collector itself.
    owns_process: bool = False

    def start(self) -> None:
        self.consumer.start()
        self.thread = threading.Thread(target=self.run, name="telemetry-worker", daemon=True)
        self.thread.start()

    def _write_thread(self) -> bool:
        """``worker_write_thread``, or by default: a process of its own with two cores."""
        if self.settings.worker_write_thread is not None:
            return self.settings.worker_write_thread
        return self.owns_process and len(os.sched_getaffinity(0)) >= 2

    def run(self) -> None:
        if self.settings.worker_thread_nice:
            # Linux nice values are per thread: only this one is lowered, relative to the
            # process's own (and the writer threads it starts, which inherit it).
            tid = threading.get_native_id()
            with contextlib.suppress(OSError):
                nice = os.getpriority(os.PRIO_PROCESS, tid) + self.settings.worker_thread_nice
                os.setpriority(os.PRIO_PROCESS, tid, min(19, nice))
        after_flush = None
        if self.owns_process:
            # A round of batches is tens of thousands of objects that live until the round
            # ends and then die by reference count, yet every young collection on the way
            # traverses them (a second of a 100,000-event run). So the collector is off, and
            # one collection runs after each round, over what is left: the start-up heap is
            # frozen out of it.
            gc.freeze()
            gc.disable()
            after_flush = gc.collect
        writer = DaemonThreads("telemetry-writer") if self._write_thread() else None
        try:
            run_worker(
                self.consumer,
                self.ingestor,
                self.stop_event,
                stats=self.stats,
                max_batch=self.settings.worker_max_batch,
                max_wait_s=self.settings.worker_max_wait_s,
                after_flush=after_flush,
                writer=writer,
            )
        finally:
            if self.owns_process:
                gc.enable()

    def stop(self) -> None:
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(timeout=30)
        self.consumer.close()
        self.summaries.close()
        self.store.driver.close()


def build_worker(settings: Settings, publisher: KafkaPublisher, codec: Codec) -> WorkerRuntime:
    """Prepare schema and topics, then the consumer and the ingest service.

    PostgreSQL migrations must have run (``bootstrap`` does that once per process).
    """
    dsn = settings.secret("postgres_dsn")
    topics = settings.topics
    event_topics = list(topics.event_type_for_topic())
    kafka.ensure_topics(
        settings.url("kafka_bootstrap"),
        [*event_topics, topics.dead_letter],
        settings.kafka_partitions,
    )
    store = build_store(settings)
    store.ensure_schema()
    summaries = SessionSummaryStore(dsn)
    type_for_topic = topics.event_type_for_topic()

    def batch_ends(topic: str, topic_id: str) -> dict[int, int]:
        return store.batch_ends(store.table(type_for_topic[topic]), topic_id)

    consumer = TelemetryConsumer(
        bootstrap=settings.url("kafka_bootstrap"),
        group_id=settings.worker_group,
        topics=event_topics,
        batch_ends=batch_ends,
    )
    ingestor = Ingestor(
        codec=codec,
        store=store,
        summaries=summaries,
        dead_letters=KafkaDeadLetterSink(publisher, topics.dead_letter),
        event_type_for_topic=type_for_topic,
    )
    return WorkerRuntime(settings, store, summaries, consumer, ingestor)


def build_catalog(settings: Settings) -> Catalog:
    """The model catalog YAML (packaged default or ``catalog_file``) with endpoints filled."""
    text = settings.catalog_file.read_text() if settings.catalog_file else default_catalog_text()
    values = {
        "PRIMARY_MODEL_URL": settings.url("primary_model_url"),
        "ESCALATION_MODEL_URL": settings.url("escalation_model_url"),
        "MODEL_PARALLEL": str(settings.model_parallel),
    }
    return load_catalog(render_catalog(text, values))


def build_rates(settings: Settings, catalog: Catalog) -> RateBook:
    """The rate cards from Postgres; the shipped (or configured) file is loaded when none is.

    Every live model must be priced: an unpriced one is a start-up error, never a $0 call.
    """
    store = RateCardStore(settings.secret("postgres_dsn"))
    book = store.book()
    if len(book) == 0:
        path = settings.ratecards_file
        text = path.read_text() if path else default_ratecards_text()
        report = store.load(parse_ratecards(text, source=str(path or "ratecards.default.yaml")))
        log.info("rate cards loaded: %s new version(s)", report.inserted)
        book = store.book()
    now = datetime.now(UTC)
    unpriced = [e.model_id for e in catalog.live() if book.current(e.model_id, now) is None]
    if unpriced:
        raise RateCardError(
            f"no rate card in effect prices {', '.join(unpriced)}; load one with"
            " `soma ratecards load FILE`"
        )
    return book


def build_chat(
    settings: Settings,
    publisher: KafkaPublisher,
    codec: Codec,
    stats: ModelStatsCache,
    metrics: GatewayMetrics,
    tracing: Tracing,
) -> ChatService:
    catalog = build_catalog(settings)
    rates = build_rates(settings, catalog)
    upstreams = {}
    for entry in catalog.live():
        assert entry.base_url is not None
        client = UpstreamClient(entry.base_url)
        upstreams[entry.model_id] = Upstream(
            entry=entry,
            client=client,
            counter=UsageCounter(client),
            breaker=CircuitBreaker(BreakerConfig()),
            slots=UpstreamSlots(entry.concurrency) if entry.concurrency else None,
        )
    capped = {m: u.slots for m, u in upstreams.items() if u.slots is not None}
    metrics.watch_slots(lambda: {m: slots.snapshot() for m, slots in capped.items()})
    return ChatService(
        catalog=catalog,
        upstreams=upstreams,
        publisher=publisher,
        codec=codec,
        topic_for_event_type=settings.topics.topic_for_event_type(),
        flags=RouterFlags(
            escalation_enabled=settings.escalation_enabled,
            escalation_fallback_enabled=settings.escalation_fallback_enabled,
            slm_enabled=settings.slm_enabled,
        ),
        classifier=ClassifierConfig(),
        deployment_mode=settings.profile.value,
        rates=rates,
        upstream_timeout_s=settings.upstream_timeout_s,
        retry=RetryPolicy(
            retries=settings.upstream_retries,
            backoff_s=settings.upstream_retry_backoff_ms / 1000,
        ),
        stats=stats.get,
        metrics=metrics,
        tracing=tracing,
    )


def build_rate_gate(settings: Settings, metrics: GatewayMetrics) -> RateGate:
    """API keys' rate limits, in Redis (a caller without limits never reaches it)."""
    limiter = RedisRateLimiter(
        settings.url("redis_url"),
        window_s=settings.rate_limit_window_s,
        hold_s=settings.rate_limit_hold_s,
        defer_s=settings.budget_settle_defer_ms / 1000,
    )
    return RateGate(
        limiter,
        unavailable=(RateLimitUnavailable,),
        on_refused=lambda caller, limit: metrics.record_rate_limited(caller.tenant, limit),
        on_model_refused=metrics.record_model_rate_limited,
        close=limiter.aclose,
    )


def build_gate(
    settings: Settings,
    chat: ChatService,
    approvals: ApprovalStore,
    metrics: GatewayMetrics,
    tracing: Tracing,
) -> Gatekeeper:
    """Budgets (Redis + Postgres), the policy engine (OPA) and the approvals queue."""
    dsn = settings.secret("postgres_dsn")
    store = BudgetStore(dsn)
    counters = RedisBudgetCounters(
        settings.url("redis_url"), defer_s=settings.budget_settle_defer_ms / 1000
    )
    budgets = BudgetService(
        store,
        counters,
        ChargeWriter(store),
        cache_ttl_s=settings.budget_cache_s,
        allotment_calls=settings.budget_allotment_calls,
        allotment_s=settings.budget_allotment_s,
    )
    bundle = load_policy_bundle(settings.policy_dir)
    policy: InProcessPolicyEngine | RestPolicyEngine = (
        RestPolicyEngine(settings.policy_url, timeout_s=settings.policy_timeout_s)
        if settings.policy_url
        else InProcessPolicyEngine(bundle)
    )
    catalog, upstreams = chat.catalog, chat.upstreams

    def live(caller: Caller) -> list[ModelEntry]:
        allowed = catalog.allowed_for(caller.persona, caller.role)
        return [e for e in allowed if e.model_id in upstreams]

    async def close_policy() -> None:
        if isinstance(policy, RestPolicyEngine):
            await policy.aclose()
        else:
            policy.close()

    return Gatekeeper(
        close_hooks=[counters.aclose, store.aclose, close_policy],
        budgets=budgets,
        policy=policy,
        approvals=approvals,
        rates=chat.rates,
        live=live,
        emit=chat.emit,
        enforce=settings.policy_mode == "enforce",
        fail_closed=bool(settings.policy_fail_closed),
        policy_version=bundle.version,
        constitution_hash=constitution_hash(settings.policy_dir),
        upstream_timeout_s=settings.upstream_timeout_s,
        approval_ttl_s=settings.approval_ttl_s,
        reservation_grace_s=settings.budget_reservation_grace_s,
        producer=chat.producer,
        unavailable=(PolicyUnavailable,),
        metrics=metrics,
        tracing=tracing,
        reuse=VerdictCache() if settings.policy_reuse else None,
    )


@dataclass
class Container:
    """Adapters built for one process; the ASGI lifespan keeps it on ``app.state``."""

    settings: Settings
    checks: dict[str, HealthCheck]
    registry: CollectorRegistry
    metrics: GatewayMetrics
    codec: Codec
    publisher: KafkaPublisher | None = None
    worker: WorkerRuntime | None = None
    chat: ChatService | None = None
    api_keys: ApiKeyStore | None = None
    model_stats: ModelStatsCache | None = None
    tracing: Tracing = field(default_factory=lambda: Tracing(None))
    approvals: ApprovalStore | None = None
    usage_query: Callable[[str], list[dict[str, Any]]] | None = None

    async def aclose(self) -> None:
        """Close the upstream clients (they live on the event loop), then everything else."""
        if self.chat is not None:
            for task in list(self.chat.background):
                await task
            for up in self.chat.upstreams.values():
                await up.client.close()
            if self.chat.gate is not None:
                await self.chat.gate.aclose()
            if self.chat.limits is not None:
                await self.chat.limits.aclose()
        self.close()

    def refresh_rates(self) -> int:
        """Re-read the rate cards (new versions loaded by ``soma ratecards load``)."""
        if self.chat is None:
            return 0
        book = RateCardStore(self.settings.secret("postgres_dsn")).book()
        self.chat.rates = book
        if self.chat.gate is not None:
            self.chat.gate.rates = book
        return len(book)

    def collect_pipeline(self) -> None:
        """Refresh the pipeline figures on ``/metrics`` from the live stats objects."""
        pub, worker = self.publisher, self.worker
        if self.chat is not None and self.chat.gate is not None:
            self.chat.gate.flush_ratios()
        self.metrics.collect_pipeline(
            publisher_stats=pub.stats if pub else None,
            spool_depth=pub.spool.depth if pub else None,
            spool_writable=pub.spool.writable if pub else None,
            worker_stats=worker.stats if worker else None,
            consumer_stats=worker.consumer.stats if worker else None,
            producer=self.settings.producer_name,
        )

    def close(self) -> None:
        """Stop the worker, flush what the publisher can, release everything."""
        if self.model_stats is not None:
            self.model_stats.stop()
        if self.worker is not None:
            self.worker.stop()
        if self.api_keys is not None:
            self.api_keys.close()
        if self.publisher is not None:
            self.publisher.close()
        self.tracing.shutdown()


def bootstrap(
    settings: Settings,
    *,
    publisher: bool = True,
    worker: bool = False,
    chat: bool = False,
    worker_owns_process: bool = False,
) -> Container:
    """Build every adapter the process needs from ``settings``.

    ``worker_owns_process``: the process runs nothing but the worker (``soma worker``).
    """
    registry = CollectorRegistry()
    container = Container(
        settings=settings,
        checks=health_checks(settings),
        registry=registry,
        metrics=GatewayMetrics(registry),
        codec=Codec(),
        tracing=build_tracing(
            settings.otel_exporter,
            endpoint=settings.otel_endpoint,
            service_name=settings.otel_service_name,
        ),
    )
    try:
        if worker or chat:
            applied = postgres.migrate(settings.secret("postgres_dsn"))
            if applied:
                log.info("postgres migrations applied: %s", applied)
        if publisher or worker:
            container.publisher = build_publisher(settings)
            container.checks["spool"] = partial(spool_health, container.publisher)
        if worker:
            assert container.publisher is not None
            container.worker = build_worker(settings, container.publisher, container.codec)
            container.worker.owns_process = worker_owns_process
            store = container.worker.store
            container.checks["clickhouse"] = lambda: str(
                store.query("SELECT version() AS v")[0]["v"]
            )
            container.worker.start()
        if chat:
            assert container.publisher is not None
            query = container.worker.store.query if container.worker is not None else None
            if query is None and settings.clickhouse_driver == "server":
                query = build_store(settings).query
            container.model_stats = ModelStatsCache(
                query, database=settings.clickhouse_database, period_s=settings.stats_refresh_s
            )
            container.model_stats.start()
            container.usage_query = query
            container.chat = build_chat(
                settings,
                container.publisher,
                container.codec,
                container.model_stats,
                container.metrics,
                container.tracing,
            )
            container.api_keys = ApiKeyStore(settings.secret("postgres_dsn"))
            container.approvals = ApprovalStore(settings.secret("postgres_dsn"))
            container.chat.gate = build_gate(
                settings,
                container.chat,
                container.approvals,
                container.metrics,
                container.tracing,
            )
            container.chat.limits = build_rate_gate(settings, container.metrics)
    except BaseException:
        container.close()
        raise
    return container
