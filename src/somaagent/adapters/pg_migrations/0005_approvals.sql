-- Approvals queue: a request the policy answered `require_approval` waits here for an
-- operator. Only the prompt's sha256 is kept (never the prompt): an approval authorises the
-- same caller tenant to send the same prompt to the same model once, within `expires_at`.
CREATE TABLE IF NOT EXISTS approvals (
    approval_id      text        PRIMARY KEY CHECK (approval_id ~ '^apr_[0-9a-f]{24}$'),
    tenant           text        NOT NULL,
    persona          text        NOT NULL,
    role             text        NOT NULL,
    model_id         text        NOT NULL,
    prompt_hash      text        NOT NULL CHECK (prompt_hash ~ '^[0-9a-f]{64}$'),
    max_tokens       integer     NOT NULL CHECK (max_tokens >= 1),
    worst_case_usd   numeric(38, 18) NOT NULL CHECK (worst_case_usd >= 0),
    reasons          jsonb       NOT NULL,
    budget_trace_id  text,
    status           text        NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'approved', 'denied', 'used', 'expired')),
    created_at       timestamptz NOT NULL DEFAULT now(),
    expires_at       timestamptz NOT NULL,
    decided_at       timestamptz,
    decided_by       text,
    decision_note    text,
    used_at          timestamptz
);
CREATE INDEX IF NOT EXISTS approvals_tenant_status_idx ON approvals (tenant, status, created_at);
