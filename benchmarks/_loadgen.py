"""Closed-loop HTTP load generator: N concurrent keep-alive clients, bounded in count and time.

Each of ``concurrency`` tasks sends one request, waits for the whole answer, and sends the
next, over one pooled aiohttp session (``limit=concurrency``, keep-alive). A warm-up phase
is run and discarded; then requests are recorded until ``max_requests`` have completed or
``duration_s`` has passed, whichever comes first. Latency is client-observed wall time of
one request (send to last body byte).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

_TICK = os.sysconf("SC_CLK_TCK")

__all__ = ["LevelResult", "Window", "cpu_ticks", "percentile", "run_level"]


@dataclass
class LevelResult:
    """What one concurrency level measured (latencies in ms)."""

    concurrency: int
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""
    elapsed_s: float = 0.0
    header_mismatches: int = 0
    header_seen: str | None = None
    ok_total: int = 0  # answered 200, warm-up included (telemetry events expected)

    @property
    def rps(self) -> float:
        return len(self.latencies_ms) / self.elapsed_s if self.elapsed_s else 0.0

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)
        return {
            "requests": len(lat),
            "errors": self.errors,
            **({"first_error": self.first_error} if self.first_error else {}),
            "seconds": round(self.elapsed_s, 3),
            "rps": round(self.rps, 1),
            "p50_ms": round(percentile(lat, 50), 3),
            "p99_ms": round(percentile(lat, 99), 3),
            "max_ms": round(lat[-1], 3) if lat else 0.0,
        }


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (0 for an empty one)."""
    if not ordered:
        return 0.0
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def cpu_ticks() -> dict[str, tuple[int, int, int]]:
    """Per-CPU (busy, steal, total) jiffies from /proc/stat, keyed ``cpu0``, ``cpu1``...

    Busy excludes idle, iowait and steal (time the hypervisor gave to someone else).
    """
    out: dict[str, tuple[int, int, int]] = {}
    with open("/proc/stat") as fh:
        for line in fh:
            name, *rest = line.split()
            if name.startswith("cpu") and name != "cpu":
                values = [int(v) for v in rest]
                idle, steal = values[3] + values[4], values[7]
                out[name] = (sum(values) - idle - steal, steal, sum(values))
    return out


def _proc_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        rest = fh.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / _TICK


@dataclass
class Window:
    """Machine and process CPU over the measured window (warm-up excluded)."""

    ticks_start: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    ticks_end: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    pid_cpu_s: float = 0.0

    def cores(self) -> dict[str, dict[str, float]]:
        out = {}
        for name, (busy1, steal1, total1) in sorted(self.ticks_end.items()):
            busy0, steal0, total0 = self.ticks_start[name]
            span = max(1, total1 - total0)
            out[name] = {
                "busy": round((busy1 - busy0) / span, 3),
                "steal": round((steal1 - steal0) / span, 3),
            }
        return out


async def _client(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
    result: LevelResult,
    clock: dict[str, float],
    expect_header: tuple[str, str] | None,
    think: Callable[[], float] | None = None,
) -> None:
    while True:
        if think is not None:  # an independent user's pause before the next request
            await asyncio.sleep(think())
        started = time.perf_counter()
        if started >= clock["stop"]:
            return
        try:
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                status = response.status
                seen = response.headers.get(expect_header[0]) if expect_header else None
        except (aiohttp.ClientError, TimeoutError) as exc:
            status, seen = 0, None
            result.first_error = result.first_error or f"{type(exc).__name__}: {exc}"
        done = time.perf_counter()
        result.ok_total += status == 200
        if started < clock["measure"]:
            continue
        if status != 200:
            result.errors += 1
            if not result.first_error:
                result.first_error = f"HTTP {status}"
            continue
        if expect_header is not None:
            result.header_seen = seen
            if seen != expect_header[1]:
                result.header_mismatches += 1
        result.latencies_ms.append((done - started) * 1000.0)
        clock["last"] = done
        if len(result.latencies_ms) >= clock["max"]:
            clock["stop"] = done


def _thinker(seed: int, think_s: float) -> Callable[[], float] | None:
    if think_s <= 0:
        return None
    rng = random.Random(seed)
    return lambda: rng.random() * think_s


async def run_level(
    url: str,
    body: bytes,
    *,
    concurrency: int,
    warmup_s: float,
    duration_s: float,
    max_requests: int,
    expect_header: tuple[str, str] | None = None,
    pid: int | None = None,
    think_s: float = 0.0,
) -> tuple[LevelResult, Window]:
    """Run one level; returns the result and the CPU used over the measured window (by the
    machine's cores and, when ``pid`` is given, by that process). ``think_s`` > 0: each
    client pauses a random 0..``think_s`` seconds (seeded per client) before each request."""
    result = LevelResult(concurrency)
    window = Window()
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency, keepalive_timeout=30)
    timeout = aiohttp.ClientTimeout(total=60)
    now = time.perf_counter()
    clock = {
        "measure": now + warmup_s,
        "stop": now + warmup_s + duration_s,
        "max": float(max_requests),
        "last": 0.0,
    }
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        thinks = [_thinker(i, think_s) for i in range(concurrency)]
        tasks = [
            asyncio.create_task(
                _client(session, url, body, headers, result, clock, expect_header, thinks[i])
            )
            for i in range(concurrency)
        ]
        await asyncio.sleep(max(0.0, clock["measure"] - time.perf_counter()))
        window.ticks_start = cpu_ticks()
        pid_start = _proc_cpu_s(pid) if pid else 0.0
        await asyncio.gather(*tasks)
        window.ticks_end = cpu_ticks()
        window.pid_cpu_s = _proc_cpu_s(pid) - pid_start if pid else 0.0
    result.elapsed_s = max(0.0, clock["last"] - clock["measure"])
    return result, window
