"""``soma worker``: the telemetry worker as its own process (DEVELOPMENT/ENTERPRISE, tests).

In LOCAL the gateway runs the same worker in-process, because chDB has a single owner.
"""

from __future__ import annotations

import signal
import sys
import threading

from prometheus_client import start_http_server

from somaagent.bootstrap import bootstrap
from somaagent.observability.logging import configure_logging
from somaagent.settings import Settings

__all__ = ["run"]


def run(settings: Settings) -> int:
    """Consume until SIGTERM/SIGINT; flush and close on the way out."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    configure_logging(settings.log_level, mode=settings.profile.value)
    container = bootstrap(settings, publisher=True, worker=True, worker_owns_process=True)
    if settings.worker_metrics_port is not None:
        start_http_server(
            settings.worker_metrics_port, addr=settings.bind_host, registry=container.registry
        )
    print(f"soma worker: consuming {', '.join(settings.topics.event_type_for_topic())}", flush=True)
    try:
        while not stop.wait(1.0):
            container.collect_pipeline()
            worker = container.worker
            if worker is not None and worker.thread is not None and not worker.thread.is_alive():
                print("soma worker: worker thread stopped", file=sys.stderr)
                return 1
    finally:
        container.close()
    return 0
