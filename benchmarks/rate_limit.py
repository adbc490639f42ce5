"""API keys' rate limits: admission + settle latency and throughput against the real Redis.

Starts Redis through the project's own stack code in its own state dir and port base (the
client on core 0, Redis on core 1, as ``budget.py``). Each round measures

* ``ping``: a Redis ``PING`` on a connection of its own after each sequential pair (the
  cheapest round trip at the same moments);
* ``limits``: admit + settle pairs of a key with both limits (far above what the run uses,
  so every admission is counted and every settle replaces a hold), N sequential, then N
  spread over C concurrent clients on two limiters (two connections, as two replicas);

and then checks exactness: 4·K concurrent admissions over the two limiters against a key
with ``rpm = K`` must admit exactly K. Target (the brief's for budget reserves): p99 <= 1 ms
per operation, sequential. Prints one JSON object.

Usage: .venv/bin/python benchmarks/rate_limit.py [--ops 3000 --rounds 3 --clients 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from budget import TARGET_P99_MS, elapsed_ns, median_at, own_stack, stats  # noqa: E402

from somaagent.adapters.redis_rate_limit import RedisRateLimiter  # noqa: E402
from somaagent.adapters.resp import RespClient  # noqa: E402
from somaagent.domain.rate_limits import RateLimits  # noqa: E402

LIMITS = RateLimits(rpm=10**9, tpm=10**9)
WORST, USED = 4_200, 380  # a call's hold and what it used


async def _worker(
    limiter: RedisRateLimiter,
    key: str,
    count: int,
    samples: tuple[list[int], list[int], list[int]],
    ping: RespClient | None,
) -> None:
    admit_ns, settle_ns, ping_ns = samples
    for _ in range(count):
        hold = secrets.token_hex(8)
        t0 = time.perf_counter_ns()
        decision = await limiter.admit(key, hold, LIMITS, WORST)
        admit_ns.append(time.perf_counter_ns() - t0)
        assert decision.admitted
        settle_ns.append(await elapsed_ns(limiter.settle(key, hold, USED)))
        if ping is not None:  # the baseline sees the same moments
            ping_ns.append(await elapsed_ns(ping.execute("PING")))


async def pairs(
    limiters: list[RedisRateLimiter], ping: RespClient, n: int, clients: int
) -> dict[str, Any]:
    key = secrets.token_hex(8)
    out: dict[str, Any] = {}
    for mode, tasks in (("sequential", 1), (f"concurrent_{clients}", clients)):
        samples: tuple[list[int], list[int], list[int]] = ([], [], [])
        t0 = time.perf_counter()
        await asyncio.gather(
            *(
                _worker(limiters[i % 2], key, n // tasks, samples, ping if tasks == 1 else None)
                for i in range(tasks)
            )
        )
        seconds = time.perf_counter() - t0 - sum(samples[2]) / 1e9
        if samples[2]:
            out["ping"] = stats(samples[2])
        out[mode] = {
            "admit": stats(samples[0]),
            "settle": stats(samples[1]),
            "ops_per_s": round(2 * len(samples[0]) / seconds),
        }
    return out


async def exactness(limiters: list[RedisRateLimiter], k: int) -> dict[str, Any]:
    key, limits = secrets.token_hex(8), RateLimits(rpm=k)
    decisions = await asyncio.gather(
        *(limiters[i % 2].admit(key, secrets.token_hex(8), limits, 0) for i in range(4 * k))
    )
    admitted = sum(1 for d in decisions if d.admitted)
    return {"rpm": k, "attempts": 4 * k, "admitted": admitted, "exact": admitted == k}


async def measure(url: str, n: int, clients: int, rounds: int) -> dict[str, Any]:
    limiters = [RedisRateLimiter(url, defer_s=0.0), RedisRateLimiter(url, defer_s=0.0)]
    ping = RespClient(url)
    try:
        await pairs(limiters, ping, 200, clients)  # warm-up: connections, scripts loaded
        results = [await pairs(limiters, ping, n, clients) for _ in range(rounds)]
        return {"rounds": results, "exactness": await exactness(limiters, 500)}
    finally:
        for limiter in limiters:
            await limiter.aclose()
        await ping.aclose()


def verdict(rounds: list[dict[str, Any]], clients: int) -> dict[str, Any]:
    def median(*path: str) -> float:
        return median_at(rounds, *path)

    out: dict[str, Any] = {"target_p99_ms": TARGET_P99_MS, "statistic": "median over rounds"}
    out["ping_p50_ms"], out["ping_p99_ms"] = median("ping", "p50_ms"), median("ping", "p99_ms")
    for op in ("admit", "settle"):
        for q in ("p50_ms", "p99_ms"):
            out[f"{op}_{q}"] = median("sequential", op, q)
    out[f"concurrent_{clients}_ops_per_s"] = median(f"concurrent_{clients}", "ops_per_s")
    out[f"concurrent_{clients}_admit_p99_ms"] = median(f"concurrent_{clients}", "admit", "p99_ms")
    out["met"] = max(out["admit_p99_ms"], out["settle_p99_ms"]) <= TARGET_P99_MS
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ops", type=int, default=3000, help="admit+settle pairs per run")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--port-base", type=int, default=26800)
    args = parser.parse_args()
    with own_stack("rate-limit", args.port_base, ["redis"]) as (settings, placement):
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            report = runner.run(
                measure(settings.url("redis_url"), args.ops, args.clients, args.rounds)
            )
    print(
        json.dumps(
            {
                "benchmark": "rate_limit",
                "pairs_per_mode_and_round": args.ops,
                "clients": args.clients,
                "limiters": 2,
                "placement": placement,
                "verdict": verdict(report["rounds"], args.clients),
                **report,
            }
        )
    )


if __name__ == "__main__":
    main()
