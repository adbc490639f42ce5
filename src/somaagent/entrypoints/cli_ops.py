"""``soma approvals ...`` and ``soma job aggregate``: operator commands (thin)."""

from __future__ import annotations

import argparse
import json

from somaagent.adapters.approvals import ApprovalError, ApprovalStore
from somaagent.settings import Settings

__all__ = ["add_approvals", "add_jobs"]


def _store(settings: Settings) -> ApprovalStore:
    return ApprovalStore(settings.secret("postgres_dsn"))


def _cmd_list(settings: Settings, args: argparse.Namespace) -> int:
    rows = _store(settings).list(tenant=args.tenant, status=args.status)
    if args.json:
        print(json.dumps([a.to_dict() for a in rows]))
        return 0
    print(f"{'id':<28} {'tenant':<14} {'persona':<12} {'model':<28} {'status':<9} worst USD")
    for a in rows:
        print(
            f"{a.approval_id:<28} {a.tenant:<14} {a.persona:<12} {a.model_id:<28}"
            f" {a.status:<9} {a.worst_case_usd:f}"
        )
        for reason in a.reasons:
            print(f"    - {reason}")
    return 0


def _cmd_decide(settings: Settings, args: argparse.Namespace) -> int:
    try:
        row = _store(settings).decide(
            args.approval_id, approve=args.approve, actor=args.actor, note=args.note
        )
    except ApprovalError as exc:
        print(f"soma: error: {exc}")
        return 1
    print(f"{row.approval_id}: {row.status} by {row.decided_by}")
    return 0


def add_approvals(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ap = sub.add_parser("approvals", help="the approvals queue: list, approve, deny")
    ap_sub = ap.add_subparsers(dest="approvals_command", required=True)
    lst = ap_sub.add_parser("list", help="approvals, newest first")
    lst.add_argument("--tenant")
    lst.add_argument(
        "--status", choices=["pending", "approved", "denied", "used", "expired"], default=None
    )
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=_cmd_list)
    for name, approve in (("approve", True), ("deny", False)):
        cmd = ap_sub.add_parser(name, help=f"{name} a pending approval")
        cmd.add_argument("approval_id")
        cmd.add_argument("--actor", default="cli", help="who decides (kept in the record)")
        cmd.add_argument("--note", default=None)
        cmd.set_defaults(func=_cmd_decide, approve=approve)


def _cmd_aggregate(settings: Settings, args: argparse.Namespace) -> int:
    from somaagent.adapters.ledger import LedgerStore
    from somaagent.bootstrap import build_store
    from somaagent.service.periodic import ledger_job

    store = build_store(settings)
    try:
        job = ledger_job(
            store.query,
            LedgerStore(settings.secret("postgres_dsn")).upsert,
            database=settings.clickhouse_database,
            hours=args.hours,
        )
        print(json.dumps({"hours": args.hours, **job()}))
    finally:
        store.driver.close()
    return 0


def add_jobs(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    job = sub.add_parser("job", help="scheduled jobs, run once")
    job_sub = job.add_subparsers(dest="job_command", required=True)
    agg = job_sub.add_parser(
        "aggregate",
        help="write the hourly budget ledger in Postgres from the ClickHouse aggregates",
    )
    agg.add_argument("--hours", type=int, default=2, help="how many past hours to (re)write")
    agg.set_defaults(func=_cmd_aggregate)
