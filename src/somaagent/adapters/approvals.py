"""The approvals queue in PostgreSQL (table ``approvals``, migration 0005).

The contract (docs/decisions.md, "Approvals"): a request the policy answers
``require_approval`` is queued here as *pending* and the client receives its id. An operator
approves or denies it (``soma approvals approve|deny`` or the API). The client polls
``GET /v1/approvals/{id}`` and, once it reads *approved*, sends the same request again with
``X-Soma-Approval: <id>``; the gateway checks that the tenant, prompt hash and model match and
marks the approval *used* atomically, so an approval runs exactly one request. Pending
approvals past ``expires_at`` read as *expired*.

Synchronous psycopg with a connection per call: nothing here is on the per-request hot path
except ``claim``, which only runs for requests that carry an approval.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

import psycopg
from psycopg.rows import dict_row

__all__ = [
    "Approval",
    "ApprovalError",
    "ApprovalStore",
    "ApprovalStatus",
    "new_approval_id",
]

ApprovalStatus = Literal["pending", "approved", "denied", "used", "expired"]
_COLUMNS = (
    "approval_id, tenant, persona, role, model_id, prompt_hash, max_tokens, worst_case_usd,"
    " reasons, budget_trace_id, status, created_at, expires_at, decided_at, decided_by,"
    " decision_note, used_at"
)


class ApprovalError(ValueError):
    """An unknown approval, or a transition the approval's state does not allow."""


def new_approval_id() -> str:
    return "apr_" + secrets.token_hex(12)


@dataclass(frozen=True, slots=True)
class Approval:
    approval_id: str
    tenant: str
    persona: str
    role: str
    model_id: str
    prompt_hash: str
    max_tokens: int
    worst_case_usd: Decimal
    reasons: tuple[str, ...]
    budget_trace_id: str | None
    status: ApprovalStatus
    created_at: datetime
    expires_at: datetime
    decided_at: datetime | None
    decided_by: str | None
    decision_note: str | None
    used_at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        """The API's view (``object: soma.approval``); money as a decimal string."""
        return {
            "object": "soma.approval",
            "id": self.approval_id,
            "status": self.status,
            "tenant": self.tenant,
            "persona": self.persona,
            "model": self.model_id,
            "prompt_hash": self.prompt_hash,
            "max_tokens": self.max_tokens,
            "worst_case_usd": f"{self.worst_case_usd:f}",
            "reasons": list(self.reasons),
            "created_at": self.created_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
            "decided_at": self.decided_at.isoformat() if self.decided_at else None,
            "decided_by": self.decided_by,
            "note": self.decision_note,
            "used_at": self.used_at.isoformat() if self.used_at else None,
        }


def _row(r: dict[str, Any], now: datetime) -> Approval:
    status = r["status"]
    if status == "pending" and r["expires_at"] <= now:
        status = "expired"
    reasons = r["reasons"] if isinstance(r["reasons"], list) else json.loads(r["reasons"])
    return Approval(**{**r, "status": status, "reasons": tuple(str(x) for x in reasons)})


@dataclass
class ApprovalStore:
    dsn: str
    connect_timeout_s: int = 5

    def _connect(self) -> psycopg.Connection[dict[str, Any]]:
        return psycopg.connect(
            self.dsn, row_factory=dict_row, connect_timeout=self.connect_timeout_s
        )

    def create(
        self,
        *,
        tenant: str,
        persona: str,
        role: str,
        model_id: str,
        prompt_hash: str,
        max_tokens: int,
        worst_case_usd: Decimal,
        reasons: tuple[str, ...],
        budget_trace_id: str | None,
        ttl_s: float,
        now: datetime | None = None,
    ) -> Approval:
        """Queue a pending approval; return it."""
        now = now or datetime.now(UTC)
        with self._connect() as conn:
            row = conn.execute(
                f"INSERT INTO approvals (approval_id, tenant, persona, role, model_id,"
                f" prompt_hash, max_tokens, worst_case_usd, reasons, budget_trace_id,"
                f" created_at, expires_at)"
                f" VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                f" RETURNING {_COLUMNS}",
                (
                    new_approval_id(),
                    tenant,
                    persona,
                    role,
                    model_id,
                    prompt_hash,
                    max_tokens,
                    worst_case_usd,
                    json.dumps(list(reasons)),
                    budget_trace_id,
                    now,
                    now + timedelta(seconds=ttl_s),
                ),
            ).fetchone()
        assert row is not None
        return _row(row, now)

    def get(self, approval_id: str, *, now: datetime | None = None) -> Approval | None:
        with self._connect() as conn:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM approvals WHERE approval_id = %s", (approval_id,)
            ).fetchone()
        return _row(row, now or datetime.now(UTC)) if row else None

    def list(
        self,
        *,
        tenant: str | None = None,
        status: ApprovalStatus | None = None,
        limit: int = 200,
        now: datetime | None = None,
    ) -> list[Approval]:
        """Newest first; ``status`` filters on the effective status (expiry applied)."""
        now = now or datetime.now(UTC)
        with self._connect() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM approvals"
                " WHERE (%(t)s::text IS NULL OR tenant = %(t)s)"
                " ORDER BY created_at DESC LIMIT %(n)s",
                {"t": tenant, "n": limit},
            ).fetchall()
        out = [_row(r, now) for r in rows]
        return [a for a in out if status is None or a.status == status]

    def decide(
        self,
        approval_id: str,
        *,
        approve: bool,
        actor: str,
        note: str | None = None,
        now: datetime | None = None,
    ) -> Approval:
        """Approve or deny a pending, unexpired approval; ApprovalError otherwise."""
        now = now or datetime.now(UTC)
        with self._connect() as conn:
            row = conn.execute(
                f"UPDATE approvals SET status = %s, decided_at = %s, decided_by = %s,"
                f" decision_note = %s"
                f" WHERE approval_id = %s AND status = 'pending' AND expires_at > %s"
                f" RETURNING {_COLUMNS}",
                ("approved" if approve else "denied", now, actor, note, approval_id, now),
            ).fetchone()
        if row is None:
            current = self.get(approval_id, now=now)
            if current is None:
                raise ApprovalError(f"no approval {approval_id!r}")
            raise ApprovalError(f"approval {approval_id} is {current.status}, not pending")
        return _row(row, now)

    def claim(
        self,
        approval_id: str,
        *,
        tenant: str,
        prompt_hash: str,
        now: datetime | None = None,
    ) -> Approval:
        """Mark an approved approval used for this tenant's prompt (exactly once).

        ApprovalError says why an approval cannot be used: unknown (or another tenant's:
        the two are indistinguishable on purpose), not approved, already used, or for a
        different prompt.
        """
        now = now or datetime.now(UTC)
        with self._connect() as conn:
            row = conn.execute(
                f"UPDATE approvals SET status = 'used', used_at = %s"
                f" WHERE approval_id = %s AND tenant = %s AND prompt_hash = %s"
                f" AND status = 'approved'"
                f" RETURNING {_COLUMNS}",
                (now, approval_id, tenant, prompt_hash),
            ).fetchone()
        if row is not None:
            return _row(row, now)
        current = self.get(approval_id, now=now)
        if current is None or current.tenant != tenant:
            raise ApprovalError(f"no approval {approval_id!r} for this tenant")
        if current.prompt_hash != prompt_hash:
            raise ApprovalError(f"approval {approval_id} was granted for a different prompt")
        raise ApprovalError(f"approval {approval_id} is {current.status}, not approved")

    def unclaim(self, approval_id: str) -> None:
        """Give a claimed approval back (the approved request could not run at all)."""
        with self._connect() as conn:
            conn.execute(
                "UPDATE approvals SET status = 'approved', used_at = NULL"
                " WHERE approval_id = %s AND status = 'used'",
                (approval_id,),
            )
