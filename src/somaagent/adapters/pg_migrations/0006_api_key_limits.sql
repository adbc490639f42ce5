-- Per-key rate limits (see somaagent.domain.rate_limits): requests and tokens per minute,
-- NULL = not limited. Bounds as domain.rate_limits.check_limit.
ALTER TABLE api_keys
    ADD COLUMN IF NOT EXISTS rpm_limit integer
        CHECK (rpm_limit IS NULL OR rpm_limit BETWEEN 1 AND 1000000000),
    ADD COLUMN IF NOT EXISTS tpm_limit integer
        CHECK (tpm_limit IS NULL OR tpm_limit BETWEEN 1 AND 1000000000);
