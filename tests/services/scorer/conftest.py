"""Fixtures of the scorer tests: a small ONNX model, a served app and seeded stores.

Tests marked ``integration`` use the session fixtures ``redis_url`` and ``pg_dsn``
of ``tests/conftest.py``, which start the real servers. Every test gets its own
Redis key prefix and its own customer and terminal ids, and removes what it
wrote.
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import lightgbm
import numpy as np
import onnxmltools
import psycopg
import pytest
import redis
import uvicorn
from onnxmltools.convert.common.data_types import FloatTensorType
from psycopg.types.json import Jsonb
from pydantic import SecretStr

from fraudcore.features import MODEL_INPUTS, CustomerEvent, TerminalLabel
from fraudcore.decisions import DECISIONS_SCHEMA
from fraudcore.registry import REGISTRY_DECISION_COLUMNS, REGISTRY_SCHEMA
from fraudcore.store import (
    PG_SCHEMA,
    customer_key,
    encode_customer_member,
    encode_label_member,
    terminal_key,
)
from services.scorer.app import create_app
from services.scorer.model import ScoringModel, open_model
from services.scorer.registry import ServedModel
from services.scorer.runtime import Runtime
from services.scorer.settings import ScorerSettings
from training.model import ModelConfig, to_onnx

SERVER_START_TIMEOUT_SECONDS = 20.0
TEST_THRESHOLD = 0.5


def train_onnx_model(zipmap: bool = False, width: int = len(MODEL_INPUTS)) -> bytes:
    """Train a small LightGBM classifier on random data and export it to ONNX."""
    rng = np.random.default_rng(7)
    features = rng.normal(size=(600, width)).astype(np.float32)
    labels = (features[:, 0] + rng.normal(size=600) > 0.8).astype(np.int64)
    classifier = lightgbm.LGBMClassifier(n_estimators=20, num_leaves=7, verbose=-1)
    classifier.fit(features, labels)
    initial_types = [("input", FloatTensorType([None, width]))]
    exported = onnxmltools.convert_lightgbm(
        classifier, initial_types=initial_types, zipmap=zipmap
    )
    return bytes(exported.SerializeToString())


@dataclass(frozen=True)
class ExplainedModel:
    """ONNX bytes exported as the training job exports, and the LightGBM text."""

    onnx: bytes
    lightgbm_text: str


def train_explained_model(seed: int = 7) -> ExplainedModel:
    """Train a small monotone LightGBM model and export it like the training job."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(800, len(MODEL_INPUTS))).astype(np.float32)
    features[:, 0] = rng.uniform(0, 400, size=800)
    noise = rng.normal(size=800)
    labels = (features[:, 0] / 100 + features[:, 10] + noise > 3.0).astype(np.int64)
    params = ModelConfig(n_estimators=30, num_leaves=7, min_child_samples=10, seed=seed)
    classifier = lightgbm.LGBMClassifier(**params.lightgbm_params())
    classifier.fit(features, labels)
    exported = to_onnx(classifier).SerializeToString()
    return ExplainedModel(exported, classifier.booster_.model_to_string())


@pytest.fixture(scope="session")
def explained_model() -> ExplainedModel:
    """A model with its LightGBM text, for reasons."""
    return train_explained_model()


@pytest.fixture(scope="session")
def onnx_artifact() -> bytes:
    """ONNX bytes of a LightGBM model over ``MODEL_INPUTS``, with zipmap=False."""
    return train_onnx_model()


@pytest.fixture(scope="session")
def scoring_model(onnx_artifact: bytes) -> ScoringModel:
    """The test model, opened as the scorer opens registered models."""
    return open_model(onnx_artifact, "test-model", TEST_THRESHOLD)


@pytest.fixture(scope="session")
def served_model(scoring_model: ScoringModel) -> ServedModel:
    """The test model without rules or explainer, as the runtime serves it."""
    return ServedModel(scoring_model, None, (), None)


def closed_port() -> int:
    """Return a local TCP port that nothing listens on (bound and released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def offline_settings(tmp_path: Path) -> ScorerSettings:
    """Settings whose Redis and PostgreSQL are closed ports."""
    return ScorerSettings(
        redis_url=f"redis://127.0.0.1:{closed_port()}/0",
        pg_dsn=f"postgresql://fraud:fraud@127.0.0.1:{closed_port()}/fraud",
        kafka_bootstrap=f"127.0.0.1:{closed_port()}",
        flush_timeout_seconds=0.0,
        require_api_key=False,
        model_dir=tmp_path,
        model_retry_seconds=60.0,
        log_hash_key=SecretStr("test-key"),
    )


@dataclass
class ServedScorer:
    """A scorer running under uvicorn in a thread of the test process."""

    base_url: str
    runtime: Runtime
    client: httpx.Client

    def score(self, body: object) -> httpx.Response:
        """POST ``body`` as JSON to /score."""
        return self.client.post("/score", json=body)


@contextmanager
def serve(settings: ScorerSettings) -> Iterator[ServedScorer]:
    """Run the app built from ``settings`` on a free local port until the block ends."""
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        loop="uvloop",
        http="httptools",
        ws="none",
        lifespan="on",
        access_log=False,
        log_config=None,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="scorer", daemon=True)
    thread.start()
    try:
        _wait_started(server, thread)
        port = server.servers[0].sockets[0].getsockname()[1]
        base_url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base_url, timeout=10.0) as client:
            yield ServedScorer(base_url, app.state.runtime, client)
    finally:
        server.should_exit = True
        thread.join(timeout=SERVER_START_TIMEOUT_SECONDS)


def _wait_started(server: uvicorn.Server, thread: threading.Thread) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_SECONDS
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("uvicorn exited during start-up; see the log above")
        if time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start in time")
        time.sleep(0.02)


@pytest.fixture
def run_scorer() -> Iterator[Callable[[ScorerSettings], ServedScorer]]:
    """Start scorers for the test; each stops when the test ends."""
    with ExitStack() as started:

        def start(settings: ScorerSettings) -> ServedScorer:
            return started.enter_context(serve(settings))

        yield start


@pytest.fixture
def offline_scorer(
    run_scorer: Callable[[ScorerSettings], ServedScorer],
    offline_settings: ScorerSettings,
    served_model: ServedModel,
) -> ServedScorer:
    """A scorer with both stores unreachable and the test model installed."""
    served = run_scorer(offline_settings)
    served.runtime.install(served_model)
    return served


# --- real stores -------------------------------------------------------------


@pytest.fixture(scope="session")
def store_dsn(pg_dsn: str) -> str:
    """The session database, with the online-store and registry tables created."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(PG_SCHEMA)
        conn.execute(REGISTRY_SCHEMA)
        conn.execute(REGISTRY_DECISION_COLUMNS)
        conn.execute(DECISIONS_SCHEMA)
    return pg_dsn


@dataclass(frozen=True)
class RegisteredModel:
    """A model row written to ``model_registry`` for one test."""

    version: str
    model_dir: Path
    artifact: bytes


def register_model(
    dsn: str,
    model_dir: Path,
    artifact: bytes,
    *,
    version: str | None = None,
    stage: str = "staging",
    threshold: float = TEST_THRESHOLD,
    sha256: str | None = None,
    feature_names: list[str] | None = None,
    created_offset: str = "0 seconds",
    lightgbm_text: str | None = None,
    review_threshold: float | None = None,
    rules: list[dict[str, object]] | None = None,
) -> RegisteredModel:
    """Write ``artifact`` to ``model_dir`` and insert its registry row.

    ``created_offset`` is a PostgreSQL interval added to now() for ``created_at``.
    With ``lightgbm_text``, the artifact goes to ``<version>/model.onnx`` with
    ``lightgbm.txt`` beside it, as the training job writes them.
    """
    version = version or f"test-{uuid.uuid4().hex[:10]}"
    path = model_dir / f"{version}.onnx"
    if lightgbm_text is not None:
        (model_dir / version).mkdir()
        path = model_dir / version / "model.onnx"
        (model_dir / version / "lightgbm.txt").write_text(lightgbm_text)
    path.write_bytes(artifact)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO model_registry (version, created_at, artifact_path, "
            "artifact_sha256, feature_names, metrics, threshold, stage, "
            "review_threshold, rules) "
            "VALUES (%s, now() + %s::interval, %s, %s, %s, %s, %s, %s, %s, %s)",
            (
                version,
                created_offset,
                str(path.relative_to(model_dir)),
                sha256 or hashlib.sha256(artifact).hexdigest(),
                Jsonb(
                    feature_names if feature_names is not None else list(MODEL_INPUTS)
                ),
                Jsonb({"test": True}),
                threshold,
                stage,
                review_threshold,
                None if rules is None else Jsonb(rules),
            ),
        )
    return RegisteredModel(version, model_dir, artifact)


@pytest.fixture
def registered_versions(store_dsn: str) -> Iterator[list[str]]:
    """Versions that the test registered; their rows are deleted after it."""
    versions: list[str] = []
    yield versions
    with psycopg.connect(store_dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM model_registry WHERE version = ANY(%s)", (versions,))


@pytest.fixture
def registered_model(
    store_dsn: str, tmp_path: Path, onnx_artifact: bytes, registered_versions: list[str]
) -> RegisteredModel:
    """The test model, registered under a version of its own."""
    model = register_model(store_dsn, tmp_path, onnx_artifact)
    registered_versions.append(model.version)
    return model


@dataclass
class SeededStores:
    """Ids, Redis prefix and clients of one test's rows in the real stores."""

    prefix: str
    customer_id: str
    terminal_id: str
    redis: redis.Redis
    dsn: str

    def seed_redis(
        self, events: list[CustomerEvent], labels: list[TerminalLabel]
    ) -> None:
        """Write events and labels as the stream job writes them to Redis."""
        if events:
            members = {encode_customer_member(e): e.event_ms for e in events}
            self.redis.zadd(customer_key(self.prefix, self.customer_id), members)
        if labels:
            members = {encode_label_member(x): x.label_ms for x in labels}
            self.redis.zadd(terminal_key(self.prefix, self.terminal_id), members)

    def seed_postgres(
        self, events: list[CustomerEvent], labels: list[TerminalLabel]
    ) -> None:
        """Insert events and labels into the PostgreSQL copy of the online store."""
        with psycopg.connect(self.dsn, autocommit=True) as conn, conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO customer_events VALUES (%s, %s, %s, %s)",
                [(self.customer_id, *event) for event in events],
            )
            cur.executemany(
                "INSERT INTO terminal_labels VALUES (%s, %s, %s, %s)",
                [(self.terminal_id, *label) for label in labels],
            )

    def flush_redis(self) -> None:
        """Delete every Redis key under this test's prefix."""
        keys = list(self.redis.scan_iter(match=f"{self.prefix}:*"))
        if keys:
            self.redis.delete(*keys)


@pytest.fixture
def stores(redis_url: str, store_dsn: str) -> Iterator[SeededStores]:
    """Fresh ids and Redis prefix in the real stores, cleaned up after the test."""
    run = uuid.uuid4().hex[:10]
    client = redis.Redis.from_url(redis_url)
    seeded = SeededStores(
        prefix=f"scorer-test-{run}",
        customer_id=f"customer-{run}",
        terminal_id=f"terminal-{run}",
        redis=client,
        dsn=store_dsn,
    )
    yield seeded
    seeded.flush_redis()
    client.close()
    with psycopg.connect(store_dsn, autocommit=True) as conn:
        conn.execute(
            "DELETE FROM customer_events WHERE customer_id = %s", (seeded.customer_id,)
        )
        conn.execute(
            "DELETE FROM terminal_labels WHERE terminal_id = %s", (seeded.terminal_id,)
        )
        conn.execute(
            "DELETE FROM scored_transactions WHERE customer_id = %s",
            (seeded.customer_id,),
        )


@pytest.fixture
def live_settings(
    redis_url: str, stores: SeededStores, registered_model: RegisteredModel
) -> ScorerSettings:
    """Settings for the real stores, serving the registered test model."""
    return ScorerSettings(
        redis_url=redis_url,
        pg_dsn=stores.dsn,
        redis_prefix=stores.prefix,
        kafka_bootstrap=f"127.0.0.1:{closed_port()}",
        flush_timeout_seconds=0.0,
        require_api_key=False,
        # Budgets far above the defaults, because the test machine may be busy
        # and a timeout would change the feature source.
        redis_timeout_seconds=0.5,
        request_deadline_ms=2000.0,
        model_dir=registered_model.model_dir,
        model_version=registered_model.version,
        return_features=True,
        log_hash_key=SecretStr("test-key"),
    )
