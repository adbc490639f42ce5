"""Every file under infra/observability validates with the real promtool/amtool, the alert
rules behave on synthetic series (promtool's rule unit tests), and every metric a dashboard
or rule reads is one the code exposes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from string import Template
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from somaagent.adapters.kafka_consumer import ConsumerStats
from somaagent.adapters.kafka_publisher import PublisherStats
from somaagent.domain.routing import Concurrency
from somaagent.observability import GatewayMetrics
from somaagent.service.upstream_slots import UpstreamSlots
from somaagent.service.worker import WorkerStats
from tests.integration._promql import grouping_labels, selectors

ROOT = Path(__file__).resolve().parents[2]
OBS = ROOT / "infra" / "observability"
PROFILES = ("local", "development", "enterprise")
# Labels Prometheus itself attaches to every scraped series.
TARGET_LABELS = frozenset({"job", "instance"})

PROMETHEUS_VALUES = {
    "gateway_target": "127.0.0.1:29500",
    "prometheus_target": "127.0.0.1:29590",
    "alertmanager_target": "127.0.0.1:29593",
    "primary_model_target": "127.0.0.1:29581",
    "escalation_model_target": "127.0.0.1:29582",
    "gateway_url": "http://127.0.0.1:29500",
    "cluster": "dev-eu-1",
    "region": "eu-west-1",
    "replica": "prometheus-0",
    "namespace": "dev",
    "monitoring_namespace": "monitoring",
    "model_namespace": "soma-escalation-llm",
    "thanos_receive_url": "http://thanos-receive.monitoring.svc:19291/api/v1/receive",
}
ALERTMANAGER_VALUES = {
    "alert_webhook_url": "http://127.0.0.1:29599/alerts",
    "chat_webhook_url": "https://chat.example.invalid/hooks/soma-dev",
    "paging_webhook_url": "https://pager.example.invalid/v2/enqueue",
    "ticket_webhook_url": "https://tickets.example.invalid/hooks/soma",
}


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


def render(source: Path, target: Path, values: dict[str, str]) -> Path:
    """Fill ``${...}`` the way ``soma up`` does: a missing value is an error, not a blank."""
    target.write_text(Template(source.read_text()).substitute(values))
    return target


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    """The rule files copied as ``stack.render`` copies them."""
    rules = tmp_path / "rules"
    rules.mkdir()
    for rule_file in sorted(OBS.glob("*rules*.yml")) + sorted(OBS.glob("alerts*.yml")):
        shutil.copyfile(rule_file, rules / rule_file.name)
    return rules


@pytest.mark.parametrize("profile", PROFILES)
def test_prometheus_config_validates(profile: str, tmp_path: Path, rules_dir: Path) -> None:
    values = {**PROMETHEUS_VALUES, "rules_dir": str(rules_dir)}
    config = render(OBS / f"prometheus.{profile}.yml", tmp_path / "prometheus.yml", values)
    check = run("promtool", "check", "config", str(config))
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 2 rule files found" in check.stdout
    parsed = yaml.safe_load(config.read_text())
    jobs = {job["job_name"] for job in parsed["scrape_configs"]}
    assert {"soma-gateway", "soma-worker", "model-servers"} <= jobs
    if profile == "enterprise":
        assert parsed["remote_write"][0]["url"] == PROMETHEUS_VALUES["thanos_receive_url"]
    else:
        assert "remote_write" not in parsed


def test_rule_files_validate() -> None:
    check = run(
        "promtool", "check", "rules", str(OBS / "recording_rules.yml"), str(OBS / "alerts.yml")
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_rule_unit_tests_pass() -> None:
    """TelemetryWorkerDown after 1m of up==0, budgets at 80%/100%, and every other alert."""
    check = run("promtool", "test", "rules", str(OBS / "tests" / "alerts_test.yml"))
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS" in check.stdout


def _alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((OBS / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_every_alert_is_unit_tested_firing() -> None:
    suite = yaml.safe_load((OBS / "tests" / "alerts_test.yml").read_text())
    fired = {
        case["alertname"]
        for test in suite["tests"]
        for case in test.get("alert_rule_test", [])
        if case["exp_alerts"]
    }
    assert {rule["alert"] for rule in _alert_rules()} <= fired


def test_alert_rules_carry_severity_and_annotations() -> None:
    rules = {rule["alert"]: rule for rule in _alert_rules()}
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in ("warning", "page"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
    worker = rules["TelemetryWorkerDown"]
    assert (worker["expr"], worker["for"]) == ('up{job="soma-worker"} == 0', "1m")
    for name in ("BudgetAt80Percent", "BudgetExhausted"):
        assert rules[name].get("for", "0s") == "0s"  # a breach is a fact: alert at once
        assert "soma_budget_remaining_ratio" in rules[name]["expr"]


@pytest.fixture
def rendered_alertmanagers(tmp_path: Path) -> dict[str, Path]:
    return {
        profile: render(
            OBS / f"alertmanager.{profile}.yml",
            tmp_path / f"alertmanager.{profile}.yml",
            ALERTMANAGER_VALUES,
        )
        for profile in PROFILES
    }


@pytest.mark.parametrize("profile", PROFILES)
def test_alertmanager_config_validates(
    profile: str, rendered_alertmanagers: dict[str, Path]
) -> None:
    check = run("amtool", "check-config", str(rendered_alertmanagers[profile]))
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.parametrize(
    ("profile", "labels", "receivers"),
    [
        ("local", ["severity=page", "alertname=TelemetryWorkerDown"], "local-webhook"),
        ("local", ["severity=warning", "alertname=BudgetAt80Percent"], "local-webhook"),
        ("development", ["severity=page", "alertname=TelemetryWorkerDown"], "dev-chat"),
        ("development", ["severity=warning", "alertname=RefusalSpike"], "dev-chat"),
        ("enterprise", ["severity=page", "alertname=TelemetryWorkerDown"], "pager,tickets"),
        ("enterprise", ["severity=warning", "alertname=RefusalSpike"], "tickets"),
    ],
)
def test_alert_routes_differ_by_profile(
    profile: str, labels: list[str], receivers: str, rendered_alertmanagers: dict[str, Path]
) -> None:
    """Development warns (chat/webhook); only enterprise pages."""
    config = str(rendered_alertmanagers[profile])
    routed = run("amtool", "config", "routes", "test", f"--config.file={config}",
                 f"--verify.receivers={receivers}", *labels)  # fmt: skip
    assert routed.returncode == 0, routed.stdout + routed.stderr


def test_local_alertmanager_sends_to_the_rendered_webhook(
    rendered_alertmanagers: dict[str, Path],
) -> None:
    parsed = yaml.safe_load(rendered_alertmanagers["local"].read_text())
    (receiver,) = parsed["receivers"]
    assert receiver["webhook_configs"][0]["url"] == ALERTMANAGER_VALUES["alert_webhook_url"]


# ---------------------------------------------------------------- metric names


def exposed_series() -> dict[str, frozenset[str]]:
    """Sample name -> label names, from a GatewayMetrics with every method called once."""
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry, label_limits={"persona": 1})
    metrics.record_call(
        tenant="acme", persona="coder", model="smollm2", tier="primary", status="ok",
        input_tokens=12, output_tokens=30, duration_s=0.8, cost_usd=Decimal("0.00042"),
        ttft_s=0.1, server_address="127.0.0.1", server_port=18081, response_model="smollm2",
    )  # fmt: skip
    metrics.record_call(
        tenant="acme", persona="coder", model="smollm2", tier="primary", status="upstream_error",
        input_tokens=None, output_tokens=None, duration_s=0.2, cost_usd=Decimal(0),
        error_type="timeout",
    )  # fmt: skip
    metrics.record_call(  # a second persona overflows the cap of 1: "other", counted
        tenant="acme", persona="writer", model="smollm2", tier="primary", status="refused",
        input_tokens=None, output_tokens=None, duration_s=0.0, cost_usd=Decimal(0),
    )  # fmt: skip
    metrics.record_policy("deny", 0.0004)
    metrics.record_escalation("high_complexity")
    metrics.record_rate_limited("acme", "requests")
    metrics.record_model_rate_limited("smollm2", "tokens")
    metrics.record_fallback("smollm2", "qwen2.5-coder-0.5b-instruct")
    metrics.record_audio_failure("asr_error")
    metrics.set_budget_remaining(tenant="acme", persona="-", window="day", ratio=0.5)
    metrics.set_dependency("kafka", True)
    slots = UpstreamSlots(Concurrency(max_in_flight=4, max_queued=8, max_wait_ms=1000))
    metrics.watch_slots(lambda: {"smollm2": slots.snapshot()})
    metrics.collect_pipeline(
        publisher_stats=PublisherStats(published=3, delivered=3),
        spool_depth=0,
        spool_writable=True,
        worker_stats=WorkerStats(batches=1, stored=3, dead_letters=1, by_reason={"schema": 1}),
        consumer_stats=ConsumerStats(lag={"llm.escalation.metrics": 0}),
    )
    out: dict[str, set[str]] = {}
    for family in registry.collect():
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    return {name: frozenset(labels) for name, labels in out.items()}


def recorded_series() -> dict[str, frozenset[str]]:
    groups = yaml.safe_load((OBS / "recording_rules.yml").read_text())["groups"]
    return {
        rule["record"]: grouping_labels(rule["expr"])
        for group in groups
        for rule in group["rules"]
        if "record" in rule
    }


def rule_expressions() -> Iterator[tuple[str, str]]:
    for path in sorted(OBS.glob("*rules*.yml")) + sorted(OBS.glob("alerts*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                yield f"{path.name}:{rule.get('record') or rule.get('alert')}", rule["expr"]


def dashboard_expressions() -> Iterator[tuple[str, str]]:
    paths = sorted((OBS / "grafana").glob("*.json"))
    assert {p.stem for p in paths} >= {"spend", "latency", "escalations", "budgets", "pipeline"}
    for path in paths:
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                yield f"{path.name}:{panel['title']}", target["expr"]
        for variable in board["templating"]["list"]:
            if variable["type"] == "query":
                yield f"{path.name}:${variable['name']}", variable["query"]["query"]


_LABEL_REPLACE_TARGET = re.compile(r'label_replace\([^,]+,\s*"(\w+)"')


def test_dashboards_and_rules_read_only_exposed_metrics() -> None:
    exposed = exposed_series()
    known = {**exposed, **recorded_series(), "up": frozenset()}
    used_families: set[str] = set()
    problems = []
    for where, expr in [*dashboard_expressions(), *rule_expressions()]:
        expr_labels: set[str] = set(_LABEL_REPLACE_TARGET.findall(expr)) | TARGET_LABELS
        for selector in selectors(expr):
            if selector.name not in known:
                problems.append(f"{where}: unknown metric {selector.name}")
                continue
            allowed = known[selector.name] | TARGET_LABELS
            if selector.name in exposed or selector.name == "up":
                used_families.add(selector.name)
            if unknown := selector.labels - allowed:
                problems.append(f"{where}: {selector.name} has no label(s) {sorted(unknown)}")
            expr_labels |= allowed
        if unknown := grouping_labels(expr) - expr_labels:
            problems.append(f"{where}: groups by missing label(s) {sorted(unknown)}")
    assert not problems, "\n".join(problems)
    # And the other way round: every soma_*/gen_ai_* family is shown or alerted on somewhere.
    families = {re.sub(r"_(bucket|sum|count|created|total)$", "", n) for n in exposed}
    shown = {re.sub(r"_(bucket|sum|count|created|total)$", "", n) for n in used_families}
    assert families - shown == set(), f"metrics no dashboard or rule uses: {families - shown}"


def test_local_jobs_split_the_shared_endpoint_without_double_counting(
    tmp_path: Path, rules_dir: Path
) -> None:
    """In LOCAL both jobs scrape the gateway: each series must be kept by exactly one job."""
    values = {**PROMETHEUS_VALUES, "rules_dir": str(rules_dir)}
    config = yaml.safe_load(
        render(OBS / "prometheus.local.yml", tmp_path / "p.yml", values).read_text()
    )
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}

    def kept(job: str, name: str) -> bool:
        for rule in jobs[job].get("metric_relabel_configs", []):
            matched = re.fullmatch(rule["regex"], name) is not None
            if rule["action"] == "keep" and not matched:
                return False
            if rule["action"] == "drop" and matched:
                return False
        return True

    for name in exposed_series():
        owners = [job for job in ("soma-gateway", "soma-worker") if kept(job, name)]
        if name.endswith("_created"):
            assert owners == [], name
        else:
            assert len(owners) == 1, (name, owners)
    assert kept("soma-worker", "soma_worker_stored_events_total")
    assert kept("soma-gateway", "soma_spend_usd_total")
