"""What any gateway on this server stack adds at best, next to ours and LiteLLM's.

Issue 4's goal compares added p99 with a tenth of LiteLLM's. This asks how much of that
is reachable at all on this machine: in alternating rounds, on the stack of
``gateway_overhead.py`` (fixed-response upstream, gateway with budgets, policy and
telemetry on, worker in its own process at nice 10, proxies on core 0, clients on core 1),
it measures at each concurrency

* ``direct``: the upstream itself;
* ``floor``: ``_floor_proxy.py``, the least a proxy does (parse the body, forward it with
  the gateway's lean upstream pool, answer) on the gateway's uvicorn + httptools + uvloop;
* ``floor_redis``: the same plus one Redis script before the upstream is called, the
  round trip a budget that really holds costs (the gateway's own Redis client);
* ``gateway``: ours; ``litellm``: LiteLLM's proxy.

Only the gateway produces telemetry, so the worker consumes while the gateway is measured
and is idle during the others' runs (as it is for LiteLLM in ``gateway_overhead.py``).
Each proxy's added latency is against the ``direct`` run of its own round. Output: one JSON
object (per level: medians over the rounds, each proxy's added p99 over LiteLLM's, and the
goal's bound, a tenth of LiteLLM's).

Usage: .venv/bin/python benchmarks/c1_floor.py [--levels 1,16] [--rounds 3] [--seconds 6]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import gateway_overhead as go  # noqa: E402
from _report import machine, ratio  # noqa: E402

TARGETS = ("direct", "floor", "floor_redis", "gateway", "litellm")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="1,16")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=6.0, help="measured s per run")
    parser.add_argument("--no-litellm", action="store_true")
    return parser.parse_args()


def start_floors(run: go.Run) -> dict[str, str]:
    """The two floor proxies on the proxy core; their chat URLs by target name."""
    upstream = f"http://{go.HOST}:{run.upstream_port}"
    urls = {}
    for offset, name, extra in (
        (3, "floor", []),
        (4, "floor_redis", ["--redis", run.settings.url("redis_url")]),
    ):
        port = run.args.port_base + offset
        argv = [sys.executable, str(BENCH / "_floor_proxy.py"), "--port", str(port)]
        argv += ["--upstream", upstream, *extra]
        run.children.start(name, argv, core=go.PROXY_CORE, env=run.env, cwd=go.ROOT)
        run.children.wait_http(name, f"http://{go.HOST}:{port}/v1/models", 30)
        urls[name] = f"http://{go.HOST}:{port}/v1/chat/completions"
    return urls


def summarize(rows: list[dict[str, Any]], targets: list[str]) -> dict[str, Any]:
    """Medians over the rounds; added latency against each round's own direct run."""
    out: dict[str, Any] = {"rounds": rows}
    for target in targets:
        med = {
            key: round(statistics.median(r[target][key] for r in rows), 3)
            for key in ("rps", "p50_ms", "p99_ms")
        }
        if target != "direct":
            for key in ("p50_ms", "p99_ms"):
                added = [r[target][key] - r["direct"][key] for r in rows]
                med[f"added_{key}"] = round(statistics.median(added), 3)
        out[target] = med
    lite = out.get("litellm")
    if lite is not None and lite["added_p99_ms"] > 0:
        bound = lite["added_p99_ms"] / 10
        out["goal_added_p99_ms_max"] = round(bound, 3)
        for target in targets:
            if target in ("direct", "litellm"):
                continue
            row = out[target]
            row["added_p99_over_litellm"] = ratio(row["added_p99_ms"], lite["added_p99_ms"])
            row["rps_over_litellm"] = ratio(row["rps"], lite["rps"])
            row["added_p99_within_goal"] = row["added_p99_ms"] <= bound
    return out


def main() -> None:
    ns = parse_args()
    run, supervisor = go.held_run(ns.seconds, litellm=True)
    started = time.monotonic()
    report: dict[str, Any] = {"benchmark": "c1_floor", "machine": machine()}
    try:
        go.start_client_side(run, supervisor)
        report["budgets"] = go.create_budgets(run)
        run.start_gateway(worker_inside=False)
        urls = {"direct": run.upstream_url, "gateway": run.gateway_url, **start_floors(run)}
        if not ns.no_litellm:
            report["litellm"] = run.start_litellm()
            if report["litellm"]["status"] == "measured":
                urls["litellm"] = run.litellm_url
        targets = [t for t in TARGETS if t in urls]
        body = go.chat_body(go.FIXED_MODEL)
        for target in targets:  # warm every proxy (connections, caches) before measuring
            run.measure(target, urls[target], body, 16, duration_s=2.0, warmup_s=0.5)
        report["levels"] = {}
        for c in (int(x) for x in ns.levels.split(",") if x):
            rows = [
                {t: run.measure(t, urls[t], body, c) for t in targets} for _ in range(ns.rounds)
            ]
            report["levels"][str(c)] = summarize(rows, targets)
    finally:
        run.children.stop_all()
        supervisor.down()
    report["config"] = {
        "rounds": ns.rounds,
        "measured_s": ns.seconds,
        "request": "non-streamed chat completion, 2 messages, max_tokens 16",
        "gateway": "budgets (2, enforce), OPA verdict in-process, telemetry on",
        "background_nice": f"worker and Kafka broker at nice {go.BACKGROUND_NICE}",
        "seconds_total": round(time.monotonic() - started, 1),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
