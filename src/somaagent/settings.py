"""One typed settings object for every profile.

Settings are read once (from the environment, prefix ``SOMA_``; the seed switches
``ESCALATION_ENABLED``, ``ESCALATION_FALLBACK_ENABLED``, ``SLM_ENABLED`` and ``SLM_BASE_URL``
are also read without prefix) and passed down explicitly. Nothing below this module reads
``os.environ``. Switching ``SOMA_PROFILE`` changes defaults, never code.
"""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Profile", "Settings", "SettingsError", "TopicSettings", "load_settings"]


class SettingsError(ValueError):
    """The environment describes settings that cannot be used; the message says why."""


class Profile(enum.StrEnum):
    LOCAL = "LOCAL"
    DEVELOPMENT = "DEVELOPMENT"
    ENTERPRISE = "ENTERPRISE"


class TopicSettings(BaseModel):
    """Kafka topic names (defaults from the seeds)."""

    slm_metrics: str = "slm.metrics"
    escalation_metrics: str = "llm.escalation.metrics"
    escalation_raw: str = "suite.telemetry.llm.escalation.raw"
    conversation_metrics: str = "conversation.metrics"
    policy_events: str = "policy.events"
    tool_metrics: str = "tool.metrics"
    audio_metrics: str = "audio.metrics"
    dead_letter: str = "telemetry.dead_letter"

    def all(self) -> list[str]:
        return list(self.model_dump().values())

    def event_type_for_topic(self) -> dict[str, str]:
        """Which event type each telemetry topic carries (the dead-letter topic carries none)."""
        return {
            self.slm_metrics: "slm.metrics",
            self.escalation_raw: "llm.escalation.invocation",
            self.escalation_metrics: "llm.escalation.metrics",
            self.conversation_metrics: "conversation.metrics",
            self.policy_events: "policy.events",
            self.tool_metrics: "tool.metrics",
            self.audio_metrics: "audio.metrics",
        }

    def topic_for_event_type(self) -> dict[str, str]:
        return {v: k for k, v in self.event_type_for_topic().items()}


class RetentionSettings(BaseModel):
    """Retention windows in days (ClickHouse TTLs)."""

    metrics_days: int = Field(default=400, ge=1)
    dead_letters_days: int = Field(default=30, ge=1)
    hourly_aggregates_days: int = Field(default=800, ge=1)


# Offsets from ``port_base`` for the LOCAL stack; every port can be set on its own too.
PORT_OFFSETS: dict[str, int] = {
    "gateway_port": 0,
    "vault_port": 20,
    "postgres_port": 32,
    "redis_port": 79,
    "primary_model_port": 81,
    "escalation_model_port": 82,
    "prometheus_port": 90,
    "kafka_port": 92,
    "alertmanager_port": 93,
}

_LOCAL_ONLY_URLS = (
    "kafka_bootstrap",
    "redis_url",
    "postgres_dsn",
    "vault_addr",
    "prometheus_url",
    "alertmanager_url",
    "primary_model_url",
    "escalation_model_url",
)

_SEED_FLAG = {
    "escalation_enabled": "ESCALATION_ENABLED",
    "escalation_fallback_enabled": "ESCALATION_FALLBACK_ENABLED",
    "slm_enabled": "SLM_ENABLED",
    "slm_base_url": "SLM_BASE_URL",
}


def _seed(name: str) -> AliasChoices:
    return AliasChoices(f"SOMA_{name}", name)


def _default_infra_dir() -> Path:
    """The repository's ``infra/`` directory (the package lives in ``<repo>/src/somaagent``)."""
    return Path(__file__).resolve().parents[2] / "infra"


class Settings(BaseSettings):
    """Effective configuration of one process. Build with :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix="SOMA_",
        env_nested_delimiter="__",
        extra="ignore",
        validate_default=True,
    )

    profile: Profile = Profile.LOCAL
    state_dir: Path = Path(".soma")
    cache_dir: Path = Path.home() / ".cache" / "somaagent"
    infra_dir: Path = Field(default_factory=_default_infra_dir)
    bind_host: str = "127.0.0.1"
    port_base: int = Field(default=18000, ge=1024, le=65000)
    ready_timeout_s: float = Field(default=180.0, gt=0)

    gateway_port: int | None = None
    kafka_port: int | None = None
    redis_port: int | None = None
    postgres_port: int | None = None
    vault_port: int | None = None
    prometheus_port: int | None = None
    alertmanager_port: int | None = None
    primary_model_port: int | None = None
    escalation_model_port: int | None = None

    # Endpoints. In LOCAL they default to the local stack; elsewhere they must be given.
    kafka_bootstrap: str | None = None
    redis_url: str | None = None
    postgres_dsn: SecretStr | None = None
    postgres_database: str = "soma"
    vault_addr: str | None = None
    vault_token: SecretStr = SecretStr("soma-dev-root")
    prometheus_url: str | None = None
    alertmanager_url: str | None = None
    primary_model_url: str | None = None
    escalation_model_url: str | None = None
    clickhouse_driver: Literal["chdb", "server"] | None = None
    clickhouse_url: SecretStr | None = None
    clickhouse_path: Path | None = None

    clickhouse_database: str = "soma"
    clickhouse_cluster: str | None = None  # ENTERPRISE: render ON CLUSTER / Replicated DDL
    kafka_partitions: int = Field(default=3, ge=1)
    producer_name: str = "gateway"  # names this process's spool directory
    spool_dir: Path | None = None
    publisher_message_timeout_ms: int = Field(default=10_000, ge=1000)
    worker_group: str = "soma-telemetry-worker"
    worker_in_gateway: bool | None = None  # LOCAL: True (chDB has one owning process)
    worker_max_batch: int = Field(default=20_000, ge=1)
    # How long the worker gathers events before storing them (unless worker_max_batch come
    # first). Each flush costs a fixed ~20-35 ms of CPU per partition batch (a chDB insert
    # of one row into the event table and its view alone, plus the look-up, summaries and
    # commit), and fewer, larger parts merge less: through the gateway the worker used
    # 0.168 / 0.130 / 0.106 of a core at c=1 with 2 / 5 / 10 s (docs/decisions.md).
    worker_max_wait_s: float = Field(default=5.0, gt=0)
    # How much nicer than its process the telemetry worker thread runs. Inside the gateway
    # (LOCAL) telemetry yields the core to serving when both want it and catches up in
    # idle time; in a worker process of its own it yields to the machine's other work.
    worker_thread_nice: int = Field(default=10, ge=0, le=19)
    # Whether the worker writes a batch in a thread of its own while it validates the next.
    # None: only in a worker process of its own that may run on two or more cores (where
    # it drained 200,000 events ~9% faster); on one core, or beside the gateway, the two
    # threads only compete (the gateway's c=1 added p99 4.41 against 3.48 ms with the
    # worker pinned to the load generator's core; docs/decisions.md).
    worker_write_thread: bool | None = None
    ingest_max_body_bytes: int = Field(default=8 << 20, ge=1024)

    catalog_file: Path | None = None  # model catalog YAML; None = the packaged default
    allow_anonymous: bool | None = None  # LOCAL: True (callers without a key are tenant "local")
    anonymous_tenant: str = "local"
    anonymous_persona: str = "default"
    anonymous_role: str = "user"
    # The anonymous caller's rate limits (requests / tokens per minute; None: unlimited).
    anonymous_rpm: int | None = Field(default=None, ge=1, le=1_000_000_000)
    anonymous_tpm: int | None = Field(default=None, ge=1, le=1_000_000_000)
    default_max_tokens: int = Field(default=256, ge=1)
    max_tokens_cap: int = Field(default=4096, ge=1)
    chat_max_body_bytes: int = Field(default=1 << 20, ge=1024)
    upstream_timeout_s: float = Field(default=120.0, gt=0)
    # A fast, passing failure (refused, reset, 5xx, 429) is tried again on the same upstream
    # this many times per request, after 50 ms, 100 ms, ... (domain/routing/retry.py).
    upstream_retries: int = Field(default=1, ge=0, le=10)
    upstream_retry_backoff_ms: int = Field(default=50, ge=0, le=2_000)
    stats_refresh_s: float = Field(default=30.0, gt=0)
    # After the gateway's loop last worked, keep polling its sockets this long instead of
    # sleeping (entrypoints/loop_spin.py); 0 turns it off (a shared core, a CPU quota).
    gateway_loop_spin_us: int = Field(default=0, ge=0, le=100_000)

    log_level: str = "INFO"
    worker_metrics_port: int | None = None  # `soma worker` serves /metrics here when set
    alert_webhook_url: str | None = None  # LOCAL default: the gateway's /v1/alerts receiver

    policy_fail_closed: bool | None = None  # ENTERPRISE: True (engine unreachable -> refuse)
    # Policy (OPA): in-process engine when policy_url is None, else an OPA server's REST API.
    policy_dir: Path = Field(default_factory=lambda: _default_infra_dir().parent / "policy")
    policy_url: str | None = None
    policy_timeout_s: float = Field(default=0.5, gt=0)
    # Reuse verdicts the policy itself declares reusable (data.soma.gateway.decision.reuse)
    # for later calls that meet its conditions, instead of evaluating every call.
    policy_reuse: bool = True
    # enforce: verdicts are acted on; permissive (LOCAL default): logged and emitted only.
    policy_mode: Literal["enforce", "permissive"] | None = None
    # Budgets and rate cards.
    ratecards_file: Path | None = None  # loaded at start when Postgres has no rate card
    budget_cache_s: float = Field(default=5.0, gt=0)  # budget definitions cached this long
    budget_reservation_grace_s: float = Field(default=30.0, gt=0)  # past the call's deadline
    # A settle the caller does not wait for may wait this long for the next Redis command
    # of the process, to share its write and round trip (0: sent at once).
    budget_settle_defer_ms: float = Field(default=2.0, ge=0, le=1000)
    # Allotments (service/budget_allotments.py): the gateway holds this many calls' worst
    # case of a budget in Redis at a time (at most 1/16 of a limit) and reserves calls from
    # it without a round trip; each funds calls for budget_allotment_s (0 calls: off).
    budget_allotment_calls: int = Field(default=64, ge=0, le=100_000)
    budget_allotment_s: float = Field(default=0.5, gt=0, le=60)
    # API keys' rate limits (domain/rate_limits.py): the sliding window of their requests
    # and tokens per minute (shorter only in tests), and how long a call's token hold lasts
    # when its gateway never settles it.
    rate_limit_window_s: float = Field(default=60.0, ge=0.1, le=3600)
    rate_limit_hold_s: float = Field(default=600.0, gt=0, le=86_400)
    # Traces: OpenTelemetry spans, exported over OTLP/HTTP, to stdout, or not at all.
    otel_exporter: Literal["none", "console", "otlp"] = "none"
    otel_endpoint: str | None = None  # OTLP/HTTP traces URL, e.g. http://127.0.0.1:4318/v1/traces
    otel_service_name: str = "somaagent-gateway"
    approval_ttl_s: float = Field(default=86_400.0, gt=0)
    aggregate_every_s: float | None = None  # LOCAL: 3600 (hourly ledger job in-process)
    health_timeout_s: float = Field(default=2.0, gt=0)

    escalation_enabled: bool = Field(default=False, validation_alias=_seed("ESCALATION_ENABLED"))
    escalation_fallback_enabled: bool = Field(
        default=False, validation_alias=_seed("ESCALATION_FALLBACK_ENABLED")
    )
    slm_enabled: bool = Field(default=False, validation_alias=_seed("SLM_ENABLED"))
    slm_base_url: str | None = Field(default=None, validation_alias=_seed("SLM_BASE_URL"))

    topics: TopicSettings = Field(default_factory=TopicSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)

    # LOCAL stack: binaries and model files (None = discovered from the installed packages).
    tansu_bin: Path | None = None
    redis_bin: Path = Path("/usr/bin/redis-server")
    postgres_bin_dir: Path = Path("/usr/lib/postgresql/15/bin")
    postgres_os_user: str = "postgres"
    bao_bin: Path | None = None
    prometheus_bin: Path = Path("/usr/bin/prometheus")
    alertmanager_bin: Path = Path("/usr/bin/prometheus-alertmanager")
    llama_server_bin: Path | None = None
    model_threads: int = Field(default=2, ge=1)
    model_parallel: int = Field(default=4, ge=1)
    # Context tokens each LOCAL llama-server serves each request (each of its parallel slots
    # gets them all). None = the window the catalog gives its model.
    model_context: int | None = Field(default=None, ge=256)
    primary_model_name: str = "smollm2-135m-instruct"
    primary_model_file: Path | None = None
    primary_model_sha256: str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    escalation_model_name: str = "qwen2.5-coder-0.5b-instruct"
    escalation_model_file: Path | None = None
    escalation_model_sha256: str = (
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    )

    @model_validator(mode="after")
    def _resolve(self) -> Settings:
        for name, offset in PORT_OFFSETS.items():
            if getattr(self, name) is None:
                setattr(self, name, self.port_base + offset)
        self.state_dir = self.state_dir.resolve()
        self.cache_dir = self.cache_dir.resolve()
        if self.profile is Profile.LOCAL:
            self._fill_local_urls()
        else:
            missing = [n for n in _LOCAL_ONLY_URLS if getattr(self, n) is None]
            if self.clickhouse_driver != "chdb" and self.clickhouse_url is None:
                missing.append("clickhouse_url")
            if missing:
                names = ", ".join("SOMA_" + n.upper() for n in missing)
                raise ValueError(f"profile {self.profile.value} requires {names}")
            if self.clickhouse_driver is None:
                self.clickhouse_driver = "server"
        self._fill_profile_defaults()
        if self.otel_exporter == "otlp" and not self.otel_endpoint:
            raise ValueError("SOMA_OTEL_EXPORTER=otlp requires SOMA_OTEL_ENDPOINT")
        if self.slm_enabled and not self.slm_base_url:
            raise ValueError("SLM_ENABLED=true requires SLM_BASE_URL")
        return self

    def _fill_profile_defaults(self) -> None:
        local = self.profile is Profile.LOCAL
        if self.alert_webhook_url is None:
            self.alert_webhook_url = f"http://{self.bind_host}:{self.gateway_port}/v1/alerts"
        if self.allow_anonymous is None:
            self.allow_anonymous = local
        if self.worker_in_gateway is None:
            self.worker_in_gateway = local
        if self.spool_dir is None:
            self.spool_dir = self.state_dir / "spool"
        if self.policy_fail_closed is None:
            self.policy_fail_closed = self.profile is Profile.ENTERPRISE
        if self.policy_mode is None:
            self.policy_mode = "permissive" if local else "enforce"
        if self.aggregate_every_s is None and self.worker_in_gateway:
            self.aggregate_every_s = 3600.0

    def _fill_local_urls(self) -> None:
        host = self.bind_host
        defaults = {
            "kafka_bootstrap": f"{host}:{self.kafka_port}",
            "redis_url": f"redis://{host}:{self.redis_port}/0",
            "vault_addr": f"http://{host}:{self.vault_port}",
            "prometheus_url": f"http://{host}:{self.prometheus_port}",
            "alertmanager_url": f"http://{host}:{self.alertmanager_port}",
            "primary_model_url": f"http://{host}:{self.primary_model_port}/v1",
            "escalation_model_url": f"http://{host}:{self.escalation_model_port}/v1",
        }
        for name, value in defaults.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.postgres_dsn is None:
            dsn = f"postgresql://postgres@{host}:{self.postgres_port}/{self.postgres_database}"
            self.postgres_dsn = SecretStr(dsn)
        if self.clickhouse_driver is None:
            self.clickhouse_driver = "chdb"
        if self.clickhouse_path is None:
            self.clickhouse_path = self.state_dir / "clickhouse"

    # ------------------------------------------------------------------ accessors
    def port(self, name: str) -> int:
        """The resolved port of a LOCAL component setting, e.g. ``port("redis_port")``."""
        value = getattr(self, name)
        assert isinstance(value, int)
        return value

    def secret(self, name: str) -> str:
        value = getattr(self, name)
        if value is None:
            raise SettingsError(f"setting {name} is not set")
        return str(value.get_secret_value())

    def url(self, name: str) -> str:
        value = getattr(self, name)
        if not isinstance(value, str):
            raise SettingsError(f"setting {name} is not set")
        return value

    def masked(self) -> dict[str, Any]:
        """Effective settings as JSON-ready data with every secret masked."""
        data: dict[str, Any] = json.loads(self.model_dump_json())
        for name, field in type(self).model_fields.items():
            if field.annotation is not None and "SecretStr" in str(field.annotation):
                if getattr(self, name) is not None:
                    data[name] = "**********"
        return data

    def to_env(self) -> dict[str, str]:
        """Environment that makes a child process load these exact settings."""
        env: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is None:
                continue
            key = _SEED_FLAG.get(name, f"SOMA_{name.upper()}")
            if isinstance(value, SecretStr):
                env[key] = value.get_secret_value()
            elif isinstance(value, BaseModel):
                for sub, sub_value in value.model_dump().items():
                    env[f"SOMA_{name.upper()}__{sub.upper()}"] = str(sub_value)
            elif isinstance(value, bool):
                env[key] = "true" if value else "false"
            elif isinstance(value, enum.Enum):
                env[key] = str(value.value)
            else:
                env[key] = str(value)
        return env


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    """Build :class:`Settings` from ``environ`` (the process environment when ``None``).

    Raises :class:`SettingsError` with a one-line message on any invalid value.
    """
    try:
        if environ is None:
            return Settings()
        return _settings_from_mapping(environ)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "settings"
        value = first.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        msg = str(first["msg"]).removeprefix("Value error, ")
        if not first["loc"]:
            raise SettingsError(f"invalid settings: {msg}") from None
        raise SettingsError(f"invalid setting {where}: {msg}{shown}") from None


def _settings_from_mapping(environ: dict[str, str]) -> Settings:
    class _Scoped(Settings):
        @classmethod
        def settings_customise_sources(cls, settings_cls, init_settings, env_settings, *_a, **_k):  # type: ignore[no-untyped-def]
            from pydantic_settings import EnvSettingsSource

            source = EnvSettingsSource(settings_cls)
            source.env_vars = {k.lower(): v for k, v in environ.items()}
            return (init_settings, source)

    return _Scoped()
