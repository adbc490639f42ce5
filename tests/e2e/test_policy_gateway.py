"""Each policy verdict end to end: the real OPA engine, budgets, models and pipeline."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal

import httpx

from somaagent.bootstrap import Container
from somaagent.domain.worst_case import prompt_token_bound
from somaagent.settings import Settings
from tests.conftest import ROOT
from tests.e2e.budget_support import create_budget, gateway_url, make_keys, new_tenant
from tests.e2e.gateway_support import free_port, open_chat, running_gateway
from tests.e2e.test_chat_gateway import COMPLEX, events_for
from tests.integration.telemetry_support import wait_until

GPU_HOUR = Decimal("0.10")  # both local models' rate card (ratecards.default.yaml)
MS_PER_TOKEN = {"smollm2-135m-instruct": Decimal(250), "qwen2.5-coder-0.5b-instruct": Decimal(500)}


def worst_usd(model: str, tokens: int) -> Decimal:
    return GPU_HOUR * MS_PER_TOKEN[model] * tokens / Decimal(3_600_000)


def post(gw: Settings, key: str, body: dict[str, object], **headers: str) -> httpx.Response:
    return httpx.post(
        gateway_url(gw) + "/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {key}", **headers},
        timeout=300,
    )


def test_downgrade_to_the_cheapest_model_that_fits(
    stack: Settings, pipeline: tuple[Container, dict[str, str]]
) -> None:
    worker, env = pipeline
    tenant = new_tenant("down")
    operator, dev = make_keys(stack, tenant, ("ops", "admin"), ("developer", "developer"))
    messages = [{"role": "user", "content": COMPLEX}]
    tokens = prompt_token_bound(messages) + 8
    small = worst_usd("smollm2-135m-instruct", tokens)
    big = worst_usd("qwen2.5-coder-0.5b-instruct", tokens)
    limit = ((small + big) / 2).quantize(Decimal("1e-9"))
    session = f"down-{uuid.uuid4().hex[:8]}"
    gw_env = {
        **env,
        "SOMA_POLICY_MODE": "enforce",
        "ESCALATION_ENABLED": "true",
        "SOMA_UPSTREAM_TIMEOUT_S": "900",
    }
    with running_gateway(gw_env) as gw:
        create_budget(gw, operator, window="daily", timezone="UTC", limit_usd=f"{limit:f}")
        r = post(
            gw,
            dev,
            {"model": "auto", "messages": messages, "max_tokens": 8},
            **{"X-Soma-Session-Id": session},
        )
        assert r.status_code == 200, r.text
        assert r.headers["x-soma-policy-verdict"] == "downgrade"
        assert r.headers["x-soma-model"] == "smollm2-135m-instruct"
        remaining = r.headers["x-soma-budget-remaining"]
        match = re.fullmatch(r"[0-9a-f]{16} daily \d{4}-\d{2}-\d{2}: usd=([0-9.]+)", remaining)
        assert match is not None, remaining
        # what is left counts this call's settled cost: below the limit, never negative
        assert Decimal(0) <= Decimal(match[1]) < limit
    assert wait_until(lambda: len(events_for(worker, "slm_metrics", session)) == 1)
    tree = events_for(worker, "slm_metrics", session)[0]["decision_tree"]
    assert '"verdict":"downgrade"' in str(tree).replace(" ", "")
    assert wait_until(lambda: len(events_for(worker, "policy_events", session)) == 1)
    event = events_for(worker, "policy_events", session)[0]
    assert event["verdict"] == "downgrade" and event["blocked"] is False
    assert float(str(event["policy_latency_ms"])) > 0
    assert len(str(event["constitution_hash"])) == 64


def test_require_approval_then_the_approved_request_runs_once(
    stack: Settings, pipeline: tuple[Container, dict[str, str]]
) -> None:
    worker, env = pipeline
    tenant = new_tenant("appr")
    operator, user = make_keys(stack, tenant, ("ops", "operator"), ("support", "user"))
    body = {
        "model": "smollm2-135m-instruct",
        "messages": [{"role": "user", "content": "Say hi."}],
        "max_tokens": 8,
    }
    session = f"appr-{uuid.uuid4().hex[:8]}"
    with running_gateway({**env, "SOMA_POLICY_MODE": "enforce"}) as gw:
        create_budget(
            gw,
            operator,
            window="monthly",
            timezone="Asia/Kolkata",
            limit_usd="5",
            approval_above_usd="0.000000001",
        )
        first = post(gw, user, body, **{"X-Soma-Session-Id": session})
        assert first.status_code == 403, first.text
        error = first.json()["error"]
        assert error["code"] == "approval_required"
        approval_id = error["approval_id"]
        assert first.headers["x-soma-approval-id"] == approval_id
        assert first.headers["x-request-id"].startswith("req_")  # refused after routing
        url = gateway_url(gw) + f"/v1/approvals/{approval_id}"
        polled = httpx.get(url, headers={"Authorization": f"Bearer {user}"}, timeout=30)
        assert polled.json()["status"] == "pending"
        # running it before approval, or a user deciding, does not work
        early = post(gw, user, body, **{"X-Soma-Approval": approval_id})
        assert early.status_code == 409
        denied = httpx.post(url + "/approve", headers={"Authorization": f"Bearer {user}"})
        assert denied.status_code == 403
        ok = httpx.post(
            url + "/approve", headers={"Authorization": f"Bearer {operator}"}, timeout=30
        )
        assert ok.status_code == 200 and ok.json()["status"] == "approved"
        other = post(
            gw,
            user,
            {**body, "messages": [{"role": "user", "content": "Something else."}]},
            **{"X-Soma-Approval": approval_id},
        )
        assert other.status_code == 409, "an approval is for its own prompt only"
        run = post(gw, user, body, **{"X-Soma-Approval": approval_id, "X-Soma-Session-Id": session})
        assert run.status_code == 200, run.text
        assert run.headers["x-soma-policy-verdict"] == "allow"
        again = post(gw, user, body, **{"X-Soma-Approval": approval_id})
        assert again.status_code == 409, "an approval runs one request"
        used = httpx.get(url, headers={"Authorization": f"Bearer {user}"}, timeout=30)
        assert used.json()["status"] == "used"
    assert wait_until(lambda: len(events_for(worker, "policy_events", session)) == 2)
    verdicts = [e["verdict"] for e in events_for(worker, "policy_events", session)]
    assert sorted(verdicts) == ["allow", "require_approval"]


def test_permissive_mode_logs_the_verdict_and_blocks_nothing(
    stack: Settings, pipeline: tuple[Container, dict[str, str]]
) -> None:
    worker, env = pipeline
    tenant = new_tenant("perm")
    operator, user = make_keys(stack, tenant, ("ops", "admin"), ("support", "user"))
    session = f"perm-{uuid.uuid4().hex[:8]}"
    body = {
        "model": "smollm2-135m-instruct",
        "messages": [{"role": "user", "content": "Say hi."}],
        "max_tokens": 8,
    }
    with running_gateway({**env, "SOMA_POLICY_MODE": "permissive"}) as gw:
        create_budget(
            gw, operator, window="daily", timezone="UTC", limit_tokens=1, on_exceed="deny"
        )
        r = post(gw, user, body, **{"X-Soma-Session-Id": session})
        assert r.status_code == 200, r.text
        assert r.headers["x-soma-policy-verdict"] == "deny (not enforced)"
    assert wait_until(lambda: len(events_for(worker, "policy_events", session)) == 1)
    event = events_for(worker, "policy_events", session)[0]
    assert (event["verdict"], event["blocked"], event["overridden"]) == ("deny", False, True)


@contextmanager
def policy_server(port: int) -> Iterator[subprocess.Popen[bytes]]:
    """``soma policy serve``: the shipped policy on OPA's REST API, in its own process."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "somaagent.entrypoints.cli", "policy", "serve", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_until(lambda: _healthy(port), timeout_s=60), "policy server did not start"
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(timeout=30)


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_policy_over_rest_and_failing_closed_when_it_is_gone(
    stack: Settings, pipeline: tuple[Container, dict[str, str]]
) -> None:
    """The same policy through an OPA REST server (the non-LOCAL path); when the server is
    unreachable an ENTERPRISE-style gateway refuses (503) and records a deny, a fail-open one
    allows and says why."""
    worker, env = pipeline
    tenant = new_tenant("rest")
    operator, user = make_keys(stack, tenant, ("ops", "admin"), ("support", "user"))
    body = {
        "model": "smollm2-135m-instruct",
        "messages": [{"role": "user", "content": "Say hi."}],
        "max_tokens": 8,
    }
    port = free_port()
    rest = {
        **env,
        "SOMA_POLICY_MODE": "enforce",
        "SOMA_POLICY_URL": f"http://127.0.0.1:{port}",
        "SOMA_POLICY_TIMEOUT_S": "0.5",
    }
    session = f"rest-{uuid.uuid4().hex[:8]}"
    with policy_server(port) as server:
        with running_gateway({**rest, "SOMA_POLICY_FAIL_CLOSED": "true"}) as gw:
            create_budget(
                gw, operator, window="daily", timezone="UTC", limit_tokens=1, on_exceed="deny"
            )
            denied = post(gw, user, body, **{"X-Soma-Session-Id": session})
            assert denied.status_code == 403, denied.text
            assert denied.json()["error"]["code"] == "policy_denied"
            assert "tokens worst case" in denied.json()["error"]["message"]
            server.terminate()
            server.wait(timeout=30)
            gone = post(gw, user, body, **{"X-Soma-Session-Id": session})
            assert gone.status_code == 503, gone.text
            assert gone.json()["error"]["code"] == "policy_unavailable"
        with running_gateway({**rest, "SOMA_POLICY_FAIL_CLOSED": "false"}) as gw:
            # fail open: the policy's absence allows, the budget still holds
            held = post(gw, user, body)
            assert held.status_code == 429, held.text
            assert held.json()["error"]["code"] == "budget_exceeded"
            assert "tokens needs" in held.json()["error"]["message"]
            (free,) = make_keys(stack, new_tenant("open"), ("support", "user"))
            opened = post(gw, free, body)
            assert opened.status_code == 200, opened.text
            assert opened.headers["x-soma-policy-verdict"] == "allow"
    assert wait_until(lambda: len(events_for(worker, "policy_events", session)) == 2)
    events = events_for(worker, "policy_events", session)
    assert [(e["verdict"], e["blocked"]) for e in events] == [("deny", True), ("deny", True)]
    assert "policy engine unavailable" in str(events[1]["reasons"])


def test_a_plain_allow_is_reused_until_its_conditions_stop_holding(
    stack: Settings, pipeline: tuple[Container, dict[str, str]]
) -> None:
    """The second allow comes from the verdict cache (its event names the first one); a
    changed budget limit is a changed input, so the next call is evaluated again."""
    worker, env = pipeline
    tenant = new_tenant("reuse")
    operator, user = make_keys(stack, tenant, ("ops", "admin"), ("support", "user"))
    session = f"reuse-{uuid.uuid4().hex[:8]}"
    body = {
        "model": "smollm2-135m-instruct",
        "messages": [{"role": "user", "content": "Say hi."}],
        "max_tokens": 4,
    }
    headers = {"X-Soma-Session-Id": session}
    with running_gateway({**env, "SOMA_POLICY_MODE": "enforce"}) as gw:
        budget = create_budget(
            gw, operator, window="daily", timezone="UTC", limit_tokens=100_000, on_exceed="deny"
        )
        for _ in range(2):
            r = post(gw, user, body, **headers)
            assert r.status_code == 200, r.text
            assert r.headers["x-soma-policy-verdict"] == "allow"
        exposition = httpx.get(gateway_url(gw) + "/metrics", timeout=30).text
        assert "\nsoma_policy_verdict_reuses_total 1.0\n" in exposition
        tight = httpx.patch(
            gateway_url(gw) + f"/v1/budgets/{budget['id']}",
            json={"limit_tokens": 5},
            headers={"Authorization": f"Bearer {operator}"},
            timeout=30,
        )
        assert tight.status_code == 200, tight.text
        r = post(gw, user, body, **headers)
        assert r.status_code == 403, r.text
    assert wait_until(lambda: len(events_for(worker, "policy_events", session)) == 3)
    first, second, third = events_for(worker, "policy_events", session)
    assert first["verdict"] == second["verdict"] == "allow"
    assert not any("reused" in str(r) for r in first["reasons"])
    note = f"reused: the verdict of policy event {first['event_id']}, whose conditions hold"
    assert list(second["reasons"]) == [*first["reasons"], note]
    assert float(second["policy_latency_ms"]) < float(first["policy_latency_ms"])
    assert third["verdict"] == "deny" and third["blocked"] is True
    assert not any("reused" in str(r) for r in third["reasons"])


def _reserved_tokens(gw: Settings, key: str) -> int:
    r = httpx.get(
        gateway_url(gw) + "/v1/budget/summary",
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return int(r.json()["data"][0]["reserved"]["tokens"])


def test_a_client_that_leaves_while_the_policy_is_asked_releases_its_hold(
    stack: Settings, pipeline: tuple[Container, dict[str, str]]
) -> None:
    """A stream's admission holds the worst case on the budget, then asks the policy; the
    client leaves while the (stopped) policy server keeps it waiting. The hold is released
    at once, not kept until its deadline."""
    _worker, env = pipeline
    tenant = new_tenant("leave")
    operator, user = make_keys(stack, tenant, ("ops", "admin"), ("support", "user"))
    port = free_port()
    gw_env = {
        **env,
        "SOMA_POLICY_MODE": "enforce",
        "SOMA_POLICY_URL": f"http://127.0.0.1:{port}",
        "SOMA_POLICY_TIMEOUT_S": "30",
        "SOMA_BUDGET_ALLOTMENT_CALLS": "0",  # every hold is one Redis reservation
    }
    body = {
        "model": "smollm2-135m-instruct",
        "messages": [{"role": "user", "content": "Say hi."}],
        "max_tokens": 8,
        "stream": True,
    }
    with policy_server(port) as server, running_gateway(gw_env) as gw:
        create_budget(gw, operator, window="daily", timezone="UTC", limit_tokens=100_000)
        server.send_signal(signal.SIGSTOP)
        try:
            sock = open_chat(gw.port("gateway_port"), body, f"leave-{uuid.uuid4().hex[:8]}", user)
            assert wait_until(lambda: _reserved_tokens(gw, user) > 0, timeout_s=10)
            sock.close()
            assert wait_until(lambda: _reserved_tokens(gw, user) == 0, timeout_s=5)
        finally:
            server.send_signal(signal.SIGCONT)
