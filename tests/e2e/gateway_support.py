"""Run extra gateways for e2e tests: the real ASGI app under uvicorn, on a real port."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn
import yaml

from somaagent.adapters.ratecards_store import RateCardStore
from somaagent.domain.ratecards import default_ratecards_text, parse_ratecards
from somaagent.domain.routing import default_catalog_text
from somaagent.entrypoints.gateway import create_app
from somaagent.entrypoints.http_protocol import GatewayHttpProtocol
from somaagent.settings import Settings, load_settings

PRIMARY = "smollm2-135m-instruct"
REPLICA = "smollm2-135m-instruct-replica"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_gateway(env: dict[str, str], *, worker: bool = False) -> Iterator[Settings]:
    """A gateway with the given environment (with its own telemetry worker when ``worker``:
    then ``env`` must give it its own chDB path and topics); yields its settings."""
    port = free_port()
    settings = load_settings(
        {
            **env,
            "SOMA_GATEWAY_PORT": str(port),
            "SOMA_WORKER_IN_GATEWAY": "true" if worker else "false",
            "SOMA_PRODUCER_NAME": f"gateway-{port}",
        }
    )
    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        http=GatewayHttpProtocol,  # as the gateway's entrypoint serves
        proxy_headers=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"gateway-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "gateway did not start"
    try:
        yield settings
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def open_chat(port: int, body: dict[str, Any], session: str, key: str = "") -> socket.socket:
    """Send a chat completion on a raw socket and return it unread: an HTTP client would
    wait for the response's head before it let the test close the connection."""
    payload = json.dumps(body).encode()
    auth = f"authorization: Bearer {key}\r\n" if key else ""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\n"
        b"content-type: application/json\r\n"
        + f"{auth}x-soma-session-id: {session}\r\ncontent-length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    return sock


def packaged_catalog(parallel: int = 4) -> dict[str, Any]:
    """The packaged catalog as YAML data, its endpoints still placeholders and its local
    models' slots ``parallel`` (a placeholder dumped back would be a quoted string)."""
    data: dict[str, Any] = yaml.safe_load(
        default_catalog_text().replace("${MODEL_PARALLEL}", str(parallel))
    )
    return data


def catalog_with_replica(
    stack: Settings, path: Path, primary_url: str, **primary: Any
) -> dict[str, Any]:
    """Write to ``path`` the packaged catalog with its primary at ``primary_url`` (and the
    ``primary`` fields given) plus a replica of it at the stack's own primary server, priced
    like the primary (the gateway refuses to serve an unpriced model); return the replica."""
    catalog = packaged_catalog()
    entry = next(m for m in catalog["models"] if m["tier"] == "primary")
    replica = {**entry, "model_id": REPLICA, "base_url": stack.url("primary_model_url")}
    entry.update(base_url=primary_url, **primary)
    catalog["models"].append(replica)
    path.write_text(yaml.safe_dump(catalog, sort_keys=False))
    store = RateCardStore(stack.secret("postgres_dsn"))
    store.load(parse_ratecards(default_ratecards_text(), source="packaged"))
    card = {
        "version": "replica-1",
        "effective_from": "2026-01-01T00:00:00Z",
        "source": "test: the primary's price",
        "models": {REPLICA: {"gpu_hour_usd": "0.10", "gpus": 1, "max_ms_per_token": "250"}},
    }
    store.load(parse_ratecards(yaml.safe_dump({"version": 1, "cards": [card]}), source="test"))
    return replica
