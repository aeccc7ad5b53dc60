"""The main job end to end on the real data: ``make demo``.

Starts the local stack, replays the transactions into Kafka, runs the PyFlink
feature job, trains and registers a model, promotes it to production, serves it,
replays the test week through ``POST /score`` over HTTP, and writes
``reports/demo/summary.json``.
Everything it starts, it stops.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psycopg

from deploy import stack
from fraudcore import store
from fraudcore.features import MODEL_INPUTS
from fraudcore.settings import REPO_ROOT, PlatformSettings
from load.http_replay import ScoredResponse, replay_requests, request_bodies
from load.scorer_process import wait_ready
from streaming import replay
from streaming.online_loader import LoaderSettings

log = logging.getLogger(__name__)

REPORT_DIR = REPO_ROOT / "reports" / "demo"
TEST_FIRST_DAY = date(2018, 8, 8)
TEST_LAST_DAY = date(2018, 8, 14)
PARITY_TOLERANCE = 1e-9
PUBLISHED_EXPERIMENT = "ch3_baseline_single_split"


class DemoSettings(PlatformSettings):
    """Settings of the demo run, read from ``FRAUD_*`` variables."""

    demo_port: int = 18080
    demo_concurrency: int = 4
    demo_keep_stack: bool = False


@contextmanager
def step(title: str) -> Iterator[None]:
    """Print a step's title, then its duration when it ends."""
    print(f"==> {title}", flush=True)
    started = time.perf_counter()
    yield
    print(f"    done in {time.perf_counter() - started:.1f} s", flush=True)


def reset_state(settings: PlatformSettings) -> None:
    """Remove what an earlier demo left in the topics and stores."""
    from confluent_kafka.admin import AdminClient

    topics = [
        settings.transactions_topic,
        settings.labels_topic,
        settings.online_changelog_topic,
    ]
    stack.delete_topics(settings, topics)
    # The loader's committed offsets would skip the start of the new changelog.
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    loader_group = LoaderSettings(**settings.model_dump()).loader_group_id
    listed = admin.list_consumer_groups(request_timeout=10).result()
    groups = {group.group_id for group in listed.valid}
    if loader_group in groups:
        admin.delete_consumer_groups([loader_group])[loader_group].result(timeout=30)
    stack.create_topics(settings)

    for folder in (settings.offline_store, settings.state_dir / "checkpoints"):
        subprocess.run(["rm", "-rf", str(folder)], check=True)
    stack.delete_redis_keys(settings)
    from streaming.online_writer import ensure_schema

    # Dropped rather than emptied, so that tables of an older layout go too.
    with psycopg.connect(settings.pg_dsn, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {', '.join(store.PG_COLUMNS)}")
    ensure_schema(settings.pg_dsn)


def run_feature_job(
    settings: PlatformSettings, environment: dict[str, str] | None = None
) -> None:
    """Run the PyFlink job in its own process until it has consumed the topics.

    Args:
        settings: Settings whose state folder receives the job's log.
        environment: Environment of the job, which reads its settings from
            ``FRAUD_*`` variables; None keeps this process's environment.
    """
    log_file = settings.state_dir / "logs" / "features-job.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    print(f"    job log: {log_file}")
    with log_file.open("w") as output:
        subprocess.run(
            [sys.executable, "-m", "streaming.features_job", "--bounded"],
            stdout=output,
            stderr=subprocess.STDOUT,
            env=environment,
            check=True,
        )


def promote_to_production(settings: PlatformSettings, version: str) -> None:
    """Make the freshly trained candidate the production model of the registry.

    The demo has served no shadow traffic, so the guard has nothing to compare
    and is skipped; the history row records that.
    """
    from training.guard import ShadowGuard
    from training.registry import promote

    with psycopg.connect(settings.pg_dsn, connect_timeout=10) as conn:
        changes = promote(
            conn, version, "production", by="demo", force=True, guard=ShadowGuard(),
            reason="the demo has no shadow traffic to compare",
        )  # fmt: skip
    for change in changes:
        print(f"    {change.version}: {change.from_stage} -> {change.to_stage}")


@contextmanager
def demo_api_key(settings: PlatformSettings) -> Iterator[str]:
    """Clear earlier decisions and create an API key; revoke the key afterwards."""
    from fraudcore.decisions import DECISIONS_SCHEMA
    from services.scorer.keys import create_key, revoke_key

    with psycopg.connect(settings.pg_dsn, autocommit=True) as conn:
        conn.execute(DECISIONS_SCHEMA)
        # The scorer returns the stored decision of a transaction id it has seen,
        # so decisions of an earlier demo run would hide the new model's.
        conn.execute("TRUNCATE scored_transactions, transaction_labels")
        key_id, key = create_key(conn, "demo")
    try:
        yield key
    finally:
        with psycopg.connect(settings.pg_dsn, autocommit=True) as conn:
            revoke_key(conn, key_id)


@contextmanager
def serving(settings: DemoSettings) -> Iterator[str]:
    """Run the scorer serving the production model; stop it (by PID) afterwards."""
    environment = dict(os.environ)
    environment |= {
        "FRAUD_PORT": str(settings.demo_port),
        "FRAUD_RETURN_FEATURES": "true",
        "FRAUD_LOG_LEVEL": "WARNING",
        # The demo proves parity, so a request slowed by this busy machine should
        # wait for its store rather than be scored from default features.
        "FRAUD_REQUEST_DEADLINE_MS": "2000",
        "FRAUD_REDIS_TIMEOUT_SECONDS": "1.0",
        "FRAUD_PG_TIMEOUT_SECONDS": "1.0",
    }
    log_path = settings.state_dir / "logs" / "scorer.log"
    log_file = log_path.open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "services.scorer"],
        env=environment,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    base_url = f"http://127.0.0.1:{settings.demo_port}"
    try:
        wait_ready(base_url, process, log_path)
        yield base_url
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        log_file.close()


def compare_features(
    responses: list[ScoredResponse], offline: pd.DataFrame
) -> tuple[int, float]:
    """Count transactions whose served features differ from their offline row.

    Returns:
        The number of differing transactions and the largest absolute difference.
    """
    served = pd.DataFrame(
        [r.body["features"] for r in responses],
        index=[r.transaction_id for r in responses],
    )[list(MODEL_INPUTS)]
    rows = offline.set_index("transaction_id").reindex(served.index)[list(MODEL_INPUTS)]
    difference = (served - rows).abs().to_numpy()
    # A transaction missing from the offline store counts as a mismatch.
    difference = np.where(np.isnan(difference), np.inf, difference)
    mismatched = int((difference > PARITY_TOLERANCE).any(axis=1).sum())
    return mismatched, float(difference.max()) if difference.size else 0.0


def published_rows(data_dir: Path) -> list[dict[str, Any]]:
    """Return the book's chapter-3 test scores, one dict per model."""
    table = pd.read_csv(data_dir / "published-test-results.csv")
    table = table[table["experiment"] == PUBLISHED_EXPERIMENT]
    wide = table.pivot_table(index="model", columns="metric", values="test_mean")
    return [
        {"model": model, **{k: float(v) for k, v in values.items()}}
        for model, values in wide.iterrows()
    ]


def save_pr_curve(scored: pd.DataFrame, path: Path) -> None:
    """Save the precision-recall curve of the HTTP scores as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve

    precision, recall, _ = precision_recall_curve(scored["fraud"], scored["score"])
    figure, axes = plt.subplots(figsize=(6, 4.5))
    axes.plot(recall, precision)
    axes.set_xlabel("recall")
    axes.set_ylabel("precision")
    axes.set_title("Test week 2018-08-08..14, scores from POST /score")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    """Run the demo and print its summary."""
    parser = argparse.ArgumentParser(prog="python -m deploy.demo", description=__doc__)
    parser.add_argument(
        "--reuse-features",
        action="store_true",
        help="skip the replay and the feature job; use the stores of the last run",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(name)s %(message)s"
    )
    settings = DemoSettings()
    started = time.perf_counter()
    with step("starting the local stack (Kafka, Redis, PostgreSQL)"):
        started_servers = stack.up(settings)
    try:
        summary = run_demo(settings, args.reuse_features)
    finally:
        if not settings.demo_keep_stack:
            stack.down(settings, started_servers)
    summary["wall_seconds"] = round(time.perf_counter() - started, 1)
    write_summary(summary)
    return 0 if summary["online_offline_mismatches"] == 0 else 1


def run_demo(settings: DemoSettings, reuse_features: bool) -> dict[str, Any]:
    """Run every step after the stack is up; return the summary."""
    from training.dataset import load_features, load_labelled_features
    from training.evaluation import (
        CHAPTER3_WINDOW,
        evaluate_scores,
        remove_known_compromised,
    )
    from training.train import JobOptions
    from training.train import run as train

    with step("loading transactions"):
        source = replay.load_source(settings.data_dir / "transactions.parquet")
        print(f"    source: {source.description}")
    if reuse_features:
        print("==> reusing the topics and stores of the previous run")
        span = replay.select_span(
            source.frame, replay.DEFAULT_START, replay.DEFAULT_END
        )
        replayed_count = len(span)
    else:
        with step("resetting the demo's topics and stores"):
            reset_state(settings)
        title = f"replaying {replay.DEFAULT_START}..{replay.DEFAULT_END} into Kafka"
        with step(title):
            replayed_count = replay.replay(settings, source.frame).transactions
            print(f"    {replayed_count:,} transactions and their labels")
        with step("running the PyFlink feature job"):
            run_feature_job(settings)
    offline = load_features(settings.offline_store)
    print(f"    {len(offline):,} offline feature rows")
    with step("training, exporting to ONNX and registering the model"):
        options = JobOptions(
            offline_store=settings.offline_store,
            report_dir=REPO_ROOT / "reports" / "training",
            model_dir=settings.model_dir,
            pg_dsn=settings.pg_dsn,
        )
        trained = train(options)
        print(f"    model {trained.version}")
    with step("promoting the model to production"):
        promote_to_production(settings, trained.version)

    test_week = replay.select_span(source.frame, TEST_FIRST_DAY, TEST_LAST_DAY)
    bodies = request_bodies(test_week)
    with step(f"scoring {len(bodies):,} test-week transactions over HTTP"):
        with demo_api_key(settings) as key, serving(settings) as url:
            responses = asyncio.run(
                replay_requests(url, bodies, settings.demo_concurrency, api_key=key)
            )

    failed = [r for r in responses if r.status != 200]
    ok = [r for r in responses if r.status == 200]
    if failed:
        statuses = pd.Series([r.status for r in failed]).value_counts().to_dict()
        print(
            f"    {len(failed):,} requests failed, by status {statuses}; first: "
            f"{failed[0].body}"
        )
    if not ok:
        raise RuntimeError("no request to /score succeeded; see the scorer's log")
    mismatches, max_difference = compare_features(ok, offline)
    labelled = load_labelled_features(settings.offline_store)
    scored = _scored_frame(ok, labelled)
    test = remove_known_compromised(scored, labelled, CHAPTER3_WINDOW)
    metrics = evaluate_scores(test)
    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    save_pr_curve(test, REPORT_DIR / "precision_recall.png")
    latencies = np.array([r.latency_ms for r in ok])
    decisions = pd.Series([r.body["decision"] for r in ok]).value_counts()
    sources = pd.Series([r.body["feature_source"] for r in ok]).value_counts()
    return {
        "dataset_source": source.description,
        "transactions_replayed": replayed_count,
        "offline_feature_rows": len(offline),
        "model_version": trained.version,
        "onnx_max_abs_diff": trained.metrics.get("onnx_max_abs_diff"),
        "http_requests": len(responses),
        "http_errors": len(failed),
        "test_transactions_evaluated": len(test),
        "test_metrics_from_http": metrics,
        "training_metrics": {
            k: trained.metrics.get(k)
            for k in ("auc_roc", "average_precision", "card_precision_at_100")
        },
        "published_chapter3": published_rows(settings.data_dir),
        "online_offline_mismatches": mismatches,
        "online_offline_max_abs_diff": max_difference,
        "feature_sources": {str(k): int(v) for k, v in sources.items()},
        "latency_ms": {
            "p50": round(float(np.percentile(latencies, 50)), 3),
            "p99": round(float(np.percentile(latencies, 99)), 3),
            "client_concurrency": settings.demo_concurrency,
        },
        "decisions": {str(k): int(v) for k, v in decisions.items()},
        "machine": f"{os.cpu_count()} cores, {_memory_gib():.0f} GiB",
        "precision_recall_png": str(REPORT_DIR / "precision_recall.png"),
    }


def _scored_frame(ok: list[ScoredResponse], labelled: pd.DataFrame) -> pd.DataFrame:
    scores = pd.DataFrame(
        {
            "transaction_id": [r.transaction_id for r in ok],
            "score": [r.body["probability"] for r in ok],
        }
    )
    columns = ["transaction_id", "customer_id", "event_ms", "fraud"]
    return scores.merge(labelled[columns], on="transaction_id", how="inner")


def _memory_gib() -> float:
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return pages / 1024**3


def write_summary(summary: dict[str, Any]) -> None:
    """Write the summary JSON and print it as a table."""
    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    path = REPORT_DIR / "summary.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nsummary ({path})")
    for key, value in summary.items():
        if key in ("published_chapter3", "test_metrics_from_http"):
            continue
        print(f"  {key:<30} {value}")
    rows = [("this platform, over HTTP", summary["test_metrics_from_http"])]
    rows += [
        (f"{row['model']} (published)", _published_metrics(row))
        for row in summary["published_chapter3"]
    ]
    width = max(len(name) for name, _ in rows) + 2
    print(f"\n  {'test week 2018-08-08..14':<{width}}AUC ROC  AP     CP@100")
    for name, metrics in rows:
        auc, ap = metrics["auc_roc"], metrics["average_precision"]
        cp = metrics["card_precision_at_100"]
        print(f"  {name:<{width}}{auc:.3f}    {ap:.3f}  {cp:.3f}")


def _published_metrics(row: dict[str, Any]) -> dict[str, float]:
    return {
        "auc_roc": row.get("AUC ROC", float("nan")),
        "average_precision": row.get("Average precision", float("nan")),
        "card_precision_at_100": row.get("Card Precision@100", float("nan")),
    }


if __name__ == "__main__":
    sys.exit(main())
