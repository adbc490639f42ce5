"""API keys against the real PostgreSQL of the test stack, and ``soma keys`` end to end."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from somaagent.adapters.api_keys import (
    NOT_CACHED,
    ApiKeyStore,
    InvalidKeyArgument,
    KeyStoreUnavailable,
)
from somaagent.domain.identity import Caller
from somaagent.domain.rate_limits import RateLimits
from somaagent.settings import Settings
from tests.conftest import ROOT

KEY_RE = re.compile(r"sk-soma-([0-9a-f]{16})-([A-Za-z0-9_-]{43})")
TTL_S = 0.2


@pytest.fixture()
def store(dsn: str) -> Iterator[ApiKeyStore]:
    with ApiKeyStore(dsn, ttl_s=TTL_S, negative_ttl_s=TTL_S) as s:
        yield s


def tenant() -> str:
    """A tenant of its own for each test, so tests never see each other's keys."""
    return f"t-{uuid.uuid4().hex[:12]}"


def test_create_then_authenticate_names_the_caller(store: ApiKeyStore) -> None:
    t = tenant()
    key_id, key = store.create(t, "developer", "member", name="ci bot")
    match = KEY_RE.fullmatch(key)
    assert match and match[1] == key_id
    assert store.authenticate(key) == Caller(
        key_id=key_id, tenant=t, persona="developer", role="member"
    )
    assert store.authenticate(key) == store.authenticate_cached(key)  # now from the cache


def secret_of(key: str) -> str:
    match = KEY_RE.fullmatch(key)
    assert match is not None
    return match[2]


def test_the_table_holds_only_the_secret_hash(store: ApiKeyStore, dsn: str) -> None:
    key_id, key = store.create(tenant(), "p", "r")
    secret = secret_of(key)
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT * FROM api_keys WHERE key_id = %s", (key_id,)).fetchone()
        digest = conn.execute(
            "SELECT secret_sha256 FROM api_keys WHERE key_id = %s", (key_id,)
        ).fetchone()
    assert row is not None
    assert not any(secret in str(value) for value in row)
    assert digest == (hashlib.sha256(secret.encode()).hexdigest(),)


def test_bad_keys_are_refused(store: ApiKeyStore) -> None:
    key_id, key = store.create(tenant(), "p", "r")
    other_id = "f" * 16 if key_id != "f" * 16 else "e" * 16
    flipped = key[:-1] + ("A" if key[-1] != "A" else "B")
    bad = [
        flipped,  # wrong secret
        key.replace(key_id, other_id),  # unknown key id
        "",
        "sk-soma-",
        key + "x",
        key[:-1],
        " " + key,
        key.replace("sk-soma-", "sk-live-"),
        key.replace(key_id, key_id.upper()),
        "Bearer " + key,
        key.replace(key_id, "'; DROP TABLE api_keys; --"),
    ]
    for candidate in bad:
        assert store.authenticate(candidate) is None, candidate
    assert store.authenticate(key) is not None


def test_malformed_keys_never_reach_the_database() -> None:
    with ApiKeyStore("postgresql://nobody@127.0.0.1:1/none") as offline:
        assert offline.authenticate("sk-soma-nope") is None
        assert offline.authenticate_cached("not a key") is None


def test_revoked_key_is_refused_at_once_in_this_process(store: ApiKeyStore) -> None:
    key_id, key = store.create(tenant(), "p", "r")
    assert store.authenticate(key) is not None
    assert store.revoke(key_id) is True
    assert store.authenticate(key) is None
    assert store.revoke(key_id) is False
    assert store.revoke("0" * 16) is False


def test_revocation_elsewhere_is_visible_after_the_ttl(store: ApiKeyStore, dsn: str) -> None:
    key_id, key = store.create(tenant(), "p", "r")
    cached_at = time.monotonic()
    assert store.authenticate(key) is not None
    with ApiKeyStore(dsn) as admin:  # another process, as far as ``store`` can tell
        assert admin.revoke(key_id)
    if time.monotonic() - cached_at < TTL_S * 0.75:
        assert store.authenticate_cached(key) is not None  # still served from memory
    time.sleep(TTL_S * 1.5)
    assert store.authenticate_cached(key) is NOT_CACHED
    assert store.authenticate(key) is None


def test_unknown_key_id_is_cached_as_absent(store: ApiKeyStore) -> None:
    unknown = f"sk-soma-{uuid.uuid4().hex[:16]}-{'A' * 43}"
    assert store.authenticate_cached(unknown) is NOT_CACHED
    assert store.authenticate(unknown) is None
    assert store.authenticate_cached(unknown) is None  # answered without the database
    time.sleep(TTL_S * 1.5)
    assert store.authenticate_cached(unknown) is NOT_CACHED


def test_expired_keys_are_refused(store: ApiKeyStore, dsn: str) -> None:
    t = tenant()
    _, old = store.create(t, "p", "r", expires_at=datetime.now(UTC) - timedelta(seconds=1))
    assert store.authenticate(old) is None
    _, soon = store.create(t, "p", "r", expires_at=datetime.now(UTC) + timedelta(seconds=0.5))
    with ApiKeyStore(dsn, ttl_s=60) as long_cache:
        assert long_cache.authenticate(soon) is not None
        time.sleep(0.6)
        assert long_cache.authenticate(soon) is None  # expiry is exact, whatever the TTL


def test_list_shows_status_and_never_a_secret(store: ApiKeyStore) -> None:
    t = tenant()
    now = datetime.now(UTC)
    active, _ = store.create(t, "p", "r", name="active one")
    revoked, _ = store.create(t, "p", "r")
    expired, _ = store.create(t, "p", "r", expires_at=now - timedelta(days=1))
    store.revoke(revoked)
    keys = store.list(t)
    assert [k.key_id for k in keys] == [active, revoked, expired]
    assert [k.status(now) for k in keys] == ["active", "revoked", "expired"]
    assert keys[0].name == "active one" and keys[0].tenant == t
    assert not any("secret" in field for field in keys[0].__dataclass_fields__)
    assert {k.key_id for k in store.list()} >= {active, revoked, expired}


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("acme corp", "p", "r"), {}, "tenant must be"),
        (("t", "", "r"), {}, "persona must be"),
        (("t", "p", "r" * 129), {}, "role must be"),
        (("t", "p", "r"), {"name": ""}, "name must be"),
        (("t", "p", "r"), {"name": "a\nb"}, "name must be"),
        (("t", "p", "r"), {"expires_at": datetime(2030, 1, 1)}, "aware"),
        (("t", "p", "r"), {"rpm": 0}, "rpm must be an integer from 1"),
        (("t", "p", "r"), {"tpm": -5}, "tpm must be an integer from 1"),
        (("t", "p", "r"), {"tpm": 10**10}, "tpm must be an integer from 1"),
        (("t", "p", "r"), {"rpm": 2.5}, "rpm must be an integer from 1"),
    ],
)
def test_create_rejects_bad_arguments(
    store: ApiKeyStore, args: tuple[str, str, str], kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidKeyArgument, match=message):
        store.create(*args, **kwargs)  # type: ignore[arg-type]


def test_rate_limits_travel_with_the_caller_and_change_at_once_here(
    store: ApiKeyStore, dsn: str
) -> None:
    t = tenant()
    key_id, key = store.create(t, "p", "r", rpm=30, tpm=40_000)
    caller = store.authenticate(key)
    assert caller is not None and caller.limits == RateLimits(rpm=30, tpm=40_000)
    assert store.set_limits(key_id, rpm=None, tpm=5_000) == (None, 5_000)
    assert store.set_limits(key_id, tpm=6_000) == (None, 6_000)  # rpm stays as it is
    assert store.set_limits(key_id, tpm=5_000) == (None, 5_000)
    changed = store.authenticate(key)
    assert changed is not None and changed.limits == RateLimits(rpm=None, tpm=5_000)
    assert store.set_limits(key_id, rpm=None, tpm=None) == (None, None)
    lifted = store.authenticate(key)
    assert lifted is not None and lifted.limits is None  # nothing to check on its calls
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT rpm_limit, tpm_limit FROM api_keys WHERE key_id = %s", (key_id,)
        ).fetchone()
    assert row == (None, None)
    with pytest.raises(InvalidKeyArgument, match="rpm must be"):
        store.set_limits(key_id, rpm=0, tpm=None)
    with pytest.raises(InvalidKeyArgument, match="no such limit: rph"):
        store.set_limits(key_id, rph=5)
    store.revoke(key_id)
    assert store.set_limits(key_id, rpm=5) is None  # revoked: nothing changes
    assert store.set_limits(secrets_hex(), rpm=5) is None


def secrets_hex() -> str:
    return uuid.uuid4().hex[:16]


def test_revoke_rejects_a_malformed_key_id(store: ApiKeyStore) -> None:
    with pytest.raises(InvalidKeyArgument, match="16 lowercase hex"):
        store.revoke("sk-soma-0123456789abcdef-secret")


def test_database_down_is_an_error_not_a_refusal() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with ApiKeyStore(f"postgresql://postgres@127.0.0.1:{port}/x", connect_timeout_s=1) as down:
        key = f"sk-soma-{'a' * 16}-{'A' * 43}"
        with pytest.raises(KeyStoreUnavailable, match="PostgreSQL unavailable") as info:
            down.authenticate(key)
        assert "\n" not in str(info.value)
        with pytest.raises(KeyStoreUnavailable):  # fails fast right after a failed connect
            down.authenticate(key)


def test_reconnects_after_the_connection_is_killed(dsn: str) -> None:
    app = f"soma-test-{uuid.uuid4().hex[:8]}"
    with ApiKeyStore(f"{dsn}?application_name={app}", ttl_s=TTL_S) as store:
        _, key = store.create(tenant(), "p", "r")
        with psycopg.connect(dsn, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = %s",
                (app,),
            ).fetchall()
        assert killed == [(True,)]
        time.sleep(TTL_S * 1.5)
        assert store.authenticate(key) is not None


def test_concurrent_authentication_from_threads(store: ApiKeyStore) -> None:
    t = tenant()
    keys = [store.create(t, "p", f"r{i}") for i in range(4)]
    bad = keys[0][1][:-1] + ("A" if keys[0][1][-1] != "A" else "B")
    failures: list[str] = []

    def hammer() -> None:
        for i in range(150):
            key_id, key = keys[i % 4]
            caller = store.authenticate(key)
            if caller is None or caller.key_id != key_id:
                failures.append(key_id)
            if store.authenticate(bad) is not None:
                failures.append("bad key accepted")

    threads = [threading.Thread(target=hammer) for _ in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert failures == []


# -- the CLI --------------------------------------------------------------------------------


def soma(stack: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {
        **os.environ,
        "SOMA_STATE_DIR": str(stack.state_dir),
        "SOMA_PORT_BASE": str(stack.port_base),
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "somaagent.entrypoints.cli", *args],
        env=environ,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_create_list_revoke(stack: Settings, store: ApiKeyStore) -> None:
    t = tenant()
    created = soma(stack, "keys", "create", "--tenant", t, "--persona", "dev", "--role", "admin",
                   "--name", "cli test", "--expires-days", "30")  # fmt: skip
    assert created.returncode == 0, created.stderr
    assert "cannot be shown again" in created.stdout
    match = KEY_RE.search(created.stdout)
    assert match is not None
    key, key_id = match[0], match[1]
    assert f"key_id  {key_id}" in created.stdout
    assert store.authenticate(key) == Caller(key_id=key_id, tenant=t, persona="dev", role="admin")

    listed = soma(stack, "keys", "list", "--tenant", t)
    assert listed.returncode == 0, listed.stderr
    assert key_id in listed.stdout and "active" in listed.stdout and "cli test" in listed.stdout
    assert secret_of(key) not in listed.stdout

    revoked = soma(stack, "keys", "revoke", key_id)
    assert revoked.returncode == 0, revoked.stderr
    time.sleep(TTL_S * 1.5)  # ``store`` may have cached the key before the CLI revoked it
    assert store.authenticate(key) is None

    again = soma(stack, "keys", "revoke", key_id)
    assert again.returncode == 1
    assert again.stderr == f"soma: error: no active key {key_id} (unknown or already revoked)\n"


def test_cli_rate_limits(stack: Settings, store: ApiKeyStore) -> None:
    t = tenant()
    created = soma(stack, "keys", "create", "--tenant", t, "--persona", "p", "--role", "r",
                   "--rpm", "60", "--json")  # fmt: skip
    assert created.returncode == 0, created.stderr
    key_id = json.loads(created.stdout)["key_id"]
    listed = soma(stack, "keys", "list", "--tenant", t, "--json")
    assert [(k["rpm_limit"], k["tpm_limit"]) for k in json.loads(listed.stdout)] == [(60, None)]
    tpm = soma(stack, "keys", "limits", key_id, "--tpm", "20000")  # --rpm kept as it is
    assert tpm.returncode == 0, tpm.stderr
    assert tpm.stdout == f"{key_id}  rpm 60  tpm 20000\n"
    lifted = soma(stack, "keys", "limits", key_id, "--rpm", "none")
    assert lifted.stdout == f"{key_id}  rpm unlimited  tpm 20000\n"
    table = soma(stack, "keys", "list", "--tenant", t)
    assert re.search(rf"{key_id}\s+active\s+{t}\s+p\s+r\s+-\s+20000", table.stdout), table.stdout
    bad = soma(stack, "keys", "limits", key_id, "--rpm", "0")
    assert bad.returncode == 2 and "must be a whole number from 1 to" in bad.stderr
    unknown = soma(stack, "keys", "limits", "0123456789abcdef", "--rpm", "5")
    assert unknown.returncode == 1
    assert unknown.stderr == "soma: error: no active key 0123456789abcdef (unknown or revoked)\n"


def test_cli_errors_are_one_line(stack: Settings) -> None:
    bad = soma(stack, "keys", "create", "--tenant", "acme corp", "--persona", "p", "--role", "r")
    assert bad.returncode == 1
    assert bad.stderr.startswith("soma: error: tenant must be") and bad.stderr.count("\n") == 1
    down = soma(stack, "keys", "list", SOMA_POSTGRES_DSN="postgresql://postgres@127.0.0.1:1/x")
    assert down.returncode == 1
    assert down.stderr.startswith("soma: error: PostgreSQL unavailable: ")
    assert down.stderr.count("\n") == 1
