"""Model registry table in PostgreSQL, written by training and read by the scorer."""

from __future__ import annotations

REGISTRY_SCHEMA = """
CREATE TABLE IF NOT EXISTS model_registry (
    version         text        PRIMARY KEY,
    created_at      timestamptz NOT NULL DEFAULT now(),
    artifact_path   text        NOT NULL,
    artifact_sha256 text        NOT NULL,
    feature_names   jsonb       NOT NULL,
    metrics         jsonb       NOT NULL,
    threshold       double precision NOT NULL,
    stage           text        NOT NULL DEFAULT 'production'
);
"""

# Decision settings kept with a model version, added after the table above. Rows
# written without them keep NULL: the scorer then derives the review threshold
# from ``threshold`` and applies no guardrail rules.
REGISTRY_DECISION_COLUMNS = """
ALTER TABLE model_registry
    ADD COLUMN IF NOT EXISTS review_threshold double precision,
    ADD COLUMN IF NOT EXISTS rules jsonb;
"""

# Segmentation version whose customer segments the model takes as its last
# input; NULL for a model without the segment input.
REGISTRY_SEGMENTATION_COLUMN = """
ALTER TABLE model_registry
    ADD COLUMN IF NOT EXISTS segmentation_version text;
"""
