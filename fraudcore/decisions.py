"""Tables of the scorer's decisions, the labels it received and its API keys.

The scorer writes these tables. Other parts may read ``scored_transactions``,
``shadow_scores`` and ``transaction_labels``, for example to join decisions and
the scores of shadow models with their outcomes.
"""

from __future__ import annotations

DECISIONS_SCHEMA = """
CREATE TABLE IF NOT EXISTS scored_transactions (
    transaction_id  text             PRIMARY KEY,
    request_sha256  text             NOT NULL,
    customer_id     text             NOT NULL,
    terminal_id     text             NOT NULL,
    transaction_ms  bigint           NOT NULL,
    model_version   text             NOT NULL,
    probability     double precision NOT NULL,
    decision        text             NOT NULL,
    response        json             NOT NULL,
    decided_at      timestamptz      NOT NULL
);
-- Versions that scored the request in shadow, added after the table above.
ALTER TABLE scored_transactions
    ADD COLUMN IF NOT EXISTS shadow_versions text[] NOT NULL DEFAULT '{}';
CREATE INDEX IF NOT EXISTS scored_transactions_decided_at
    ON scored_transactions (decided_at);
CREATE TABLE IF NOT EXISTS transaction_labels (
    transaction_id  text        NOT NULL,
    source          text        NOT NULL,
    fraud           smallint    NOT NULL,
    label_ms        bigint      NOT NULL,
    received_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (transaction_id, source)
);
CREATE TABLE IF NOT EXISTS api_keys (
    key_id      text        PRIMARY KEY,
    name        text        NOT NULL,
    key_sha256  text        NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE TABLE IF NOT EXISTS shadow_scores (
    transaction_id  text             NOT NULL,
    model_version   text             NOT NULL,
    probability     double precision NOT NULL,
    scored_at       timestamptz      NOT NULL,
    PRIMARY KEY (model_version, transaction_id)
);
"""
