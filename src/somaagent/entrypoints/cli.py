"""``soma``: the command line. Thin: parse, build settings, call the stack or a service."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import psycopg

from somaagent.adapters import postgres
from somaagent.adapters.api_keys import ApiKeyError, ApiKeyStore, KeyStoreUnavailable
from somaagent.adapters.tenant_limits import TenantLimitStore
from somaagent.domain.rate_limits import MAX_LIMIT, check_limit
from somaagent.entrypoints.cli_budgets import add_budgets
from somaagent.entrypoints.cli_money import add_cost, add_ratecards
from somaagent.entrypoints.cli_ops import add_approvals, add_jobs
from somaagent.entrypoints.cli_policy import add_policy
from somaagent.settings import Settings, SettingsError, load_settings
from somaagent.stack import StackError, Supervisor

__all__ = ["main"]


def _progress(message: str) -> None:
    print(message, flush=True)


def _split(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _banner(settings: Settings) -> str:
    host = settings.bind_host
    gateway = f"http://{host}:{settings.gateway_port}"
    primary = settings.url("primary_model_url")
    model = settings.primary_model_name
    return f"""
SomaAgent 01 LOCAL stack is up (state: {settings.state_dir})
  gateway (OpenAI) {gateway}/v1
  gateway health   {gateway}/healthz
  gateway metrics  {gateway}/metrics
  primary model    {primary}   ({model})
  escalation model {settings.url("escalation_model_url")}   ({settings.escalation_model_name})
  prometheus       {settings.url("prometheus_url")}
  alertmanager     {settings.url("alertmanager_url")}
  kafka            {settings.url("kafka_bootstrap")}
  redis            {settings.url("redis_url")}
  postgres         postgresql://postgres@{host}:{settings.postgres_port}/{settings.postgres_database}
  openbao          {settings.url("vault_addr")}

Try it (OpenAI API through the gateway; no key needed in LOCAL):
  curl -s {gateway}/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{{"model":"auto","messages":[{{"role":"user","content":"Say hello"}}],"max_tokens":32}}'
  .venv/bin/python -c "from openai import OpenAI; \\
c=OpenAI(base_url='{gateway}/v1', api_key='local'); \\
print(c.chat.completions.create(model='auto', max_tokens=32, \\
messages=[{{'role':'user','content':'Say hello'}}]).choices[0].message.content)"
Stop with: .venv/bin/soma down   (data is kept under {settings.state_dir})"""


def _cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    supervisor = Supervisor(settings, progress=_progress)
    supervisor.up(only=_split(args.only))
    if not args.quiet:
        print(_banner(settings))
    return 0


def _cmd_down(settings: Settings, args: argparse.Namespace) -> int:
    stopped = Supervisor(settings, progress=_progress).down(only=_split(args.only))
    print(f"stopped {len(stopped)} component(s); data kept in {settings.state_dir}")
    return 0


def _cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    rows = Supervisor(settings).status()
    if args.json:
        print(json.dumps([dataclasses.asdict(row) for row in rows]))
    else:
        print(f"{'component':<17} {'pid':>8} {'port':>6}  {'state':<10} log / detail")
        for r in rows:
            state = "healthy" if r.healthy else ("unhealthy" if r.running else "stopped")
            print(f"{r.name:<17} {r.pid or '-':>8} {r.port:>6}  {state:<10} {r.log}  {r.detail}")
    return 0 if all(r.healthy for r in rows) else 3


def _cmd_config(settings: Settings, args: argparse.Namespace) -> int:
    print(json.dumps(settings.masked(), indent=2, sort_keys=True, default=str))
    return 0


def _cmd_gateway(settings: Settings, args: argparse.Namespace) -> int:
    from somaagent.entrypoints import gateway

    gateway.main()
    return 0


def _cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from somaagent.entrypoints import worker

    if args.name:
        settings = settings.model_copy(update={"producer_name": args.name})
    return worker.run(settings)


def _migrated(settings: Settings) -> str:
    """The PostgreSQL DSN, its migrations applied."""
    dsn = settings.secret("postgres_dsn")
    try:
        postgres.migrate(dsn)
    except psycopg.OperationalError as exc:
        raise KeyStoreUnavailable.from_error(exc) from exc
    return dsn


def _key_store(settings: Settings) -> ApiKeyStore:
    return ApiKeyStore(_migrated(settings))


def _cmd_keys_create(settings: Settings, args: argparse.Namespace) -> int:
    expires = None
    if args.expires_days is not None:
        expires = datetime.now(UTC) + timedelta(days=args.expires_days)
    with _key_store(settings) as store:
        key_id, key = store.create(
            args.tenant,
            args.persona,
            args.role,
            name=args.name,
            expires_at=expires,
            rpm=args.rpm,
            tpm=args.tpm,
        )
    if args.json:
        print(json.dumps({"key_id": key_id, "key": key}))
    else:
        print(f"key_id  {key_id}\nkey     {key}")
        print("Store the key now: it cannot be shown again (only its sha256 is kept).")
    return 0


def _cmd_keys_list(settings: Settings, args: argparse.Namespace) -> int:
    with _key_store(settings) as store:
        keys = store.list(args.tenant)
    now = datetime.now(UTC)
    if args.json:
        rows = [{**dataclasses.asdict(k), "status": k.status(now)} for k in keys]
        print(json.dumps(rows, default=lambda v: v.isoformat()))
        return 0
    print(
        f"{'key_id':<16}  {'status':<7}  {'tenant':<16} {'persona':<16} {'role':<12}"
        f" {'rpm':>8} {'tpm':>10}  expires"
    )
    for k in keys:
        expires = k.expires_at.isoformat(timespec="seconds") if k.expires_at else "-"
        print(
            f"{k.key_id:<16}  {k.status(now):<7}  {k.tenant:<16} {k.persona:<16} {k.role:<12}"
            f" {k.rpm_limit or '-':>8} {k.tpm_limit or '-':>10}  {expires}  {k.name or ''}"
        )
    return 0


def _cmd_keys_limits(settings: Settings, args: argparse.Namespace) -> int:
    changes = {name: getattr(args, name) for name in ("rpm", "tpm")}
    with _key_store(settings) as store:
        limits = store.set_limits(
            args.key_id, **{k: v for k, v in changes.items() if v is not _KEEP}
        )
    if limits is None:
        raise ApiKeyError(f"no active key {args.key_id} (unknown or revoked)")
    rpm, tpm = limits
    print(f"{args.key_id}  rpm {rpm or 'unlimited'}  tpm {tpm or 'unlimited'}")
    return 0


def _cmd_tenants_limits(settings: Settings, args: argparse.Namespace) -> int:
    changes = {name: getattr(args, name) for name in ("rpm", "tpm")}
    changes = {k: v for k, v in changes.items() if v is not _KEEP}
    if not changes:
        raise SettingsError("give --rpm and/or --tpm (a number, or 'none' to lift it)")
    limits = TenantLimitStore(_migrated(settings)).set(args.tenant, **changes)
    rpm, tpm = limits.rpm_limit, limits.tpm_limit
    print(f"{limits.tenant}  rpm {rpm or 'unlimited'}  tpm {tpm or 'unlimited'}")
    return 0


def _cmd_tenants_list(settings: Settings, args: argparse.Namespace) -> int:
    rows = TenantLimitStore(_migrated(settings)).list()
    if args.json:
        print(json.dumps([dataclasses.asdict(r) for r in rows], default=str))
        return 0
    print(f"{'tenant':<32} {'rpm':>10} {'tpm':>12}  updated")
    for r in rows:
        updated = r.updated_at.isoformat(timespec="seconds") if r.updated_at else "-"
        print(f"{r.tenant:<32} {r.rpm_limit or '-':>10} {r.tpm_limit or '-':>12}  {updated}")
    return 0


def _cmd_keys_revoke(settings: Settings, args: argparse.Namespace) -> int:
    with _key_store(settings) as store:
        if not store.revoke(args.key_id):
            raise ApiKeyError(f"no active key {args.key_id} (unknown or already revoked)")
    print(f"revoked {args.key_id}")
    return 0


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be a whole number of days, at least 1")
    return number


_KEEP = object()  # `keys limits` without --rpm/--tpm: that limit stays as it is


def _limit(value: str) -> int | None:
    if value.lower() == "none":
        return None
    try:
        return check_limit("limit", int(value))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a whole number from 1 to {MAX_LIMIT}, or 'none', got {value!r}"
        ) from None


def _add_keys(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = sub.add_parser("keys", help="API keys: create, list, revoke, limits")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create a key and print it once")
    create.add_argument("--tenant", required=True)
    create.add_argument("--persona", required=True)
    create.add_argument("--role", required=True)
    create.add_argument("--name", help="a label for people (e.g. who holds the key)")
    create.add_argument("--expires-days", type=_positive_int, metavar="D")
    create.add_argument("--rpm", type=_limit, help="requests per minute (default: unlimited)")
    create.add_argument("--tpm", type=_limit, help="tokens per minute (default: unlimited)")
    create.add_argument("--json", action="store_true")
    create.set_defaults(func=_cmd_keys_create)
    lst = keys_sub.add_parser("list", help="list keys (never their secrets)")
    lst.add_argument("--tenant")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=_cmd_keys_list)
    revoke = keys_sub.add_parser("revoke", help="revoke a key by its key_id")
    revoke.add_argument("key_id")
    revoke.set_defaults(func=_cmd_keys_revoke)
    limits = keys_sub.add_parser(
        "limits", help="set a key's rate limits (requests/tokens per minute; 'none' lifts one)"
    )
    limits.add_argument("key_id")
    _limit_options(limits)
    limits.set_defaults(func=_cmd_keys_limits)


def _limit_options(parser: argparse.ArgumentParser) -> None:
    """``--rpm`` / ``--tpm`` of a ``limits`` command (absent: that limit stays as it is)."""
    parser.add_argument("--rpm", type=_limit, default=_KEEP, metavar="N|none")
    parser.add_argument("--tpm", type=_limit, default=_KEEP, metavar="N|none")


def _add_tenants(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tenants = sub.add_parser("tenants", help="tenants' rate limits, shared by all their keys")
    tenants_sub = tenants.add_subparsers(dest="tenants_command", required=True)
    limits = tenants_sub.add_parser(
        "limits", help="set a tenant's rate limits (requests/tokens per minute; 'none' lifts one)"
    )
    limits.add_argument("tenant")
    _limit_options(limits)
    limits.set_defaults(func=_cmd_tenants_limits)
    lst = tenants_sub.add_parser("list", help="list the tenants that have limits")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=_cmd_tenants_list)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="soma", description="SomaAgent 01 control plane")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the LOCAL stack and wait until it is ready")
    up.add_argument("--only", help="comma-separated components to start")
    up.add_argument("--quiet", action="store_true", help="do not print URLs and examples")
    up.set_defaults(func=_cmd_up)
    down = sub.add_parser("down", help="stop what `soma up` started (data is kept)")
    down.add_argument("--only", help="comma-separated components to stop")
    down.set_defaults(func=_cmd_down)
    status = sub.add_parser("status", help="pid, port, health and log of each component")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=_cmd_status)
    config = sub.add_parser("config", help="settings")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    show = config_sub.add_parser("show", help="print effective settings, secrets masked")
    show.set_defaults(func=_cmd_config)
    gw = sub.add_parser("gateway", help="run the gateway in the foreground")
    gw.set_defaults(func=_cmd_gateway)
    wk = sub.add_parser("worker", help="run the telemetry worker in the foreground")
    wk.add_argument("--name", default="worker", help="spool name for its dead-letter producer")
    wk.set_defaults(func=_cmd_worker)
    _add_keys(sub)
    _add_tenants(sub)
    add_budgets(sub)
    add_ratecards(sub)
    add_cost(sub)
    add_policy(sub)
    add_approvals(sub)
    add_jobs(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
        code: int = args.func(settings, args)
    except SettingsError as exc:
        print(f"soma: error: {exc}", file=sys.stderr)
        return 2
    except (StackError, ApiKeyError) as exc:
        print(f"soma: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("soma: interrupted; started components were stopped", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
