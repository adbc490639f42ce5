"""The gateway's ASGI application and its process entrypoint (``python -m ...gateway``)."""

from __future__ import annotations

import gc
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import anyio.to_thread
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from somaagent.adapters.ledger import LedgerStore
from somaagent.bootstrap import Container, bootstrap
from somaagent.entrypoints.http_alerts import list_alerts, receive_alerts
from somaagent.entrypoints.http_budgets import budget_item, budget_summary, budgets_collection
from somaagent.entrypoints.http_chat import (
    chat_completions,
    list_models,
    openai_error,
    retrieve_model,
)
from somaagent.entrypoints.http_operator import (
    decide_approval,
    get_approval,
    list_approvals,
    telemetry_tokens,
)
from somaagent.entrypoints.http_protocol import GatewayHttpProtocol
from somaagent.entrypoints.http_telemetry import ingest_events
from somaagent.entrypoints.loop_spin import LoopSpinner
from somaagent.observability.logging import configure_logging
from somaagent.service.health import check_all
from somaagent.service.periodic import Periodic, ledger_job
from somaagent.settings import Settings, SettingsError, load_settings

__all__ = ["create_app", "main"]


def _container(request: Request) -> Container:
    container: Container = request.app.state.container
    return container


async def healthz(request: Request) -> JSONResponse:
    """Every dependency's health with its round-trip latency; 503 when any is unhealthy."""
    container = _container(request)
    report = await anyio.to_thread.run_sync(check_all, container.checks)
    for component in report.components:
        container.metrics.set_dependency(component.name, component.healthy)
    return JSONResponse(report.to_dict(), status_code=200 if report.healthy else 503)


async def metrics(request: Request) -> Response:
    container = _container(request)
    container.collect_pipeline()
    return Response(generate_latest(container.registry), media_type=CONTENT_TYPE_LATEST)


def start_jobs(container: Container) -> Periodic:
    """The in-process schedule: the hourly ledger aggregator (LOCAL) and rate-card refresh."""
    jobs = Periodic()
    settings = container.settings
    if settings.aggregate_every_s and container.usage_query is not None:
        ledger = LedgerStore(settings.secret("postgres_dsn"))
        job = ledger_job(
            container.usage_query, ledger.upsert, database=settings.clickhouse_database
        )
        jobs.start("aggregate", settings.aggregate_every_s, job, first_s=60.0)
    if container.chat is not None:
        jobs.start("ratecards", 60.0, container.refresh_rates, first_s=60.0)
    return jobs


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (no such path, a method the path does not take) as OpenAI
    error objects, as every other error of the API is, instead of plain text."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"no such endpoint: {request.method} {request.url.path}"
        response = openai_error(404, message, code="not_found")
    elif exc.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
        response = openai_error(405, message, code="method_not_allowed")
    else:
        response = openai_error(exc.status_code, str(exc.detail))
    for name, value in (exc.headers or {}).items():  # a 405's Allow
        response.headers[name] = value
    return response


class HotPaths:
    """The chat endpoint straight from the server, other paths through Starlette.

    ``POST /v1/chat/completions`` is most of the gateway's traffic; its handler catches
    every error itself, so Starlette's middleware chain, route matching and wrapped ``send``
    (about 7% of the CPU of a call) are skipped for it. Everything else, the lifespan
    included, goes to the Starlette app unchanged.
    """

    def __init__(self, app: Starlette, spinner: LoopSpinner | None = None) -> None:
        self.app = app
        self.spinner = spinner

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.spinner is not None:
            self.spinner.wake()
        if (
            scope["type"] == "http"
            and scope["path"] == "/v1/chat/completions"
            and scope["method"] == "POST"
        ):
            scope["app"] = self.app
            response = await chat_completions(Request(scope, receive))
            await response(scope, receive, send)
            # The answer has left: the Kafka client's delivery reports for earlier events
            # are served now, in this thread, while the client reads it.
            publisher = self.app.state.container.publisher
            if publisher is not None:
                publisher.serve_deliveries()
            return
        await self.app(scope, receive, send)


def create_app(settings: Settings) -> HotPaths:
    """Build the gateway app; adapters are created in the lifespan, not at import."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        container = await anyio.to_thread.run_sync(
            partial(
                bootstrap,
                settings,
                publisher=True,
                worker=bool(settings.worker_in_gateway),
                chat=True,
            )
        )
        app.state.container = container
        jobs = start_jobs(container)
        # Everything built so far lives for the whole process: move it out of the cyclic
        # collector's reach, so full collections stay short (they fed the p99).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await jobs.stop()
            await container.aclose()

    routes = [
        Route("/healthz", healthz),
        Route("/metrics", metrics),
        Route("/v1/telemetry/events", ingest_events, methods=["POST"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", retrieve_model, methods=["GET"]),
        Route("/v1/alerts", receive_alerts, methods=["POST"]),
        Route("/v1/alerts", list_alerts, methods=["GET"]),
        Route("/v1/telemetry/tokens", telemetry_tokens, methods=["GET"]),
        Route("/v1/budgets", budgets_collection, methods=["GET", "POST"]),
        Route("/v1/budgets/{budget_id}", budget_item, methods=["GET", "PUT", "PATCH", "DELETE"]),
        Route("/v1/budget/summary", budget_summary, methods=["GET"]),
        Route("/v1/approvals", list_approvals, methods=["GET"]),
        Route("/v1/approvals/{approval_id}", get_approval, methods=["GET"]),
        Route(
            "/v1/approvals/{approval_id}/{decision:str}",
            decide_approval,
            methods=["POST"],
        ),
    ]
    spin_s = settings.gateway_loop_spin_us / 1e6
    return HotPaths(
        Starlette(
            routes=routes,
            lifespan=lifespan,
            exception_handlers={HTTPException: http_error},
        ),
        spinner=LoopSpinner(spin_s) if spin_s > 0 else None,
    )


def main() -> None:
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"soma gateway: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging(settings.log_level, mode=settings.profile.value)
    uvicorn.run(
        create_app(settings),
        host=settings.bind_host,
        port=settings.port("gateway_port"),
        log_level="warning",
        access_log=False,
        http=GatewayHttpProtocol,  # a response's head and body in one write
        # Nothing here reads the client's address, so uvicorn's X-Forwarded-* rewriting (a
        # middleware layer around every request) would only cost time.
        proxy_headers=False,
    )


if __name__ == "__main__":
    main()
