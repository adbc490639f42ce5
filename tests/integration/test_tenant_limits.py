"""Per-tenant rate limits against the real PostgreSQL of the test stack: the store, the
key look-up that carries them, and ``soma tenants limits`` end to end."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import psycopg
import pytest

from somaagent.adapters.api_keys import ApiKeyStore
from somaagent.adapters.tenant_limits import InvalidTenantLimit, TenantLimits, TenantLimitStore
from somaagent.domain.rate_limits import RateLimits
from somaagent.settings import Settings
from tests.integration.test_api_keys import soma, tenant

TTL_S = 0.2


@pytest.fixture()
def keys(dsn: str) -> Iterator[ApiKeyStore]:
    with ApiKeyStore(dsn, ttl_s=TTL_S, negative_ttl_s=TTL_S) as s:
        yield s


def test_limits_are_set_kept_per_dimension_and_lifted(dsn: str) -> None:
    store, t = TenantLimitStore(dsn), tenant()
    assert store.list(t) == []
    assert store.set(t, rpm=100) == TenantLimits(t, 100, None)
    assert store.set(t, tpm=50_000) == TenantLimits(t, 100, 50_000)  # rpm kept
    assert store.set(t, rpm=None) == TenantLimits(t, None, 50_000)
    [row] = store.list(t)
    assert (row.tenant, row.rpm_limit, row.tpm_limit) == (t, None, 50_000)
    assert row.updated_at is not None
    assert store.set(t, tpm=None) == TenantLimits(t, None, None)  # nothing left: no row
    with psycopg.connect(dsn) as conn:
        count = conn.execute("SELECT count(*) FROM tenant_limits WHERE tenant = %s", (t,))
        assert count.fetchone() == (0,)
    assert store.set(t, rpm=None, tpm=None) == TenantLimits(t, None, None)  # a no-op


@pytest.mark.parametrize(
    ("tenant_name", "changes", "message"),
    [
        ("acme corp", {"rpm": 5}, "tenant must be"),
        ("acme", {"rpm": 0}, "rpm must be an integer from 1 to"),
        ("acme", {"tpm": 10**10}, "tpm must be an integer from 1 to"),
        ("acme", {"rph": 5}, "no such limit: rph"),
    ],
)
def test_bad_limits_are_refused(
    dsn: str, tenant_name: str, changes: dict[str, int], message: str
) -> None:
    with pytest.raises(InvalidTenantLimit, match=message):
        TenantLimitStore(dsn).set(tenant_name, **changes)


def test_every_key_of_the_tenant_carries_its_limits(dsn: str, keys: ApiKeyStore) -> None:
    t, other = tenant(), tenant()
    _, first = keys.create(t, "p", "r", rpm=30)
    _, second = keys.create(t, "p", "r")
    _, stranger = keys.create(other, "p", "r")
    limits = TenantLimitStore(dsn)
    limits.set(t, rpm=10, tpm=20_000)
    time.sleep(TTL_S * 1.5)  # keys looked up before the change are cached that long
    a, b, c = keys.authenticate(first), keys.authenticate(second), keys.authenticate(stranger)
    assert a is not None and b is not None and c is not None
    assert a.limits == RateLimits(rpm=30) and a.tenant_limits == RateLimits(10, 20_000)
    assert b.limits is None and b.tenant_limits == RateLimits(10, 20_000)
    assert c.tenant_limits is None
    limits.set(t, rpm=None, tpm=None)
    time.sleep(TTL_S * 1.5)
    lifted = keys.authenticate(second)
    assert lifted is not None and lifted.tenant_limits is None


def test_cli_tenant_limits(stack: Settings) -> None:
    t = tenant()
    set_rpm = soma(stack, "tenants", "limits", t, "--rpm", "120")
    assert set_rpm.returncode == 0, set_rpm.stderr
    assert set_rpm.stdout == f"{t}  rpm 120  tpm unlimited\n"
    set_tpm = soma(stack, "tenants", "limits", t, "--tpm", "90000")  # --rpm kept
    assert set_tpm.stdout == f"{t}  rpm 120  tpm 90000\n"
    listed = soma(stack, "tenants", "list")
    assert listed.returncode == 0, listed.stderr
    assert re.search(rf"^{re.escape(t)}\s+120\s+90000\s", listed.stdout, re.M), listed.stdout
    lifted = soma(stack, "tenants", "limits", t, "--rpm", "none", "--tpm", "none")
    assert lifted.stdout == f"{t}  rpm unlimited  tpm unlimited\n"
    assert t not in soma(stack, "tenants", "list").stdout
    bad = soma(stack, "tenants", "limits", "acme corp", "--rpm", "5")
    assert bad.returncode == 1 and bad.stderr.startswith("soma: error: tenant must be")
    nothing = soma(stack, "tenants", "limits", t)
    assert nothing.returncode == 2 and "give --rpm and/or --tpm" in nothing.stderr


def test_postgresql_away_is_a_one_line_error(stack: Settings) -> None:
    down = soma(stack, "tenants", "list", SOMA_POSTGRES_DSN="postgresql://postgres@127.0.0.1:1/x")
    assert down.returncode == 1
    assert down.stderr.startswith("soma: error: PostgreSQL unavailable: ")
    assert down.stderr.count("\n") == 1
