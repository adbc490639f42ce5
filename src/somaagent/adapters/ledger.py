"""The hourly budget ledger in PostgreSQL (table ``budget_ledger``, migration 0004).

``upsert`` replaces whole hours: the aggregator re-reads every hour it covers from the
ClickHouse hourly aggregates and writes the complete figures, so running it twice, late or
after a crash gives the same ledger (idempotent), and an hour that gained late events is
corrected the next time it is covered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from somaagent.service.usage_report import LedgerRow

__all__ = ["LedgerStore"]


@dataclass
class LedgerStore:
    dsn: str

    def upsert(self, rows: Sequence[LedgerRow]) -> int:
        """Write ``rows`` in one transaction; return how many were written."""
        if not rows:
            return 0
        with psycopg.connect(self.dsn) as conn, conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO budget_ledger (tenant, persona, model_id, hour, calls,"
                " input_tokens, output_tokens, cost_usd, gpu_ms)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (tenant, persona, model_id, hour) DO UPDATE SET"
                " calls = EXCLUDED.calls, input_tokens = EXCLUDED.input_tokens,"
                " output_tokens = EXCLUDED.output_tokens, cost_usd = EXCLUDED.cost_usd,"
                " gpu_ms = EXCLUDED.gpu_ms",
                [
                    (
                        r.tenant,
                        r.persona,
                        r.model_id,
                        r.hour,
                        r.calls,
                        r.input_tokens,
                        r.output_tokens,
                        r.cost_usd,
                        r.gpu_ms,
                    )
                    for r in rows
                ],
            )
        return len(rows)

    def rows(
        self, *, tenant: str | None = None, start: datetime, end: datetime
    ) -> list[dict[str, Any]]:
        with psycopg.connect(self.dsn) as conn:
            cur = conn.execute(
                "SELECT tenant, persona, model_id, hour, calls, input_tokens, output_tokens,"
                " cost_usd, gpu_ms FROM budget_ledger"
                " WHERE (%(t)s::text IS NULL OR tenant = %(t)s)"
                " AND hour >= %(s)s AND hour < %(e)s ORDER BY hour, tenant, persona, model_id",
                {"t": tenant, "s": start, "e": end},
            )
            names = [d.name for d in cur.description or ()]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
