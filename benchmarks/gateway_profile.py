"""Where the gateway's CPU goes, under the benchmark's c=16 load.

Same setup as ``gateway_overhead.py`` (fixed-response upstream, telemetry and budgets on,
worker in its own process, gateway on core 0). Two ways to look (one JSON object on stdout,
with the level's requests/s and CPU per request):

* default: while the level runs, ``py-spy record`` samples the gateway (collapsed stacks);
  the share of samples inside each of the ``--top`` hottest functions (inclusive: coroutine
  stacks are partial in ``--nonblocking`` mode, so prefer the exclusive list) and leaf
  functions (exclusive). Low overhead; C code counts for the Python frame calling it.
* ``--cprofile OUT``: the gateway runs under cProfile (about twice as slow); the cumulative
  and own time per request of the ``--top`` costliest functions of the package. Exact call
  counts and the cost of each stage (route, admit, account...), inflated alike.

Usage: .venv/bin/python benchmarks/gateway_profile.py [--seconds 10] [--out stacks.txt]
       [--stream] [--long-prompt]  (streamed calls; the 4,000-character prompt)
       .venv/bin/python benchmarks/gateway_profile.py --cprofile /tmp/gateway.prof
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import gateway_overhead as go  # noqa: E402
from _procs import log  # noqa: E402

from somaagent.stack import Supervisor  # noqa: E402


def summarize(stacks: Path, top: int) -> dict[str, Any]:
    inclusive: collections.Counter[str] = collections.Counter()
    exclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in stacks.read_text().splitlines():
        frames_part, _, count_part = line.rpartition(" ")
        if not count_part.isdigit():
            continue
        n = int(count_part)
        frames = [
            f for f in frames_part.split(";") if f and not f.startswith(("process ", "thread "))
        ]
        total += n
        if frames:
            exclusive[frames[-1]] += n
        for f in set(frames):
            inclusive[f] += n

    def share(counter: collections.Counter[str]) -> list[tuple[str, float]]:
        return [(name, round(c / max(total, 1), 4)) for name, c in counter.most_common(top)]

    return {"samples": total, "inclusive": share(inclusive), "exclusive": share(exclusive)}


def cprofile_summary(path: Path, requests: int, top: int) -> dict[str, Any]:
    """Per request (µs, profiled): cumulative and own time of the costliest functions."""
    stats = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    rows = []
    for (filename, line, name), (_, calls, own, cumulative, _) in stats.items():
        if "somaagent" not in filename and "uvicorn" not in filename:
            continue
        where = filename.split("site-packages/")[-1].split("src/")[-1]
        rows.append((cumulative, own, calls, f"{name} ({where}:{line})"))
    rows.sort(reverse=True)
    per = max(requests, 1)
    return {
        "requests": requests,
        "functions": [
            {
                "function": label,
                "calls_per_request": round(calls / per, 2),
                "cumulative_us": round(cum / per * 1e6, 1),
                "own_us": round(own / per * 1e6, 1),
            }
            for cum, own, calls, label in rows[:top]
        ],
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--top", type=int, default=60)
    parser.add_argument("--out", type=Path, default=None, help="keep the collapsed stacks")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--blocking", action="store_true", help="pause the gateway per sample")
    parser.add_argument("--native", action="store_true", help="C frames too (py-spy --native)")
    parser.add_argument("--cprofile", type=Path, default=None, help="profile file to write")
    parser.add_argument("--stream", action="store_true", help="streamed calls (include_usage)")
    parser.add_argument("--long-prompt", action="store_true", help="the 4,000-character prompt")
    parser.add_argument(
        "--perf", type=Path, default=None, help="also record with perf (cpu-clock) into this file"
    )
    return parser.parse_args()


def measured_level(ns: argparse.Namespace, run: go.Run, body: bytes) -> dict[str, Any]:
    """The profiled level: ``--seconds`` at ``--concurrency`` (the warm-up ran before)."""
    return run.measure(
        "gateway", run.gateway_url, body, ns.concurrency, pid_name="gateway",
        duration_s=ns.seconds, warmup_s=0.0,
    )  # fmt: skip


def with_cprofile(ns: argparse.Namespace, run: go.Run, body: bytes) -> dict[str, Any]:
    """One level with the gateway under cProfile; stops the gateway to get the profile."""
    level = measured_level(ns, run, body)
    run.children.stop("gateway")  # writes the profile
    # Every call answered (warm-ups included) is in the profile.
    return {
        "level": {k: level.get(k) for k in ("rps", "p50_ms", "p99_ms")},
        "cprofile": cprofile_summary(ns.cprofile, run.gateway_ok, ns.top),
    }


def with_py_spy(ns: argparse.Namespace, run: go.Run, body: bytes) -> dict[str, Any]:
    """One level while py-spy samples the gateway."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    stacks: Path | None = ns.out
    if stacks is None:
        fd, name = tempfile.mkstemp(suffix=".txt")
        os.close(fd)  # py-spy writes the file by its name
        stacks = Path(name)
    spy = [
        py_spy, "record", "--format", "raw", "--nolineno", "--rate", str(ns.rate),
        "--duration", str(int(ns.seconds)), "--pid", str(run.children.pid("gateway")),
        "--output", str(stacks), *([] if ns.blocking else ["--nonblocking"]),
        *(["--native"] if ns.native else []),
    ]  # fmt: skip
    result: dict[str, Any] = {}

    thread = threading.Thread(target=lambda: result.update(measured_level(ns, run, body)))
    thread.start()
    perf = None
    if ns.perf is not None:  # the kernel's sampler: C code (loop, libraries) by symbol
        perf = subprocess.Popen(
            ["perf", "record", "-e", "cpu-clock", "-F", "997", "-g", "-o", str(ns.perf),
             "-p", str(run.children.pid("gateway")), "--", "sleep", str(int(ns.seconds))],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
    subprocess.run(spy, check=True, capture_output=True)
    if perf is not None:
        perf.wait()
    thread.join()
    return {
        "level": {k: result.get(k) for k in ("rps", "p50_ms", "p99_ms", "cpu_us_per_request")},
        "profile": summarize(stacks, ns.top),
    }


def main() -> None:
    ns = parse_args()
    argv = ["--no-litellm", "--no-real-model", "--levels", "", "--no-stream"]
    sys.argv = [sys.argv[0], *argv, "--no-long-prompt", "--no-worker-inside"]
    args = go.parse_args()
    args.duration = ns.seconds
    args.warmup = 3.0
    os.sched_setaffinity(0, {go.CLIENT_CORE})  # as gateway_overhead.py: clients on core 1
    settings, env = go.prepare(args)
    run = go.Run(args, settings, env)
    supervisor = Supervisor(settings, progress=log)
    out: dict[str, Any] = {"benchmark": "gateway_profile"}
    try:
        supervisor.up(only=["kafka", "postgres", "redis"])
        run.start_upstream()
        run.start_worker()
        go.create_budgets(run)
        if ns.cprofile is not None:
            wrapper = str(BENCH / "_cprofile_gateway.py")
            run.gateway_argv = [sys.executable, wrapper, str(ns.cprofile.resolve())]
        run.start_gateway(worker_inside=False)
        prompt = go.LONG_PROMPT if ns.long_prompt else None
        body = go.chat_body(go.FIXED_MODEL, stream=ns.stream, prompt=prompt)
        run.measure("gateway", run.gateway_url, body, ns.concurrency, duration_s=3.0)
        out |= with_cprofile(ns, run, body) if ns.cprofile else with_py_spy(ns, run, body)
    finally:
        run.children.stop_all()
        supervisor.down()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
