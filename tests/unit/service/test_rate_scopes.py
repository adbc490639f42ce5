"""Where a caller's requests count: its key's limits, then its tenant's."""

from __future__ import annotations

from somaagent.domain.identity import Caller
from somaagent.domain.rate_limits import RateLimits
from somaagent.service.rate_limits import Scope, scopes_of


def test_a_callers_scopes_are_its_keys_then_its_tenants() -> None:
    key, tenant = RateLimits(rpm=5), RateLimits(tpm=9_000)
    assert scopes_of(Caller("k1", "acme", "p", "r")) == []
    assert scopes_of(Caller("k1", "acme", "p", "r", limits=key, tenant_limits=tenant)) == [
        Scope("k1", key),
        Scope("tenant:acme", tenant, "acme"),
    ]
    assert scopes_of(Caller("k1", "acme", "p", "r", tenant_limits=tenant)) == [
        Scope("tenant:acme", tenant, "acme")
    ]
