"""Compare gateway variants in alternating rounds on one held stack.

The host's speed drifts by tens of percent within a minute, so two versions of the hot path
can only be ranked when they are measured close together, many times, in turn. This holds
the stack of ``gateway_overhead.py`` (fixed upstream, Kafka, PostgreSQL, Redis, budgets,
policy and telemetry on, the worker in its own process at nice 10 on the client core) and
runs one gateway per variant side by side (each on its own port, spool and core 0); each
round measures the upstream directly, then every variant (in a rotating order), at each
concurrency. Output: one JSON object with per-variant medians over the rounds (req/s,
p50/p90/p99, added p50/p99 against the round's direct run, the gateway's CPU per call, the
worker's and the broker's share of a core, Redis reads per answered call, per-core busy
and steal).

A variant is ``NAME`` or ``NAME=SPEC``; SPEC is a comma-separated list of

* ``path:DIR``: the gateway imports ``somaagent`` from DIR (e.g. a ``git worktree``'s src);
* ``python:EXE``: the gateway runs under the interpreter EXE (e.g. another virtualenv's
  ``bin/python`` with the package installed);
* ``env:KEY=VALUE``: extra environment for that gateway (``SOMA_SPOOL_DIR`` too, e.g. a
  tmpfs directory, to see what the spool's disk writes cost);
* ``worker:DIR``: the telemetry worker imports ``somaagent`` from DIR while the variant is
  measured (restarted whenever the next variant wants other code, then waited for until it
  has committed up to the broker's high watermarks);
* ``paused``: the telemetry worker is stopped (SIGSTOP) while the variant is measured; its
  events wait in Kafka;
* ``idle``: the worker's and the broker's threads run under ``SCHED_IDLE`` instead of nice
  10 while the variant is measured;
* ``slice:US``: this variant is measured with the load generator and the upstream asking
  for US µs time slices (``gateway_overhead.Run.instruments_slice``; 0 = the scheduler's
  default) instead of ``--instrument-slice-us``;
* ``gwcore``: the worker moves to the gateway's core under ``SCHED_IDLE`` (it runs only when
  the gateway waits, and leaves the client core to the load generator, Redis and the
  upstream);
* ``load:spin`` / ``load:memory`` / ``load:duty20`` / ``load:wakeups``: a ``SCHED_IDLE``
  process on the client core busy-loops, copies 64 MiB buffers, is busy 1 ms in 5, or wakes
  1,000 times a second doing nothing, while the variant is measured (does work on the
  other core slow the gateway's own?).

Usage: .venv/bin/python benchmarks/alternate.py base old=path:/tmp/old/src \\
           [--levels 1,16] [--rounds 4] [--seconds 6] [--stream] [--long-prompt]

``--stream``: streamed calls (``stream_options.include_usage``); ``--long-prompt``: the
benchmark's 4,000-character prompt instead of the short one.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import gateway_overhead as go  # noqa: E402
from _group_probe import GroupProbe  # noqa: E402
from _procs import cpu_seconds, deprioritize, pin, set_idle  # noqa: E402
from _report import machine  # noqa: E402
from confluent_kafka import ConsumerGroupState  # noqa: E402
from confluent_kafka.admin import AdminClient  # noqa: E402
from redis import Redis  # noqa: E402

# Each synthetic load ends by itself after 10 minutes, should this process die without
# killing it.
_BOUND = "import time\nend = time.monotonic() + 600\n"
LOADS = {
    "spin": _BOUND + "while time.monotonic() < end: pass",
    "memory": _BOUND + "b = bytearray(64 << 20)\nwhile time.monotonic() < end: c = bytes(b)",
    # busy 1 ms of every 5 (a fifth of the core, like the worker at c=1)
    "duty20": _BOUND + "while time.monotonic() < end:\n t = time.perf_counter() + 0.001\n"
    " while time.perf_counter() < t: pass\n time.sleep(0.004)",
    # a thousand wake-ups a second that do nothing
    "wakeups": _BOUND + "while time.monotonic() < end: time.sleep(0.001)",
}
KEYS = (
    "rps",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "cpu_us_per_request",
    "worker_cpu_share",
    "broker_cpu_share",
    "redis_reads_per_call",
    "cpu0_busy",
    "cpu0_steal",
    "cpu1_busy",
    "cpu1_steal",
)


@dataclass
class Variant:
    name: str
    pythonpath: str | None = None
    python: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    paused: bool = False
    idle: bool = False
    gwcore: bool = False
    slice_us: int | None = None
    load: str = ""
    worker: str = ""
    port: int = 0

    @classmethod
    def parse(cls, text: str) -> Variant:
        name, _, spec = text.partition("=")
        variant = cls(name)
        for part in filter(None, spec.split(",")):
            kind, _, value = part.partition(":")
            if kind == "path":
                variant.pythonpath = str(Path(value).resolve())
            elif kind == "python":
                variant.python = value
            elif kind == "env":
                key, _, val = value.partition("=")
                variant.env[key] = val
            elif kind == "worker":
                variant.worker = str(Path(value).resolve())
            elif kind == "slice" and value.isdigit():
                variant.slice_us = int(value)
            elif kind == "load" and value in LOADS:
                variant.load = value
            elif kind in ("paused", "idle", "gwcore"):
                setattr(variant, kind, True)
            else:
                raise SystemExit(
                    f"unknown variant part {part!r}"
                    " (path:, python:, env:, worker:, paused, idle, gwcore, slice:, load:)"
                )
        return variant


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="+", help="NAME[=SPEC]; see the module docstring")
    parser.add_argument("--levels", default="1,16")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=6.0, help="measured s per run")
    parser.add_argument("--stream", action="store_true", help="streamed calls (include_usage)")
    parser.add_argument("--long-prompt", action="store_true", help="the 4,000-character prompt")
    parser.add_argument(
        "--instrument-slice-us", type=int, default=100, help="as in gateway_overhead.py"
    )
    parser.add_argument(
        "--rest-s", type=float, default=0.0, help="idle seconds before each variant's run"
    )
    return parser.parse_args()


def start_variant(run: go.Run, variant: Variant, index: int) -> str:
    """Start the variant's gateway on core 0; its chat URL."""
    state = run.settings.state_dir
    variant.port = run.settings.port("gateway_port") + 20 + index
    env = {
        **run.env,
        "SOMA_SPOOL_DIR": str(state / f"spool-{variant.name}"),  # a variant may move it
        **variant.env,
        "SOMA_WORKER_IN_GATEWAY": "false",
        "SOMA_GATEWAY_PORT": str(variant.port),
    }
    if variant.pythonpath:
        env["PYTHONPATH"] = variant.pythonpath
    name = f"gateway-{variant.name}"
    argv = [variant.python, *run.gateway_argv[1:]] if variant.python else run.gateway_argv
    run.children.start(name, argv, core=go.PROXY_CORE, env=env, cwd=go.ROOT)
    run.children.wait_http(name, f"http://{go.HOST}:{variant.port}/v1/models", 120)
    return f"http://{go.HOST}:{variant.port}/v1/chat/completions"


@dataclass
class WorkerCode:
    """Which code the telemetry worker runs: a variant's ``worker:DIR``, or the default."""

    run: go.Run
    background: list[int]  # the worker's pid first (replaced on a restart), then the broker
    current: str = ""
    behind: bool = False  # a measured variant left events the worker has not stored yet

    def use(self, path: str) -> None:
        """Restart the worker from ``path`` unless it runs that code (a restarted one is
        waited for until it has caught up; otherwise ``catch_up`` before each run does)."""
        if path == self.current:
            return
        self.run.children.stop("worker")
        self.run.start_worker(pythonpath=path or None)
        self.background[0] = self.run.children.pid("worker")
        deprioritize([self.background[0]], go.BACKGROUND_NICE)
        self.current = path
        self._caught_up(restarted=True)

    def catch_up(self) -> None:
        """Until the worker has stored what the runs so far left in Kafka."""
        if self.behind:
            self._caught_up(restarted=False)

    def _caught_up(self, *, restarted: bool, timeout_s: float = 90.0) -> None:
        """Until the worker (a new one: in the group) has committed up to the high
        watermarks (Tansu's trail the log by its last batch, see ``go.telemetry_check``: up
        to one produce request's events may still be stored after this returns)."""
        self.behind = False
        settings = self.run.settings
        bootstrap = settings.url("kafka_bootstrap")
        admin = AdminClient({"bootstrap.servers": bootstrap})
        group, started = settings.worker_group, time.monotonic()
        deadline = started + timeout_s
        # Tansu reports the group EMPTY once the old member left, then UNKNOWN while the new
        # one joins, then STABLE (about 5 s).
        joining = False
        while restarted and time.monotonic() < deadline:
            state = admin.describe_consumer_groups([group])[group].result(timeout=5).state
            joining = joining or state != ConsumerGroupState.STABLE
            if state == ConsumerGroupState.STABLE and (joining or time.monotonic() - started > 8):
                break
            time.sleep(0.25)
        topics = [settings.topics.slm_metrics, settings.topics.conversation_metrics]
        with GroupProbe(settings, topics) as probe:
            while time.monotonic() < deadline:
                if all(c >= end for c, end in probe.progress()):
                    return
                time.sleep(0.25)
        raise RuntimeError(f"the restarted worker did not catch up in {timeout_s:.0f} s")


@contextlib.contextmanager
def conditions(variant: Variant, background: list[int]) -> Iterator[None]:
    """The variant's conditions on the worker and the client core, undone afterwards."""
    worker, nice = background[0], go.BACKGROUND_NICE
    with contextlib.ExitStack() as undo:
        if variant.paused:
            os.kill(worker, signal.SIGSTOP)
            undo.callback(os.kill, worker, signal.SIGCONT)
        if variant.idle:
            set_idle(background, True, nice)
            undo.callback(set_idle, background, False, nice)
        if variant.gwcore:  # undone last in, first out: back to nice 10, then to core 1
            pin([worker], go.PROXY_CORE)
            undo.callback(pin, [worker], go.CLIENT_CORE)
            set_idle([worker], True, nice)
            undo.callback(set_idle, [worker], False, nice)
        if variant.load:
            load = subprocess.Popen([sys.executable, "-c", LOADS[variant.load]])
            os.sched_setscheduler(load.pid, os.SCHED_IDLE, os.sched_param(0))
            undo.callback(load.wait)
            undo.callback(load.kill)
        yield


def measure_variant(
    run: go.Run, variant: Variant, url: str, body: bytes, concurrency: int, workers: WorkerCode
) -> dict[str, Any]:
    """One run of ``variant``, with the worker running the variant's code."""
    workers.use(variant.worker)
    background = workers.background
    before = [cpu_seconds(pid) for pid in background]
    redis = Redis.from_url(run.settings.url("redis_url"))
    reads = int(redis.info("stats")["total_reads_processed"])
    with conditions(variant, background):
        out = run.measure(
            variant.name, url, body, concurrency,
            pid_name=f"gateway-{variant.name}", slice_us=variant.slice_us,
        )  # fmt: skip
        # warm-up included: reads Redis served per answered call (a settle sharing the
        # next reservation's write makes one read of two commands)
        served = int(redis.info("stats")["total_reads_processed"]) - reads
        out["redis_reads_per_call"] = round(served / max(1, run.last.ok_total), 3)
        spent = [cpu_seconds(pid) - b for pid, b in zip(background, before, strict=True)]
        # the warm-up and the measured window: what the worker and broker used per second
        wall = run.last.elapsed_s + run.args.warmup
        out["worker_cpu_share"] = round(spent[0] / wall, 3)
        out["broker_cpu_share"] = round(sum(spent[1:]) / wall, 3)
    # Its events (or, paused, its backlog) are still being stored: the next run, direct
    # included, waits for that instead of sharing the client core with it (the run
    # measured second in a round had a p99 about 2x the first's, whatever its code).
    workers.behind = True
    redis.close()
    for core, shares in out.pop("cores", {}).items():
        for kind, share in shares.items():
            out[f"{core}_{kind}"] = share
    ordered = sorted(run.last.latencies_ms)
    out["p90_ms"] = round(ordered[int(len(ordered) * 0.9)], 3) if ordered else 0.0
    return out


def summarize(rows: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ["direct", *names]:
        med: dict[str, Any] = {
            k: round(statistics.median(r[name].get(k, 0.0) for r in rows), 3) for k in KEYS
        }
        if name != "direct":
            for k in ("p50_ms", "p99_ms"):
                med[f"added_{k}"] = round(
                    statistics.median(r[name][k] - r["direct"][k] for r in rows), 3
                )
            med["rounds_p99"] = [r[name]["p99_ms"] for r in rows]
        out[name] = med
    return out


def main() -> None:
    ns = parse_args()
    variants = [Variant.parse(v) for v in ns.variants]
    run, supervisor = go.held_run(ns.seconds, litellm=False)
    run.args.instrument_slice_us = ns.instrument_slice_us
    started = time.monotonic()
    report: dict[str, Any] = {"benchmark": "alternate", "machine": machine()}
    try:
        go.start_client_side(run, supervisor)
        broker = supervisor.record("kafka")
        workers = WorkerCode(run, [run.children.pid("worker"), *([broker.pid] if broker else [])])
        report["budgets"] = go.create_budgets(run)
        urls = {v.name: start_variant(run, v, i) for i, v in enumerate(variants)}
        prompt = go.LONG_PROMPT if ns.long_prompt else None
        body = go.chat_body(go.FIXED_MODEL, stream=ns.stream, prompt=prompt)
        for v in variants:  # warm every gateway (connections, caches) before measuring
            measure_variant(run, v, urls[v.name], body, 16, workers)
        report["levels"] = {}
        for c in (int(x) for x in ns.levels.split(",") if x):
            rows = []
            for i in range(ns.rounds):
                workers.catch_up()
                row = {"direct": run.measure("direct", run.upstream_url, body, c)}
                for v in variants[i % len(variants) :] + variants[: i % len(variants)]:
                    workers.catch_up()
                    time.sleep(ns.rest_s)
                    row[v.name] = measure_variant(run, v, urls[v.name], body, c, workers)
                rows.append(row)
            report["levels"][str(c)] = summarize(rows, [v.name for v in variants])
    finally:
        run.children.stop_all()
        supervisor.down()
    report["config"] = {
        "variants": [vars(v) for v in variants],
        "rounds": ns.rounds,
        "measured_s": ns.seconds,
        "seconds_total": round(time.monotonic() - started, 1),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
