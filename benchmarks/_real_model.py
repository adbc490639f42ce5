"""The real-model phase of ``gateway_overhead.py``: llama-server with the primary model,
through the gateway versus called directly.

Two ways of comparing, both in one run:

* **side by side** (the verdict): in each of ``--real-windows`` windows, half the clients
  call the model directly and half through the gateway, at the same time, against the same
  llama-server. Both groups see the same model speed in the same seconds, so the model's
  drift (its throughput moves by 15-25% between consecutive rounds of the same load) cancels
  out of each window's ratio; the report gives every window's ratio and their mean with its
  standard error.
* **sequential** (kept for comparison): direct and gateway in alternating short rounds in
  ABBA order, the clients in lockstep and as independent users (random pauses). Its ratio
  carries the drift between rounds (a standard error of about 3% at 9 rounds).
"""

from __future__ import annotations

import asyncio
import math
import os
import statistics
from typing import Any, Protocol

import uvloop
from _loadgen import LevelResult, run_level
from _procs import log, pin
from _report import CLIENT_CORE, PROXY_CORE, added, ratio

from somaagent.stack import Supervisor

__all__ = ["REAL_MODEL", "TARGET_SHARE", "real_model", "side_by_side_summary"]

REAL_MODEL = "smollm2-135m-instruct"
TARGET_SHARE = 0.98
MAX_TOKENS = 32
# Independent users: each client pauses 0..this many seconds before each request. Clients
# in lockstep (identical requests, all answered at once) let llama-server decode all of
# them in one batch step; any jitter (a proxy's millisecond included) splits that batch.
REAL_THINK_S = 0.2
USAGE = ("x-soma-usage-source", "reported")


class _Run(Protocol):
    """What this phase uses of ``gateway_overhead.Run``."""

    args: Any
    settings: Any
    children: Any
    gateway_url: str
    gateway_ok: int
    last: LevelResult

    def measure(self, target: str, url: str, body: bytes, concurrency: int, **kw: Any) -> Any: ...


def _merge(into: LevelResult, part: LevelResult) -> None:
    into.latencies_ms += part.latencies_ms
    into.elapsed_s += part.elapsed_s
    into.errors += part.errors
    into.first_error = into.first_error or part.first_error
    into.header_mismatches += part.header_mismatches
    into.header_seen = part.header_seen or into.header_seen
    into.ok_total += part.ok_total


def side_by_side_summary(counts: dict[str, list[int]]) -> dict[str, Any]:
    """The verdict of the side-by-side windows (pure). ``counts``: requests answered per
    window and side; both sides of a window share its clock, so their ratio needs no
    duration. The verdict is the pooled ratio (all windows' gateway calls over all their
    direct calls); every window's own ratio and their standard error show the spread."""
    direct, gateway = counts["direct"], counts["gateway"]
    ratios = [g / d for d, g in zip(direct, gateway, strict=True) if d > 0]
    if not ratios or sum(direct) == 0:
        return {"windows": 0, "met": False}
    pooled = sum(gateway) / sum(direct)
    sem = statistics.stdev(ratios) / math.sqrt(len(ratios)) if len(ratios) > 1 else None
    return {
        "windows": len(ratios),
        "gateway_over_direct_by_window": [round(r, 4) for r in ratios],
        "gateway_rps_over_direct": round(pooled, 4),
        "mean_of_windows": round(statistics.fmean(ratios), 4),
        "standard_error_of_windows": round(sem, 4) if sem is not None else None,
        "target_share": TARGET_SHARE,
        "met": pooled >= TARGET_SHARE,
    }


def side_by_side(run: _Run, url: str, body: bytes) -> dict[str, Any]:
    """``--real-windows`` windows of ``--real-window-s`` seconds: ``--real-concurrency``/2
    clients direct and as many through the gateway, concurrently (lockstep, no pauses)."""
    args = run.args
    half = max(1, args.real_concurrency // 2)
    both = {"direct": LevelResult(half), "gateway": LevelResult(half)}
    counts: dict[str, list[int]] = {"direct": [], "gateway": []}

    async def window() -> tuple[LevelResult, LevelResult]:
        common = {
            "concurrency": half,
            "warmup_s": 2.0,
            "duration_s": args.real_window_s,
            "max_requests": args.max_requests,
        }
        (d, _), (g, _) = await asyncio.gather(
            run_level(url, body, **common),
            run_level(run.gateway_url, body, expect_header=USAGE, **common),
        )
        return d, g

    for i in range(args.real_windows):
        direct, gateway = uvloop.run(window())
        run.gateway_ok += gateway.ok_total
        for side, part in (("direct", direct), ("gateway", gateway)):
            _merge(both[side], part)
            # Requests started inside the window (run_level's measured phase), the same
            # clock for both sides.
            counts[side].append(len(part.latencies_ms))
        log(
            f"side by side {i + 1}/{args.real_windows}: direct {counts['direct'][-1]}, "
            f"gateway {counts['gateway'][-1]} calls, errors {direct.errors}+{gateway.errors}"
        )
    gw = both["gateway"].summary()
    gw["x-soma-usage-source"] = both["gateway"].header_seen
    gw["header_mismatches"] = both["gateway"].header_mismatches
    summary = side_by_side_summary(counts)
    clean = not (gw["errors"] or gw["header_mismatches"] or both["direct"].errors)
    summary["met"] = summary["met"] and clean
    seconds = args.real_window_s * args.real_windows
    direct_out = {**both["direct"].summary(), "seconds": seconds}
    direct_out["rps"] = round(direct_out["requests"] / seconds, 2)
    gw["seconds"], gw["rps"] = seconds, round(gw["requests"] / seconds, 2)
    # A closed loop without pauses: each client's rate is 1 / its mean latency, so the
    # latency ratio is a second estimate of the throughput ratio, free of counting steps.
    lat = {s: statistics.fmean(r.latencies_ms) for s, r in both.items() if r.latencies_ms}
    by_latency = ratio(lat.get("direct", 0.0), lat.get("gateway", 0.0))
    # Both estimates must clear the target.
    summary["met"] = summary["met"] and by_latency is not None and by_latency >= TARGET_SHARE
    return {
        "clients_per_side": half,
        "window_s": args.real_window_s,
        "direct": direct_out,
        "gateway": added(gw, direct_out),
        "calls_by_window": counts,
        "mean_latency_direct_over_gateway": by_latency,
        **summary,
    }


def alternate(run: _Run, url: str, body: bytes, *, think_s: float) -> dict[str, Any]:
    """Direct and through the gateway in ``--real-rounds`` short rounds, in ABBA order
    (direct, gateway, gateway, direct, ...), so the model's own drift falls on both alike;
    ``think_s``: clients pause before each request."""
    c, seconds, rounds = run.args.real_concurrency, run.args.real_duration, run.args.real_rounds
    both: dict[str, LevelResult] = {"direct": LevelResult(c), "gateway": LevelResult(c)}
    windows: dict[str, list[float]] = {"direct": [], "gateway": []}
    pid_cpu = 0.0
    for i in range(rounds):
        for target in ("direct", "gateway") if i % 2 == 0 else ("gateway", "direct"):
            out = run.measure(
                target,
                url if target == "direct" else run.gateway_url,
                body,
                c,
                pid_name="gateway" if target == "gateway" else None,
                expect_header=USAGE if target == "gateway" else None,
                duration_s=seconds / rounds,
                warmup_s=2.0,
                think_s=think_s,
            )
            windows[target].append(out["rps"])
            _merge(both[target], run.last)
            if target == "gateway":
                pid_cpu += out.get("cpu_us_per_request", 0.0) * len(run.last.latencies_ms)
    direct, gateway = both["direct"].summary(), both["gateway"].summary()
    gateway["x-soma-usage-source"] = both["gateway"].header_seen
    gateway["header_mismatches"] = both["gateway"].header_mismatches
    gateway["cpu_us_per_request"] = round(pid_cpu / max(1, gateway["requests"]), 1)
    return {
        "direct": direct,
        "gateway": added(gateway, direct),
        "gateway_rps_over_direct": ratio(gateway["rps"], direct["rps"]),
        "rps_by_round": windows,
    }


def real_model(run: _Run, supervisor: Supervisor, body: bytes) -> dict[str, Any]:
    """llama-server with the primary model: gateway throughput versus calling it directly.

    The model gets core 1 to itself, as it would have its own accelerator: for this phase
    everything else (gateway, load generator, worker, Kafka, PostgreSQL, Redis) shares core
    0. Otherwise the telemetry work the gateway's calls cause (the worker's batches into
    ClickHouse, Kafka, PostgreSQL) runs on the model's single core and slows the model.
    ``body``: the chat request (``REAL_MODEL``, ``MAX_TOKENS``).
    """
    try:
        supervisor.up(only=["model-primary"])
    except Exception as exc:  # noqa: BLE001 - reported, the rest of the run stands
        return {"status": f"not measured: {exc}"}
    model = supervisor.record("model-primary")
    ours = [os.getpid(), *(run.children.pid(n) for n in ("worker", "upstream", "gateway"))]
    ours += [r.pid for n in ("kafka", "postgres", "redis") if (r := supervisor.record(n))]
    pin(ours, PROXY_CORE)  # the model is a child of this process too: pinned after
    if model is not None:
        pin([model.pid], CLIENT_CORE)
    try:
        url = run.settings.url("primary_model_url") + "/chat/completions"
        # The model's first seconds of load run slower (a first window measured ~40% below
        # the next): warm it up, unmeasured, before either side is timed.
        run.measure("direct", url, body, run.args.real_concurrency, duration_s=5, warmup_s=1)
        together = side_by_side(run, url, body)
        lockstep = alternate(run, url, body, think_s=0.0)
        users = alternate(run, url, body, think_s=REAL_THINK_S)
        return {
            "status": "measured",
            "model": REAL_MODEL,
            "server": f"llama-server, {run.settings.model_threads} thread(s), "
            f"--parallel {run.settings.model_parallel}, alone on core {CLIENT_CORE}",
            "everything_else_on_core": PROXY_CORE,
            "concurrency": run.args.real_concurrency,
            "max_tokens": MAX_TOKENS,
            "gateway_rps_over_direct": together["gateway_rps_over_direct"],
            "target_share": TARGET_SHARE,
            "met": together["met"],
            "verdict_from": "side_by_side",
            "side_by_side": together,
            "sequential_lockstep": lockstep,
            "sequential_independent_users": {
                "think_s": f"uniform 0..{REAL_THINK_S} before each request, seeded per client",
                **users,
            },
        }
    finally:
        supervisor.down(only=["model-primary"])
        pin([p for p in ours if p != run.children.pid("gateway")], CLIENT_CORE)
        pin([run.children.pid("gateway")], PROXY_CORE)
