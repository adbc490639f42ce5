-- Budgets, the exact charge ledger they are rebuilt from, manual reset audit, hourly rollup.
-- See somaagent.domain.budgets and somaagent.service.budgets. Names obey the event
-- contract's SafeName (1-128 of [A-Za-z0-9._:@/-]).

CREATE TABLE IF NOT EXISTS budgets (
    budget_id           text        PRIMARY KEY CHECK (budget_id ~ '^[0-9a-f]{16}$'),
    tenant              text        NOT NULL
        CHECK (char_length(tenant) <= 128 AND tenant ~ '^[A-Za-z0-9._:@/-]+$'),
    persona             text        -- NULL: the budget covers every persona of the tenant
        CHECK (persona IS NULL OR (char_length(persona) <= 128
                                   AND persona ~ '^[A-Za-z0-9._:@/-]+$')),
    period              text        NOT NULL CHECK (period IN ('daily', 'monthly')),
    timezone            text        NOT NULL CHECK (char_length(timezone) BETWEEN 1 AND 64),
    limit_tokens        bigint      CHECK (limit_tokens BETWEEN 0 AND 1000000000000000),
    limit_usd           numeric(38, 18) CHECK (limit_usd BETWEEN 0 AND 1000000),
    limit_gpu_hours     numeric(38, 18) CHECK (limit_gpu_hours BETWEEN 0 AND 1000000),
    on_exceed           text        NOT NULL DEFAULT 'downgrade'
        CHECK (on_exceed IN ('downgrade', 'pause', 'deny', 'require_approval')),
    approval_above_usd  numeric(38, 18) CHECK (approval_above_usd BETWEEN 0 AND 1000000),
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CHECK (limit_tokens IS NOT NULL OR limit_usd IS NOT NULL OR limit_gpu_hours IS NOT NULL)
);
-- One budget per scope and window kind: two would only shadow each other.
CREATE UNIQUE INDEX IF NOT EXISTS budgets_scope_uq
    ON budgets (tenant, coalesce(persona, ''), period);

-- One row per settled reservation, exact. occurred_at = the reservation's time (it picks
-- the window); settled_at orders the charge against manual resets.
CREATE TABLE IF NOT EXISTS budget_charges (
    reservation_id  text        PRIMARY KEY CHECK (char_length(reservation_id) BETWEEN 1 AND 128),
    tenant          text        NOT NULL,
    persona         text        NOT NULL,
    model_id        text        NOT NULL,
    occurred_at     timestamptz NOT NULL,
    settled_at      timestamptz NOT NULL,
    tokens          bigint      NOT NULL CHECK (tokens >= 0),
    cost_usd        numeric(38, 18) NOT NULL CHECK (cost_usd >= 0),
    gpu_ms          numeric     NOT NULL CHECK (gpu_ms >= 0),
    recorded_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS budget_charges_tenant_idx ON budget_charges (tenant, occurred_at);
CREATE INDEX IF NOT EXISTS budget_charges_persona_idx
    ON budget_charges (tenant, persona, occurred_at);
CREATE INDEX IF NOT EXISTS budget_charges_recorded_idx ON budget_charges (recorded_at);

-- Audit of manual resets (kept when the budget is deleted). A rebuild counts only charges
-- settled after the latest reset of the window.
CREATE TABLE IF NOT EXISTS budget_resets (
    reset_id             bigserial   PRIMARY KEY,
    budget_id            text        NOT NULL,
    tenant               text        NOT NULL,
    window_key           text        NOT NULL,
    reset_at             timestamptz NOT NULL,
    actor                text        NOT NULL CHECK (char_length(actor) BETWEEN 1 AND 200),
    reason               text        NOT NULL CHECK (char_length(reason) BETWEEN 1 AND 2000),
    spent_before_tokens  bigint      NOT NULL,
    spent_before_usd     numeric(38, 18) NOT NULL,
    spent_before_gpu_ms  numeric     NOT NULL
);
CREATE INDEX IF NOT EXISTS budget_resets_window_idx
    ON budget_resets (budget_id, window_key, reset_at DESC);

-- Hourly rollup of charges, written by the ledger aggregator job.
CREATE TABLE IF NOT EXISTS budget_ledger (
    tenant         text        NOT NULL,
    persona        text        NOT NULL,
    model_id       text        NOT NULL,
    hour           timestamptz NOT NULL CHECK (mod(extract(epoch FROM hour), 3600) = 0),
    calls          bigint      NOT NULL DEFAULT 0 CHECK (calls >= 0),
    input_tokens   bigint      NOT NULL DEFAULT 0 CHECK (input_tokens >= 0),
    output_tokens  bigint      NOT NULL DEFAULT 0 CHECK (output_tokens >= 0),
    cost_usd       numeric(38, 18) NOT NULL DEFAULT 0 CHECK (cost_usd >= 0),
    gpu_ms         numeric     NOT NULL DEFAULT 0 CHECK (gpu_ms >= 0),
    PRIMARY KEY (tenant, persona, model_id, hour)
);
CREATE INDEX IF NOT EXISTS budget_ledger_hour_idx ON budget_ledger (hour);
