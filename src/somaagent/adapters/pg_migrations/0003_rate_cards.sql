-- Versioned rate cards: see somaagent.domain.ratecards and somaagent.adapters.ratecards_store.
-- One row per (model, version). A version is immutable once stored (the store refuses a
-- re-load with other values), and two versions of one model never share an effective_from,
-- so the price of a model at an instant has exactly one answer.
-- Amounts are numeric(38, 18), like ClickHouse Decimal(38, 18) and the events' Money.
CREATE TABLE IF NOT EXISTS rate_cards (
    model_id            text        NOT NULL
        CHECK (char_length(model_id) <= 256 AND model_id ~ '^[A-Za-z0-9._:@/-]+$'),
    version             text        NOT NULL
        CHECK (char_length(version) <= 128 AND version ~ '^[A-Za-z0-9._:@/-]+$'),
    effective_from      timestamptz NOT NULL,
    input_per_1k        numeric(38, 18) CHECK (input_per_1k >= 0),
    output_per_1k       numeric(38, 18) CHECK (output_per_1k >= 0),
    cached_input_per_1k numeric(38, 18) CHECK (cached_input_per_1k >= 0),
    gpu_hour_usd        numeric(38, 18) CHECK (gpu_hour_usd >= 0),
    gpus                integer     CHECK (gpus BETWEEN 1 AND 100000),
    max_ms_per_token    numeric(38, 18) CHECK (max_ms_per_token > 0),
    source              text,
    loaded_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model_id, version),
    CONSTRAINT rate_cards_one_version_per_instant UNIQUE (model_id, effective_from),
    -- Exactly one pricing: all three per-1K token prices, or the whole GPU cost model.
    CONSTRAINT rate_cards_one_pricing CHECK (
        (input_per_1k IS NOT NULL AND output_per_1k IS NOT NULL
            AND cached_input_per_1k IS NOT NULL
            AND gpu_hour_usd IS NULL AND gpus IS NULL AND max_ms_per_token IS NULL)
        OR
        (input_per_1k IS NULL AND output_per_1k IS NULL AND cached_input_per_1k IS NULL
            AND gpu_hour_usd IS NOT NULL AND gpus IS NOT NULL AND max_ms_per_token IS NOT NULL)
    )
);
