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
    stage           text        NOT NULL DEFAULT 'candidate'
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

# Lifecycle of a model version. Training registers ``candidate``; the scorer
# decides with ``production`` (and ``canary`` for its share of customers) and
# scores ``shadow`` and ``canary`` versions off the response path.
STAGES = ("candidate", "shadow", "canary", "production", "archived")
CANDIDATE_STAGE = "candidate"
SHADOW_STAGE = "shadow"
CANARY_STAGE = "canary"
PRODUCTION_STAGE = "production"
ARCHIVED_STAGE = "archived"
# Stages the scorer loads. A canary also shadows the requests it does not decide,
# so its promotion guard has paired results.
SERVED_STAGES = (PRODUCTION_STAGE, CANARY_STAGE, SHADOW_STAGE)

# Stage changes that ``promote`` accepts, by current stage. A production version
# leaves its stage only when another version replaces it or a rollback archives
# it. Canary to canary changes the share.
TRANSITIONS: dict[str, frozenset[str]] = {
    CANDIDATE_STAGE: frozenset(
        {SHADOW_STAGE, CANARY_STAGE, PRODUCTION_STAGE, ARCHIVED_STAGE}
    ),
    SHADOW_STAGE: frozenset({CANARY_STAGE, PRODUCTION_STAGE, ARCHIVED_STAGE}),
    CANARY_STAGE: frozenset(
        {CANARY_STAGE, SHADOW_STAGE, PRODUCTION_STAGE, ARCHIVED_STAGE}
    ),
    PRODUCTION_STAGE: frozenset({ARCHIVED_STAGE}),
    ARCHIVED_STAGE: frozenset({CANDIDATE_STAGE, PRODUCTION_STAGE}),
}


class InvalidTransition(ValueError):
    """A stage change that the lifecycle does not allow."""


def check_transition(
    version: str, current: str, target: str, *, replaced: bool = False
) -> None:
    """Raise InvalidTransition unless ``current`` may change to ``target``.

    Args:
        version: The version that changes, for the message.
        current: Its stage now.
        target: The requested stage.
        replaced: True when another version takes production in the same
            transaction, the only case in which production may be archived.
    """
    if target not in STAGES:
        raise InvalidTransition(
            f"stage {target!r} is invalid; expected one of {', '.join(STAGES)}"
        )
    allowed = TRANSITIONS.get(current, frozenset())
    if target not in allowed:
        expected = ", ".join(sorted(allowed)) or "none"
        raise InvalidTransition(
            f"model {version!r} cannot go from {current} to {target}; "
            f"from {current} it can go to: {expected}"
        )
    if current == PRODUCTION_STAGE and not replaced:
        raise InvalidTransition(
            f"model {version!r} is in production, so it cannot be archived alone; "
            "promote another version to production or roll back instead"
        )


def check_canary_share(share: float) -> None:
    """Raise ValueError unless ``share`` is a percentage in (0, 100]."""
    if not 0.0 < share <= 100.0:
        raise ValueError(f"canary share must be in (0, 100] percent, got {share:g}")


# Lifecycle columns and the stage history, added to tables of the older layout in
# place. Rows with a stage outside STAGES become candidates. Of several
# production rows only the newest, the one the scorer served, keeps its stage,
# and the others are archived with a history row dated at their
# registration, so that a rollback finds them in that order. After this the
# constraints below can be created.
REGISTRY_LIFECYCLE = """
ALTER TABLE model_registry
    ADD COLUMN IF NOT EXISTS canary_share double precision,
    ADD COLUMN IF NOT EXISTS promoted_by text,
    ADD COLUMN IF NOT EXISTS promoted_at timestamptz;
ALTER TABLE model_registry ALTER COLUMN stage SET DEFAULT 'candidate';
CREATE TABLE IF NOT EXISTS model_stage_history (
    id              bigserial   PRIMARY KEY,
    version         text        NOT NULL
        REFERENCES model_registry (version) ON DELETE CASCADE,
    from_stage      text,
    to_stage        text        NOT NULL,
    canary_share    double precision,
    changed_by      text        NOT NULL,
    changed_at      timestamptz NOT NULL DEFAULT now(),
    forced          boolean     NOT NULL DEFAULT false,
    reason          text
);
CREATE INDEX IF NOT EXISTS model_stage_history_version
    ON model_stage_history (version, changed_at);
UPDATE model_registry SET stage = 'candidate'
    WHERE stage NOT IN ('candidate', 'shadow', 'canary', 'production', 'archived');
WITH archived AS (
    UPDATE model_registry SET stage = 'archived'
    WHERE stage = 'production' AND version <> (
        SELECT version FROM model_registry WHERE stage = 'production'
        ORDER BY created_at DESC, version DESC LIMIT 1)
    RETURNING version, created_at
)
INSERT INTO model_stage_history (version, from_stage, to_stage, changed_by,
    changed_at, reason)
SELECT version, 'production', 'archived', 'migration', created_at,
    'a newer version was production'
FROM archived;
UPDATE model_registry SET canary_share = NULL
    WHERE stage <> 'canary' AND canary_share IS NOT NULL;
UPDATE model_registry SET canary_share = 100
    WHERE stage = 'canary' AND canary_share IS NULL;
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_constraint
        WHERE conname = 'model_registry_stage_check'
            AND conrelid = 'model_registry'::regclass
    ) THEN
        ALTER TABLE model_registry ADD CONSTRAINT model_registry_stage_check CHECK (
            stage IN ('candidate', 'shadow', 'canary', 'production', 'archived'));
        ALTER TABLE model_registry ADD CONSTRAINT model_registry_canary_share_check
            CHECK ((stage = 'canary') = (canary_share IS NOT NULL)
                AND (canary_share IS NULL
                    OR (canary_share > 0 AND canary_share <= 100)));
    END IF;
END
$$;
CREATE UNIQUE INDEX IF NOT EXISTS model_registry_one_production
    ON model_registry (stage) WHERE stage = 'production';
CREATE UNIQUE INDEX IF NOT EXISTS model_registry_one_canary
    ON model_registry (stage) WHERE stage = 'canary';
"""

# Key of the advisory lock held while a process creates or migrates the tables.
# Concurrent CREATE TABLE IF NOT EXISTS can fail with a unique violation in
# PostgreSQL's catalog, so the scorer's workers and the training jobs take turns.
SCHEMA_LOCK_ID = 7_146_352_001

# Segmentation version whose customer segments the model takes as its last
# input, NULL for a model without the segment input, and the review and block
# thresholds by segment id that replace the model's for those customers.
REGISTRY_SEGMENTATION_COLUMN = """
ALTER TABLE model_registry
    ADD COLUMN IF NOT EXISTS segmentation_version text,
    ADD COLUMN IF NOT EXISTS segment_thresholds jsonb;
"""

# The statements that create the registry or bring an older one up to date, in
# the order they must run. Every writer and reader runs all of them.
REGISTRY_STATEMENTS = (
    REGISTRY_SCHEMA,
    REGISTRY_DECISION_COLUMNS,
    REGISTRY_LIFECYCLE,
    REGISTRY_SEGMENTATION_COLUMN,
)
