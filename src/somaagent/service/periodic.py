"""Jobs the gateway runs on a schedule in-process (LOCAL; a CronJob elsewhere)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio.to_thread

__all__ = ["Periodic", "ledger_job"]

log = logging.getLogger("somaagent.jobs")


@dataclass
class Periodic:
    """Run blocking jobs every ``every_s`` seconds in a worker thread; errors are logged."""

    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self, name: str, every_s: float, job: Callable[[], Any], *, first_s: float) -> None:
        async def loop() -> None:
            await asyncio.sleep(first_s)
            while True:
                try:
                    result = await anyio.to_thread.run_sync(job)
                    log.info("job %s done: %s", name, result)
                except Exception:
                    log.exception("job %s failed; next run in %.0f s", name, every_s)
                await asyncio.sleep(every_s)

        self.tasks.append(asyncio.get_running_loop().create_task(loop(), name=f"job-{name}"))

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        self.tasks.clear()


def ledger_job(
    query: Callable[[str], list[dict[str, Any]]],
    upsert: Callable[[Any], int],
    *,
    database: str,
    hours: int = 2,
) -> Callable[[], dict[str, int]]:
    """The hourly aggregator: rewrite the last ``hours`` hours of the Postgres ledger."""
    from somaagent.service.usage_report import ledger_rows

    def run() -> dict[str, int]:
        end = datetime.now(UTC)
        rows = ledger_rows(query, database=database, start=end - timedelta(hours=hours), end=end)
        return {"ledger_rows": upsert(rows)}

    return run
