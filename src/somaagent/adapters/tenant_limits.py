"""Per-tenant rate limits in PostgreSQL (``tenant_limits``), set by operators.

Every key of a tenant shares its tenant's limits: the key store reads them with the key
(one statement, a LEFT JOIN), so a gateway learns a change within its key cache's lifetime
(``ApiKeyStore(ttl_s=)``, 10 s by default). A tenant without a row is not limited; lifting
both limits deletes the row.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from somaagent.adapters.api_keys import ApiKeyError, KeyStoreUnavailable
from somaagent.domain.identity import check_safe_name
from somaagent.domain.rate_limits import check_limit

__all__ = ["InvalidTenantLimit", "TenantLimitStore", "TenantLimits"]


class InvalidTenantLimit(ApiKeyError, ValueError):
    """A tenant limit the store refuses (bad name, bad value, unknown limit)."""


@dataclass(frozen=True, slots=True)
class TenantLimits:
    tenant: str
    rpm_limit: int | None
    tpm_limit: int | None
    updated_at: datetime | None = None


_UPSERT = """
INSERT INTO tenant_limits (tenant, rpm_limit, tpm_limit) VALUES (%s, %s, %s)
ON CONFLICT (tenant) DO UPDATE SET
    rpm_limit = EXCLUDED.rpm_limit, tpm_limit = EXCLUDED.tpm_limit, updated_at = now()
RETURNING rpm_limit, tpm_limit
"""


class TenantLimitStore:
    """Set, lift and list tenants' limits; one short connection per call (operator use)."""

    def __init__(self, dsn: str, *, connect_timeout_s: float = 5.0) -> None:
        self._dsn = dsn
        self._connect_timeout_s = connect_timeout_s

    @contextmanager
    def _connect(self) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
        """A connection for one call; PostgreSQL away (at connect or later) is
        ``KeyStoreUnavailable``, a one-line error for the CLI."""
        try:
            with psycopg.connect(
                self._dsn, autocommit=True, connect_timeout=max(1, round(self._connect_timeout_s))
            ) as conn:
                yield conn
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise KeyStoreUnavailable.from_error(exc) from exc

    def set(self, tenant: str, **changes: int | None) -> TenantLimits:
        """Change ``tenant``'s ``rpm`` and/or ``tpm`` (None lifts that limit; one not given
        stays as it is) in one transaction; the limits it then has."""
        if unknown := set(changes) - {"rpm", "tpm"}:
            raise InvalidTenantLimit(f"no such limit: {', '.join(sorted(unknown))}")
        try:
            check_safe_name("tenant", tenant)
            for name, value in changes.items():
                check_limit(name, value)
        except ValueError as exc:
            raise InvalidTenantLimit(str(exc)) from None
        with self._connect() as conn, conn.transaction():
            # One change of a tenant at a time (FOR UPDATE cannot lock a row not yet there).
            conn.execute("SELECT pg_advisory_xact_lock(74210007, hashtext(%s))", (tenant,))
            # A dimension not given keeps its limit (a new tenant's: none); a row with
            # neither limit is deleted instead (the table's CHECK refuses it).
            current = conn.execute(
                "SELECT rpm_limit, tpm_limit FROM tenant_limits WHERE tenant = %s FOR UPDATE",
                (tenant,),
            ).fetchone()
            was: tuple[Any, Any] = (current[0], current[1]) if current else (None, None)
            rpm = changes["rpm"] if "rpm" in changes else was[0]
            tpm = changes["tpm"] if "tpm" in changes else was[1]
            if rpm is None and tpm is None:
                conn.execute("DELETE FROM tenant_limits WHERE tenant = %s", (tenant,))
                return TenantLimits(tenant, None, None)
            row = conn.execute(_UPSERT, (tenant, rpm, tpm)).fetchone()
        assert row is not None
        return TenantLimits(tenant, row[0], row[1])  # type: ignore[arg-type]

    def list(self, tenant: str | None = None) -> list[TenantLimits]:
        """Every limited tenant (or only ``tenant``), by name."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT tenant, rpm_limit, tpm_limit, updated_at FROM tenant_limits"
                " WHERE %(tenant)s::text IS NULL OR tenant = %(tenant)s ORDER BY tenant",
                {"tenant": tenant},
            ).fetchall()
        return [TenantLimits(*row) for row in rows]  # type: ignore[arg-type]
