-- Per-tenant rate limits (see somaagent.domain.rate_limits): requests and tokens per
-- minute shared by every key of the tenant, NULL = not limited. A row exists only while
-- the tenant has a limit. Bounds as domain.rate_limits.check_limit.
CREATE TABLE IF NOT EXISTS tenant_limits (
    tenant text PRIMARY KEY,
    rpm_limit integer CHECK (rpm_limit IS NULL OR rpm_limit BETWEEN 1 AND 1000000000),
    tpm_limit integer CHECK (tpm_limit IS NULL OR tpm_limit BETWEEN 1 AND 1000000000),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CHECK (rpm_limit IS NOT NULL OR tpm_limit IS NOT NULL)
);
