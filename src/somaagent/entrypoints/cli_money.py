"""``soma ratecards`` and ``soma cost``: versioned rate cards and the cost recompute check.

Thin: parse, build adapters from the settings, call the store or the service, print.
Handlers report their own errors on stderr as ``soma: error: ...`` and return the exit code:
``ratecards`` 0 done, 1 refused or failed; ``cost recompute`` 0 no difference, 1 any
difference, 2 could not check (no rate cards, store unreachable or held by another process).

LOCAL keeps telemetry in embedded chDB, which lets one process own a data path: while the
gateway runs (its in-process worker holds the path) this command cannot open it and says
so; the recompute then has to run inside the gateway process.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TypeAlias

import psycopg

from somaagent.adapters import postgres
from somaagent.adapters.clickhouse import ClickHouseDriver, ClickHouseError, open_driver
from somaagent.adapters.ratecards_store import RateCardStore, RateCardStoreUnavailable
from somaagent.domain.ratecards import (
    DEFAULT_RATECARDS_RESOURCE,
    RateBook,
    RateCardEntry,
    RateCardError,
    default_ratecards_text,
    parse_ratecards,
    plain_decimal,
)
from somaagent.domain.routing import GpuPricing
from somaagent.service.cost_recompute import (
    EventQuery,
    RecomputeReport,
    parse_instant,
    recompute,
)
from somaagent.settings import Settings

__all__ = ["add_cost", "add_ratecards"]

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
_SHOWN_DIFFERENCES = 20


class _CannotCheck(Exception):
    """The recompute could not run; the message says why and what to do."""


def _error(message: str) -> None:
    print(f"soma: error: {message}", file=sys.stderr)


def _store(settings: Settings) -> RateCardStore:
    dsn = settings.secret("postgres_dsn")
    try:
        postgres.migrate(dsn)
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()
        raise RateCardStoreUnavailable(
            f"PostgreSQL unavailable: {first[0] if first else exc}"
        ) from exc
    return RateCardStore(dsn)


# ---------------------------------------------------------------- soma ratecards


def _cmd_ratecards_load(settings: Settings, args: argparse.Namespace) -> int:
    try:
        if args.file is None:
            source = f"{DEFAULT_RATECARDS_RESOURCE} (packaged)"
            text = default_ratecards_text()
        else:
            source = str(args.file)
            text = Path(args.file).read_text(encoding="utf-8")
        entries = parse_ratecards(text, source=source)
        report = _store(settings).load(entries)
    except (OSError, UnicodeDecodeError, RateCardError, RateCardStoreUnavailable) as exc:
        _error(str(exc))
        return 1
    print(
        f"{source}: {report.inserted} model version(s) stored,"
        f" {report.unchanged} already stored unchanged"
    )
    return 0


def _pricing_text(entry: RateCardEntry) -> str:
    p = entry.pricing
    if isinstance(p, GpuPricing):
        return f"{plain_decimal(p.gpu_hour_usd)} USD/GPU-hour x {p.gpus}"
    return (
        f"per 1K: in {plain_decimal(p.input_per_1k)} out {plain_decimal(p.output_per_1k)}"
        f" cached {plain_decimal(p.cached_input_per_1k)}"
    )


def _entry_json(entry: RateCardEntry, current: bool) -> dict[str, object]:
    p = entry.pricing
    pricing: dict[str, object]
    if isinstance(p, GpuPricing):
        pricing = {"gpu_hour_usd": plain_decimal(p.gpu_hour_usd), "gpus": p.gpus}
    else:
        pricing = {
            "input_per_1k": plain_decimal(p.input_per_1k),
            "output_per_1k": plain_decimal(p.output_per_1k),
            "cached_input_per_1k": plain_decimal(p.cached_input_per_1k),
        }
    max_ms = entry.max_ms_per_token
    return {
        "model_id": entry.model_id,
        "version": entry.version,
        "effective_from": entry.effective_from.isoformat().replace("+00:00", "Z"),
        "current": current,
        "pricing": pricing,
        "max_ms_per_token": plain_decimal(max_ms) if max_ms is not None else None,
        "source": entry.source,
    }


def _cmd_ratecards_list(settings: Settings, args: argparse.Namespace) -> int:
    try:
        book = _store(settings).book()
    except (RateCardError, RateCardStoreUnavailable) as exc:
        _error(str(exc))
        return 1
    now = datetime.now(UTC)
    current = {
        (found.model_id, found.version)
        for found in (book.current(m, now) for m in {e.model_id for e in book.entries()})
        if found is not None
    }
    if args.json:
        print(
            json.dumps([_entry_json(e, (e.model_id, e.version) in current) for e in book.entries()])
        )
        return 0
    if not len(book):
        print("no rate cards stored; load the packaged ones with `soma ratecards load`")
        return 0
    print(f"  {'model_id':<30} {'version':<14} {'effective_from':<21} {'max ms/tok':>10}  pricing")
    for e in book.entries():
        mark = "*" if (e.model_id, e.version) in current else " "
        since = e.effective_from.isoformat().replace("+00:00", "Z")
        max_ms = plain_decimal(e.max_ms_per_token) if e.max_ms_per_token is not None else "-"
        print(
            f"{mark} {e.model_id:<30} {e.version:<14} {since:<21} {max_ms:>10}  {_pricing_text(e)}"
        )
    print("* = in effect now")
    return 0


def add_ratecards(sub: Subparsers) -> None:
    """Add ``soma ratecards load [FILE]`` and ``soma ratecards list [--json]``."""
    cards = sub.add_parser("ratecards", help="versioned rate cards: load, list")
    cards_sub = cards.add_subparsers(dest="ratecards_command", required=True)
    load = cards_sub.add_parser(
        "load",
        help="store the rate cards of a YAML file (default: the packaged file); all or nothing",
    )
    load.add_argument("file", nargs="?", type=Path, help="rate-card YAML (see the packaged file)")
    load.set_defaults(func=_cmd_ratecards_load)
    lst = cards_sub.add_parser("list", help="every stored model version; * marks the current")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=_cmd_ratecards_list)


# ---------------------------------------------------------------- soma cost recompute


def _chdb_holder(path: Path) -> str | None:
    """The PID holding the chDB/ClickHouse data path ``path``, or ``None`` when it is free.

    ClickHouse keeps an exclusive ``flock`` on ``<path>/status`` (which holds ``PID: n``)
    while it owns the path; a shared, non-blocking ``flock`` tells whether it is held.
    """
    try:
        status = (path / "status").open("rb")
    except FileNotFoundError:
        return None
    with status:
        try:
            fcntl.flock(status, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            found = re.search(rb"PID: *([0-9]+)", status.read(4096))
            return found.group(1).decode() if found else "unknown"
        fcntl.flock(status, fcntl.LOCK_UN)
    return None


@contextmanager
def _event_query(settings: Settings) -> Iterator[EventQuery]:
    """A query function on the telemetry store of ``settings``, closed afterwards."""
    driver: ClickHouseDriver
    if settings.clickhouse_driver == "server":
        url = settings.clickhouse_url.get_secret_value() if settings.clickhouse_url else None
        where = "the ClickHouse server"
        opening = partial(open_driver, "server", url=url)
    else:
        path = settings.clickhouse_path
        if path is None or not (path / "metadata").is_dir():
            raise _CannotCheck(f"no telemetry store at {path} (nothing was ingested there)")
        holder = _chdb_holder(path)
        if holder is not None:
            raise _CannotCheck(
                f"the chDB data at {path} is held by process {holder} (in LOCAL, the gateway"
                " and its in-process telemetry worker): chDB lets one process own a data"
                " path, so run the recompute inside the gateway, or stop the gateway first"
            )
        where = f"chDB at {path}"
        opening = partial(open_driver, "chdb", path=path)
    try:
        driver = opening()
    except Exception as exc:  # noqa: BLE001 - chDB and clickhouse-connect raise bare errors
        first = str(exc).strip().splitlines()
        raise _CannotCheck(f"cannot open {where}: {first[0] if first else exc!r}") from None
    try:
        yield driver.query_json
    finally:
        driver.close()


def _print_report(report: RecomputeReport) -> None:
    d = report.to_dict()
    print(f"cost recompute over [{d['start']} .. {d['end']}): {d['rows_checked']} call(s) checked")
    print(f"  stored total      {d['stored_total_usd']} USD")
    print(f"  recomputed total  {d['recomputed_total_usd']} USD (rows with a known version)")
    for version, rows in d["rows_by_version"].items():
        print(f"  rate card {version}: {rows} row(s)")
    print(
        f"  differences: {report.differences} ({report.mismatch_count} cost mismatch(es),"
        f" {report.unknown_count} row(s) naming an unknown rate-card version)"
    )
    for m in d["mismatches"][:_SHOWN_DIFFERENCES]:
        print(
            f"  MISMATCH {m['event_id']} {m['model_id']}@{m['rate_card_version']}:"
            f" stored {m['stored_usd']} recomputed {m['recomputed_usd']}"
        )
    for u in d["unknown_versions"][:_SHOWN_DIFFERENCES]:
        print(
            f"  UNKNOWN  {u['event_id']} {u['model_id']}@{u['rate_card_version']}:"
            f" stored {u['stored_usd']}"
        )
    listed = min(len(report.mismatches), _SHOWN_DIFFERENCES)
    listed += min(len(report.unknown_versions), _SHOWN_DIFFERENCES)
    if report.differences > listed:
        print(f"  ... {report.differences - listed} more (see --json)")


def _cmd_cost_recompute(settings: Settings, args: argparse.Namespace) -> int:
    try:
        if not args.start < args.end:
            raise _CannotCheck("--from must be before --to")
        book: RateBook = _store(settings).book()
        if not len(book):
            raise _CannotCheck("no rate cards stored; run `soma ratecards load` first")
        with _event_query(settings) as query:
            report = recompute(
                query,
                book,
                start=args.start,
                end=args.end,
                database=settings.clickhouse_database,
            )
    except (_CannotCheck, RateCardError, RateCardStoreUnavailable, ClickHouseError) as exc:
        _error(str(exc))
        return 2
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        _print_report(report)
    return 0 if report.ok else 1


def _instant(text: str) -> datetime:
    try:
        return parse_instant(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 date or date-time (e.g. 2026-11-01T00:00:00Z)"
        ) from None


def add_cost(sub: Subparsers) -> None:
    """Add ``soma cost recompute --from ISO --to ISO [--json]``."""
    cost = sub.add_parser("cost", help="cost accounting checks")
    cost_sub = cost.add_subparsers(dest="cost_command", required=True)
    rec = cost_sub.add_parser(
        "recompute",
        help="recompute stored call costs from their events and rate-card versions;"
        " exit 0 when all match, 1 on any difference, 2 when the check cannot run",
    )
    rec.add_argument(
        "--from",
        dest="start",
        required=True,
        type=_instant,
        metavar="ISO",
        help="start, inclusive (date or date-time; no zone means UTC)",
    )
    rec.add_argument(
        "--to",
        dest="end",
        required=True,
        type=_instant,
        metavar="ISO",
        help="end, exclusive",
    )
    rec.add_argument("--json", action="store_true")
    rec.set_defaults(func=_cmd_cost_recompute)
