"""Gateway overhead: added latency and requests/s versus the upstream and the LiteLLM proxy.

One run measures, against the same fixed-response OpenAI-compatible upstream
(``_fixed_upstream.py``: uvloop + httptools, answers with ``usage``):

* direct: the load generator calls the upstream itself (the baseline and its capacity);
* gateway: ``python -m somaagent.entrypoints.gateway`` with telemetry on (every call is
  validated, written to the spool and produced to Kafka; the telemetry worker runs as its
  own process and stores into ClickHouse) and budgets and policy on (``enforce``: the
  caller's tenant has a daily and a monthly budget, every call is evaluated by the OPA
  engine in-process, reserved and settled in Redis, its charge written to Postgres);
* litellm: the LiteLLM proxy (pinned version, own virtualenv), one uvicorn worker.

The gateway and LiteLLM run pinned to core 0; the load generator (this process), the
upstream, Kafka, PostgreSQL and the telemetry worker to core 1. Each level (concurrency 1,
16, 64, closed loop over keep-alive connections) warms up, then records until a request
count or a time limit. "Added" latency is the proxy's p50/p99 minus the p50/p99 of the
direct run measured just before it at the same concurrency (LiteLLM gets a direct run of its
own, after the worker has stored our run's events). While measuring, the load generator and
the upstream ask for short time slices (``Run.instruments_slice``). Also: a streamed level,
a level with a 4,000-character prompt (the gateway's pre-classifier reads every prompt), the
gateway with the worker inside its process
(the LOCAL default), and the real-model case (``_real_model.py``: llama-server with the
primary model, alone on core 1 while everything else shares core 0; gateway throughput must
be at least 98% of calling it directly, judged side by side: half the clients direct, half
through the gateway, at the same time; sequential rounds are reported too).

Prints one JSON object on stdout; progress on stderr.
Usage: .venv/bin/python benchmarks/gateway_overhead.py [--duration 8] [--no-real-model]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import uvloop
from confluent_kafka.admin import AdminClient

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

import _litellm  # noqa: E402
from _group_probe import GroupProbe  # noqa: E402
from _loadgen import LevelResult, run_level  # noqa: E402
from _procs import Children, deprioritize, log, own_threads, set_slice  # noqa: E402
from _real_model import MAX_TOKENS, REAL_MODEL, real_model  # noqa: E402
from _report import CLIENT_CORE, PROXY_CORE, added, machine, ratio, verdict  # noqa: E402

from somaagent.settings import Settings, load_settings  # noqa: E402
from somaagent.stack import Supervisor  # noqa: E402

FIXED_MODEL = "bench-fixed"
HOST = "127.0.0.1"
BACKGROUND_NICE = 10  # the telemetry worker's and the broker's (see measure_all)

CATALOG = """version: 1
models:
  - model_id: {fixed}
    display_name: Fixed-response benchmark upstream
    tier: primary
    enabled: true
    base_url: {fixed_url}
    revision: bench-fixed@sha256:{zeros}
    context_window: 8192
    pricing:
      gpu_hour_usd: "0.10"
      gpus: 1
    latency_sla_ms:
      default: 5000
    license: Apache-2.0
    tags: [bench]
  - model_id: {real}
    display_name: SmolLM2 135M Instruct (llama.cpp, Q4_1)
    tier: primary
    enabled: true
    base_url: ${{PRIMARY_MODEL_URL}}
    revision: SmolLM2-135M-Instruct.Q4_1.gguf@sha256:{real_sha}
    context_window: 8192
    pricing:
      gpu_hour_usd: "0.10"
      gpus: 1
    latency_sla_ms:
      default: 5000
    license: Apache-2.0
    tags: [bench, local]
"""

RATECARDS = """version: 1
cards:
  - version: "bench-1"
    effective_from: "2026-01-01T00:00:00Z"
    source: "benchmark"
    models:
      {fixed}: {{gpu_hour_usd: "0.10", gpus: 1, max_ms_per_token: "250"}}
      {real}: {{gpu_hour_usd: "0.10", gpus: 1, max_ms_per_token: "250"}}
"""


# A 4,000-character user turn (prose, as chat history or pasted context would be).
LONG_PROMPT = (
    "Here is the customer's message thread so far; summarise what they asked for, what we "
    "promised, and what is still open. " * 40
)[:4000]


def chat_body(
    model: str, *, stream: bool = False, max_tokens: int = 16, prompt: str | None = None
) -> bytes:
    body: dict[str, Any] = {
        "model": model,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": prompt or "Say hello in one short sentence."},
        ],
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return orjson.dumps(body)


class Run:
    """The processes and parameters of one benchmark run."""

    def __init__(self, args: argparse.Namespace, settings: Settings, env: dict[str, str]):
        self.args = args
        self.settings = settings
        self.env = env
        self.children = Children(settings.state_dir / "bench-logs")
        self.upstream_port = args.port_base + 1
        self.litellm_port = args.port_base + 2
        self.gateway_url = f"http://{HOST}:{settings.port('gateway_port')}/v1/chat/completions"
        self.upstream_url = f"http://{HOST}:{self.upstream_port}/v1/chat/completions"
        self.litellm_url = f"http://{HOST}:{self.litellm_port}/v1/chat/completions"
        self.gateway_ok = 0
        self.last = LevelResult(0)
        # How the gateway is started (``gateway_profile.py --cprofile`` wraps it).
        self.gateway_argv = [sys.executable, "-m", "somaagent.entrypoints.gateway"]

    # ------------------------------------------------------------------ processes
    def start_upstream(self) -> None:
        argv = [
            sys.executable,
            str(BENCH / "_fixed_upstream.py"),
            "--port",
            str(self.upstream_port),
        ]
        self.children.start("upstream", argv, core=CLIENT_CORE, env=self.env)
        self.children.wait_http("upstream", f"http://{HOST}:{self.upstream_port}/v1/models", 20)

    def start_worker(self, pythonpath: str | None = None) -> None:
        """The telemetry worker on the client core (``pythonpath``: import other code)."""
        argv = [sys.executable, "-m", "somaagent.entrypoints.cli", "worker"]
        env = {**self.env, **({"PYTHONPATH": pythonpath} if pythonpath else {})}
        self.children.start("worker", argv, core=CLIENT_CORE, env=env, cwd=ROOT)
        bootstrap = self.settings.url("kafka_bootstrap")
        topic = self.settings.topics.slm_metrics
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # the worker creates the topics and the schema
            topics = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=5).topics
            if topic in topics and self.settings.topics.conversation_metrics in topics:
                time.sleep(2)  # group join
                return
            time.sleep(0.5)
        raise RuntimeError("the telemetry worker did not create its topics in 120 s")

    def start_gateway(self, *, worker_inside: bool, spin_us: int | None = None) -> None:
        env = {
            **self.env,
            "SOMA_WORKER_IN_GATEWAY": "true" if worker_inside else "false",
            "SOMA_GATEWAY_LOOP_SPIN_US": str(self.args.spin_us if spin_us is None else spin_us),
        }
        self.children.start("gateway", self.gateway_argv, core=PROXY_CORE, env=env, cwd=ROOT)
        models = f"http://{HOST}:{self.settings.port('gateway_port')}/v1/models"
        self.children.wait_http("gateway", models, 120)

    def start_litellm(self) -> dict[str, Any]:
        venv = ROOT / ".soma-bench" / "litellm-venv"
        info: dict[str, Any] = {"package": _litellm.PACKAGE}
        try:
            log("preparing LiteLLM (installs into .soma-bench/litellm-venv on the first run)")
            info["version"] = _litellm.ensure_venv(venv, ROOT / ".soma-bench" / "litellm.log")
            config = self.settings.state_dir / "litellm.yaml"
            api_base = f"http://{HOST}:{self.upstream_port}/v1"
            _litellm.write_config(config, model=FIXED_MODEL, api_base=api_base)
            argv, extra = _litellm.command(venv, config, host=HOST, port=self.litellm_port)
            env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/"), **extra}
            self.children.start("litellm", argv, core=PROXY_CORE, env=env, cwd=config.parent)
            health = f"http://{HOST}:{self.litellm_port}/health/liveliness"
            self.children.wait_http("litellm", health, 180)
        except (RuntimeError, OSError) as exc:
            info["status"] = f"not measured: {exc}"
            self.children.stop("litellm")
            return info
        info["status"] = "measured"
        info["features_on"] = _litellm.FEATURES_ON
        info["features_off"] = _litellm.FEATURES_OFF
        return info

    # ------------------------------------------------------------------ measuring
    @contextlib.contextmanager
    def instruments_slice(self, slice_us: int) -> Iterator[None]:
        """While measuring, the load generator's thread and the upstream's threads ask the
        scheduler for ``slice_us`` time slices (0: the default, 1.4 ms here).

        They share the client core with background work (the worker's chDB inserts, the
        broker, PostgreSQL writing session summaries and charges). On this kernel (EEVDF,
        preempt=none, 250 Hz) a thread woken while such work runs waits for the running
        thread's slice to end, at the next tick: up to 4 ms. Nice values do not help: the
        broker and PostgreSQL each run in a session (autogroup) of their own. A thread with
        a shorter slice than the running one preempts it when woken. Only the instruments
        get it, for every target alike (direct, ours, LiteLLM), and only while measuring,
        so nothing started meanwhile inherits it.
        """
        if not slice_us:
            yield
            return
        tids = [threading.get_native_id()]
        if "upstream" in self.children.procs:
            tids += own_threads(self.children.pid("upstream"))
        try:
            set_slice(tids, slice_us * 1000)
        except OSError as exc:  # e.g. another architecture: measured with the default
            log(f"instruments keep the default time slice: {exc}")
            with contextlib.suppress(OSError):
                set_slice(tids, 0)  # those set before the refusal
            yield
            return
        try:
            yield
        finally:
            set_slice(tids, 0)

    def measure(
        self,
        target: str,
        url: str,
        body: bytes,
        concurrency: int,
        *,
        pid_name: str | None = None,
        expect_header: tuple[str, str] | None = None,
        duration_s: float | None = None,
        warmup_s: float | None = None,
        think_s: float = 0.0,
        slice_us: int | None = None,
    ) -> dict[str, Any]:
        pid = self.children.pid(pid_name) if pid_name else None
        with self.instruments_slice(
            self.args.instrument_slice_us if slice_us is None else slice_us
        ):
            result, window = uvloop.run(
                run_level(
                    url,
                    body,
                    concurrency=concurrency,
                    warmup_s=self.args.warmup if warmup_s is None else warmup_s,
                    duration_s=duration_s or self.args.duration,
                    max_requests=self.args.max_requests,
                    expect_header=expect_header,
                    pid=pid,
                    think_s=think_s,
                )
            )
        self.last = result
        out = result.summary()
        if pid and result.latencies_ms:
            out["cpu_us_per_request"] = round(window.pid_cpu_s / len(result.latencies_ms) * 1e6, 1)
            out["cpu_share_of_its_core"] = round(window.pid_cpu_s / max(result.elapsed_s, 1e-9), 3)
        out["cores"] = window.cores()
        if expect_header is not None:
            out[expect_header[0]] = result.header_seen
            out["header_mismatches"] = result.header_mismatches
        if target == "gateway":
            self.gateway_ok += result.ok_total
        log(
            f"{target:8s} c={concurrency:<3d} {out['rps']:>8.1f} rps  p50 {out['p50_ms']:.2f} ms  "
            f"p99 {out['p99_ms']:.2f} ms  errors {out['errors']}"
        )
        return out


def level(
    run: Run,
    concurrency: int,
    *,
    stream: bool,
    litellm: bool,
    prompt: str | None = None,
    slice_us: int | None = None,
) -> dict[str, Any]:
    """Direct, ours and LiteLLM's at one concurrency (``slice_us``: the instruments' time
    slice, when not ``--instrument-slice-us``)."""
    body = chat_body(FIXED_MODEL, stream=stream, prompt=prompt)
    # A stream's headers leave before its usage is known: only the model is checked there.
    usage = ("x-soma-model", FIXED_MODEL) if stream else ("x-soma-usage-source", "reported")
    direct = run.measure(
        "direct", run.upstream_url, body, concurrency, pid_name="upstream", slice_us=slice_us
    )
    ups_cpu = direct["cpu_us_per_request"]
    direct["upstream_capacity_rps_one_core"] = round(1e6 / ups_cpu) if ups_cpu else None
    gateway = run.measure(
        "gateway", run.gateway_url, body, concurrency, pid_name="gateway",
        expect_header=usage, slice_us=slice_us,
    )  # fmt: skip
    row: dict[str, Any] = {"direct": direct, "gateway": added(gateway, direct)}
    if litellm:
        # The worker shares the client core with the instruments: LiteLLM is measured once
        # it has stored the gateway's events, not while it catches up on them.
        row["worker_caught_up_s"] = wait_for_worker(run.settings, run.gateway_ok)
        # And right after a direct run of its own, as ours is: in alternating rounds the
        # proxy measured right after the direct run had the shorter tail, whatever its
        # code (docs/decisions.md, session 29); LiteLLM's added latency is against it.
        again = run.measure(
            "direct", run.upstream_url, body, concurrency, pid_name="upstream", slice_us=slice_us
        )
        row["direct_before_litellm"] = again
        lite = run.measure(
            "litellm", run.litellm_url, body, concurrency, pid_name="litellm", slice_us=slice_us
        )
        row["litellm"] = added(lite, again)
        g, li = row["gateway"], row["litellm"]
        row["ratios_ours_over_litellm"] = {
            "rps": ratio(g["rps"], li["rps"]),
            "added_p50": ratio(g["added_p50_ms"], li["added_p50_ms"]),
            "added_p99": ratio(g["added_p99_ms"], li["added_p99_ms"]),
            "cpu_per_request": ratio(g["cpu_us_per_request"], li["cpu_us_per_request"]),
        }
    row["gateway_rps_over_direct"] = ratio(gateway["rps"], direct["rps"])
    return row


def wait_for_worker(settings: Settings, gateway_ok: int, timeout_s: float = 60.0) -> float:
    """Until the worker has committed an event for every call answered so far (or
    ``timeout_s``); the seconds waited."""
    started = time.monotonic()
    with GroupProbe(settings, [settings.topics.slm_metrics]) as probe:  # an event per call
        while time.monotonic() - started < timeout_s:
            if probe.total() >= gateway_ok:
                break
            time.sleep(0.25)
        else:
            log(f"the worker had not caught up after {timeout_s:.0f} s; measuring anyway")
    return round(time.monotonic() - started, 2)


def telemetry_check(settings: Settings, gateway_ok: int) -> dict[str, Any]:
    """Events in Kafka and committed by the worker versus calls the gateway answered."""
    # Tansu 0.6 answers a ListOffsets for the end of the log with the last batch's base
    # offset + 1 (115 records in batches of 1, 5, 9 and 100 read as 16; measured in session
    # 15), so its high watermarks trail the log by the last batch: the check is the
    # committed offsets, which are exact.
    with GroupProbe(settings, [settings.topics.slm_metrics]) as probe:
        # Publishing is asynchronous (spool first, then Kafka): wait until the worker has
        # committed every call's event or nothing moves for 10 s.
        produced = committed = -1
        last_change = time.monotonic()
        while time.monotonic() - last_change < 10:
            progress = probe.progress()
            now_committed = sum(c for c, _ in progress)
            now_produced = sum(end for _, end in progress)
            if (now_produced, now_committed) != (produced, committed):
                produced, committed, last_change = now_produced, now_committed, time.monotonic()
            if committed >= gateway_ok:
                break
            time.sleep(0.5)
    return {
        "gateway_calls_answered": gateway_ok,
        "slm_metrics_high_watermarks": produced,
        "slm_metrics_committed_by_worker": committed,
        "one_event_per_call": committed == gateway_ok,
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="1,16,64")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=8.0, help="max measured s per run")
    parser.add_argument("--max-requests", type=int, default=40_000)
    parser.add_argument("--port-base", type=int, default=26400)
    parser.add_argument("--no-litellm", action="store_true")
    parser.add_argument("--no-stream", action="store_true")
    parser.add_argument("--no-long-prompt", action="store_true")
    parser.add_argument("--no-worker-inside", action="store_true")
    parser.add_argument("--no-real-model", action="store_true")
    parser.add_argument(
        "--spin-us",
        type=int,
        default=1000,
        help="the gateway's SOMA_GATEWAY_LOOP_SPIN_US (it owns core 0); 0 = the default, off",
    )
    parser.add_argument(
        "--instrument-slice-us",
        type=int,
        default=100,
        help="time slice the load generator and the upstream ask for while measuring (see"
        " Run.measure); 0 = the scheduler's default",
    )
    parser.add_argument(
        "--no-budgets", action="store_true", help="no budget for the caller (policy still runs)"
    )
    parser.add_argument("--real-concurrency", type=int, default=4)
    parser.add_argument(
        "--real-windows", type=int, default=8, help="side-by-side windows (the verdict)"
    )
    parser.add_argument("--real-window-s", type=float, default=8.0, help="s per window")
    parser.add_argument(
        "--real-duration", type=float, default=24.0, help="sequential: measured s per side"
    )
    parser.add_argument("--real-rounds", type=int, default=4, help="sequential: rounds")
    return parser.parse_args()


def prepare(args: argparse.Namespace) -> tuple[Settings, dict[str, str]]:
    """A fresh state directory with the benchmark catalog; the children's environment."""
    state = ROOT / ".soma-bench" / "gateway"
    env = {
        **os.environ,
        "SOMA_STATE_DIR": str(state),
        "SOMA_PORT_BASE": str(args.port_base),
        "SOMA_WORKER_GROUP": f"bench-{uuid.uuid4().hex[:6]}",
        "SOMA_CATALOG_FILE": str(state / "catalog.yaml"),
        "SOMA_RATECARDS_FILE": str(state / "ratecards.yaml"),
        "SOMA_POLICY_MODE": "enforce",
        "GOGC": "400",  # as `soma up` starts the gateway (the OPA engine is Go)
        "SOMA_MODEL_THREADS": "1",
    }
    settings = load_settings(env)
    if state.exists():
        Supervisor(settings).down()
        shutil.rmtree(state)
    state.mkdir(parents=True)
    (state / "catalog.yaml").write_text(
        CATALOG.format(
            fixed=FIXED_MODEL,
            fixed_url=f"http://{HOST}:{args.port_base + 1}/v1",
            zeros="0" * 64,
            real=REAL_MODEL,
            real_sha=settings.primary_model_sha256,
        )
    )
    (state / "ratecards.yaml").write_text(RATECARDS.format(fixed=FIXED_MODEL, real=REAL_MODEL))
    return settings, env


def create_budgets(run: Run) -> list[str]:
    """A daily and a monthly budget for the benchmark's (anonymous LOCAL) tenant, large
    enough that every call is admitted: each call still reserves, settles and is charged."""
    ids = []
    for window in ("daily", "monthly"):
        argv = [
            sys.executable,
            "-m",
            "somaagent.entrypoints.cli",
            "budgets",
            "create",
            "--tenant",
            run.settings.anonymous_tenant,
            "--window",
            window,
            "--tz",
            "UTC",
            "--tokens",
            str(10**13),
            "--usd",
            "900000",
        ]
        out = subprocess.run(argv, env=run.env, cwd=ROOT, capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"budgets create failed: {out.stderr.strip() or out.stdout}")
        ids.append(out.stdout.strip().splitlines()[-1])
    return ids


def start_client_side(run: Run, supervisor: Supervisor) -> None:
    """Kafka, PostgreSQL, Redis, the fixed upstream and the telemetry worker (client core)."""
    supervisor.up(only=["kafka", "postgres", "redis"])
    run.start_upstream()
    run.start_worker()
    # The telemetry pipeline (worker, broker) shares the client core with the load
    # generator, Redis and the upstream. It is asynchronous by design (spool, Kafka, lag):
    # at a lower priority its batches no longer stall the request path's processes there.
    broker = supervisor.record("kafka")
    deprioritize([run.children.pid("worker"), *([broker.pid] if broker else [])], BACKGROUND_NICE)


def held_run(seconds: float, *, litellm: bool) -> tuple[Run, Supervisor]:
    """A run of this benchmark's stack for another script that measures its own way
    (``c1_floor.py``, ``alternate.py``): ``seconds`` measured per run, 1 s of warm-up, no
    levels of its own; this process pinned to the client core."""
    argv = ["--no-real-model", "--levels", "", "--no-stream", "--no-long-prompt"]
    argv += ["--no-worker-inside", *([] if litellm else ["--no-litellm"])]
    sys.argv = [sys.argv[0], *argv]
    args = parse_args()
    args.duration, args.warmup = seconds, 1.0
    os.sched_setaffinity(0, {CLIENT_CORE})
    settings, env = prepare(args)
    return Run(args, settings, env), Supervisor(settings, progress=log)


def measure_all(run: Run, supervisor: Supervisor, report: dict[str, Any]) -> None:
    """Every measurement of the run, in order, into ``report``."""
    args = run.args
    start_client_side(run, supervisor)
    report["budgets"] = [] if args.no_budgets else create_budgets(run)
    run.start_gateway(worker_inside=False)
    lite = {"status": "skipped (--no-litellm)"} if args.no_litellm else run.start_litellm()
    with_litellm = lite["status"] == "measured"
    report["litellm"] = lite
    report["levels"] = {
        c: level(run, int(c), stream=False, litellm=with_litellm)
        for c in args.levels.split(",")
        if c
    }
    if args.instrument_slice_us and "1" in args.levels.split(","):
        # c=1 once more, every target measured with the scheduler's default slices
        report["c1_default_slices"] = level(run, 1, stream=False, litellm=with_litellm, slice_us=0)
    if not args.no_stream:
        report["streaming_c16"] = level(run, 16, stream=True, litellm=with_litellm)
    if not args.no_long_prompt:
        report["prompt_4000_chars_c16"] = level(
            run, 16, stream=False, litellm=with_litellm, prompt=LONG_PROMPT
        )
    run.children.stop("litellm")
    report["real_model"] = (
        {"status": "skipped (--no-real-model)"}
        if args.no_real_model
        else real_model(run, supervisor, chat_body(REAL_MODEL, max_tokens=MAX_TOKENS))
    )
    if args.spin_us and "1" in args.levels.split(","):
        # The c=1 level once more with the gateway's loop sleeping whenever it waits (the
        # setting's default): what the polling window is worth.
        run.children.stop("gateway")
        run.start_gateway(worker_inside=False, spin_us=0)
        report["gateway_c1_without_loop_spin"] = level(run, 1, stream=False, litellm=False)
    report["telemetry"] = telemetry_check(run.settings, run.gateway_ok)
    if not args.no_worker_inside:
        run.children.stop("gateway")
        run.children.stop("worker")
        run.start_gateway(worker_inside=True)
        report["gateway_worker_in_process_c16"] = level(run, 16, stream=False, litellm=False)


def main() -> None:
    args = parse_args()
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("needs two cores (proxy on core 0, client side on core 1)")
    # Everything started from here (stack, upstream, worker) inherits core 1; the proxies
    # under test are started with taskset -c 0.
    os.sched_setaffinity(0, {CLIENT_CORE})
    settings, env = prepare(args)
    run = Run(args, settings, env)
    supervisor = Supervisor(settings, progress=log)
    started = time.monotonic()
    report: dict[str, Any] = {"benchmark": "gateway_overhead", "machine": machine()}
    failed = False
    try:
        measure_all(run, supervisor, report)
    except Exception as exc:  # noqa: BLE001 - the JSON says what failed; exit status too
        report["error"] = f"{type(exc).__name__}: {exc}"
        failed = True
    finally:
        run.children.stop_all()
        supervisor.down()
    report["config"] = {
        "warmup_s": args.warmup,
        "max_measured_s": args.duration,
        "max_requests": args.max_requests,
        "request": "non-streamed chat completion, 2 messages, max_tokens 16 (streamed: "
        "stream_options.include_usage)",
        "telemetry": "on: validated slm.metrics + conversation.metrics per call, spool + Kafka",
        "headline_worker": "separate process on core 1 (levels); worker inside the gateway "
        "process: gateway_worker_in_process_c16",
        "budgets": "on: 2 budgets (daily, monthly) per call, reserved and settled against "
        "allotments of 64 calls held in Redis (the default: SOMA_BUDGET_ALLOTMENT_CALLS; "
        "an allotment's open and close are Redis scripts), OPA verdict in-process "
        "(enforce), charge to Postgres, policy.events per call",
        "auth": "anonymous caller (LOCAL) on the gateway; no master key on LiteLLM",
        "load_generator": "aiohttp closed loop, keep-alive pool of `concurrency` connections",
        "background_nice": f"worker and Kafka broker at nice {BACKGROUND_NICE} (client core;"
        " the broker and PostgreSQL run in sessions of their own, autogroups, where a nice"
        " value orders only their own threads)",
        "instrument_slice_us": f"{args.instrument_slice_us} (the load generator's and the"
        " upstream's threads ask for this time slice while measuring, for every target alike:"
        " woken, they preempt background work on the client core instead of waiting up to a"
        " 4 ms tick; 0 = the default; c=1 with the default: c1_default_slices)",
        "gateway_loop_spin_us": f"{args.spin_us} (polls instead of sleeping for this long "
        "after it last worked: it owns core 0; 0 = off, the setting's default; c=1 without "
        "it: gateway_c1_without_loop_spin)",
        "seconds_total": round(time.monotonic() - started, 1),
    }
    report["target"] = verdict(report)
    print(json.dumps(report, indent=2))
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
