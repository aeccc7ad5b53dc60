"""Training job: fit on the training week, verify the ONNX export, register it.

Usage::

    python -m training.train [--offline-store PATH] [--report-dir DIR]
                             [--model-dir DIR] [--train-start YYYY-MM-DD]
                             [--num-threads N] [--no-register]
                             [--segmentation-version VERSION|latest]

Steps:

1. Load the labelled features of the offline store and, with a segmentation
   version, add each customer's segment as the last model input
   (:mod:`training.segment_feature`).
2. Split them into the training week and the test week by the chapter-3
   protocol of :mod:`training.evaluation`.
3. Fit the classifier and choose its block threshold.
4. Export it to ONNX and compare ONNX with LightGBM on every row. Sweep each
   monotone feature of the ONNX model.
5. Evaluate the ONNX probabilities on the test week and write
   ``<report-dir>/<version>/metrics.json``.
6. Register the model in PostgreSQL (``FRAUD_PG_DSN``) and print the version.

Exit codes: 0 on success. 1 when a verification check or the registration
failed: the ONNX file and the report are still written, for inspection, but the
model is not registered. 2 when the input data is missing or unusable.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import pandas as pd
import psycopg

from fraudcore.features import MODEL_INPUTS
from fraudcore.registry import CANDIDATE_STAGE
from fraudcore.segments import model_inputs
from fraudcore.settings import PlatformSettings
from training import model as classifier
from training.dataset import load_labelled_features
from training.errors import InputDataError, VerificationError
from training.evaluation import (
    CHAPTER3_WINDOW,
    LABEL_COLUMN,
    SCORE_COLUMN,
    SplitWindow,
    daily_card_precision_at_k,
    evaluate_scores,
    split_train_test,
)
from training.registry import (
    REGISTER_STAGES,
    ModelRecord,
    file_sha256,
    register_model,
)
from training.segment_feature import LATEST_VERSION, join_segment_version

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2

ONNX_FILE = "model.onnx"
LIGHTGBM_FILE = "lightgbm.txt"
METRICS_FILE = "metrics.json"
CARDS_PER_DAY = 100


@dataclass(frozen=True)
class JobOptions:
    """Inputs and outputs of one training run.

    ``segmentation_version`` adds the customer segment of that version, or of
    the newest one for ``LATEST_VERSION``, as a model input; None trains on
    ``MODEL_INPUTS`` alone.
    """

    offline_store: Path
    report_dir: Path
    model_dir: Path
    window: SplitWindow = CHAPTER3_WINDOW
    config: classifier.ModelConfig = classifier.ModelConfig()
    pg_dsn: str | None = None
    # Stage of the registered version; promotion past shadow goes through
    # ``python -m training.models promote``, which runs the shadow guard.
    stage: str = CANDIDATE_STAGE
    segmentation_version: str | None = None


@dataclass(frozen=True)
class FittedModel:
    """The classifier, its block threshold and how long fitting took."""

    model: lgb.LGBMClassifier
    threshold: float
    training_seconds: float
    threshold_seconds: float


@dataclass(frozen=True)
class JobResult:
    """Outcome of a successful run."""

    version: str
    artifact_path: Path
    report_path: Path
    metrics: dict[str, Any]


def run(options: JobOptions) -> JobResult:
    """Run the training job end to end.

    Args:
        options: Where to read and write, the split and the hyperparameters.
            When ``pg_dsn`` is None the model is not registered.

    Returns:
        The version, the ONNX path, the report path and the metrics.

    Raises:
        InputDataError: If the offline store lacks the data of the split.
        VerificationError: If the ONNX model failed a check; the report is
            written first.
        psycopg.Error: If the registration failed.
    """
    started = time.perf_counter()
    labelled = load_labelled_features(options.offline_store)
    labelled, segmentation_version = join_segment_version(
        labelled,
        options.offline_store,
        options.segmentation_version,
        options.window.train_start,
    )
    config = replace(options.config, inputs=model_inputs(segmentation_version))
    train, test = split_train_test(labelled, options.window)
    log.info("split: %d training rows, %d test rows", len(train), len(test))

    fitted = _fit(train, config)
    exported = classifier.to_onnx(fitted.model, config.inputs).SerializeToString()
    created_at = datetime.now(UTC).replace(microsecond=0)
    version = model_version(created_at, exported)
    artifact = write_artifacts(options.model_dir / version, exported, fitted.model)

    session = classifier.onnx_session(exported)
    checks, failure = verify_export(fitted.model, session, train, test, config.inputs)
    probability = classifier.onnx_fraud_probability(
        session, classifier.model_matrix(test, config.inputs)
    )
    scored = test.assign(**{SCORE_COLUMN: probability})
    metrics = _metrics(scored, fitted, options, config, checks, failure)
    metrics |= {
        "version": version,
        "created_at": created_at.isoformat(),
        "train_rows": len(train),
        "test_rows": len(test),
        "train_frauds": int(train[LABEL_COLUMN].sum()),
        "test_frauds": int(test[LABEL_COLUMN].sum()),
        "feature_names": list(config.inputs),
        "segmentation_version": segmentation_version,
        "total_seconds": round(time.perf_counter() - started, 3),
    }
    report = _write_report(options.report_dir / version, metrics)
    if failure is not None:
        raise failure

    if options.pg_dsn is not None:
        record = ModelRecord(
            version=version,
            artifact_path=str(artifact),
            artifact_sha256=file_sha256(artifact),
            feature_names=config.inputs,
            metrics=metrics,
            threshold=fitted.threshold,
            created_at=created_at,
            stage=options.stage,
            segmentation_version=segmentation_version,
        )
        register(options.pg_dsn, record)
    return JobResult(version, artifact, report, metrics)


def register(pg_dsn: str, record: ModelRecord) -> None:
    """Insert ``record`` into the registry of the database at ``pg_dsn``."""
    with psycopg.connect(pg_dsn, connect_timeout=10) as conn:
        register_model(conn, record)


def _fit(train: pd.DataFrame, config: classifier.ModelConfig) -> FittedModel:
    x = classifier.model_matrix(train, config.inputs)
    y = train[LABEL_COLUMN].to_numpy()
    started = time.perf_counter()
    model = classifier.fit_classifier(x, y, config)
    fitted_at = time.perf_counter()
    threshold = classifier.choose_threshold(x, y, config)
    finished = time.perf_counter()
    log.info(
        "fit %d trees in %.1f s, chose the threshold in %.1f s",
        config.n_estimators,
        fitted_at - started,
        finished - fitted_at,
    )
    return FittedModel(model, threshold, fitted_at - started, finished - fitted_at)


def model_version(created_at: datetime, exported: bytes) -> str:
    """Return the version name of an exported model: its time and hash prefix."""
    # The time orders versions, and the hash prefix separates models of one second.
    return f"{created_at:%Y%m%dT%H%M%SZ}-{hashlib.sha256(exported).hexdigest()[:8]}"


def write_artifacts(folder: Path, exported: bytes, model: lgb.LGBMClassifier) -> Path:
    """Write the ONNX file and the LightGBM text model; return the ONNX path."""
    folder.mkdir(parents=True, exist_ok=True)
    artifact = (folder / ONNX_FILE).resolve()
    artifact.write_bytes(exported)
    # The LightGBM text model is kept for inspection; the scorer loads the ONNX.
    model.booster_.save_model(folder / LIGHTGBM_FILE)
    log.info("wrote %s", artifact)
    return artifact


def verify_export(
    model: lgb.LGBMClassifier,
    session: ort.InferenceSession,
    train: pd.DataFrame,
    test: pd.DataFrame,
    inputs: Sequence[str] = MODEL_INPUTS,
) -> tuple[dict[str, Any], VerificationError | None]:
    """Check ONNX parity on every row and monotonicity on the test rows.

    ``inputs`` names the model's input columns in order. Returns the check
    results and the first failure, or None when both passed.
    """
    x_test = classifier.model_matrix(test, inputs)
    x_all = np.concatenate([classifier.model_matrix(train, inputs), x_test])
    failure: VerificationError | None = None
    try:
        max_difference = classifier.check_onnx_parity(model, session, x_all)
    except VerificationError as exc:
        failure = exc
        differences = classifier.probability_differences(model, session, x_all)
        max_difference = float(differences.max())

    monotonicity = classifier.count_monotonicity_violations(
        session, x_test, inputs=inputs
    )
    if failure is None and monotonicity.total_violations:
        failure = VerificationError(
            "the ONNX model must respect its monotone constraints, got "
            f"{monotonicity.total_violations} violations "
            f"({monotonicity.violations})."
        )
    checks = {
        "onnx_max_abs_diff": max_difference,
        "onnx_parity_rows": len(x_all),
        "monotonicity_violations": monotonicity.total_violations,
        "monotonicity_violations_by_feature": monotonicity.violations,
        "monotonicity_steps_by_feature": monotonicity.steps,
    }
    return checks, failure


def _metrics(
    scored: pd.DataFrame,
    fitted: FittedModel,
    options: JobOptions,
    config: classifier.ModelConfig,
    checks: dict[str, Any],
    failure: VerificationError | None,
) -> dict[str, Any]:
    metrics: dict[str, Any] = evaluate_scores(scored, CARDS_PER_DAY)
    daily = daily_card_precision_at_k(scored, CARDS_PER_DAY)
    metrics[f"card_precision_at_{CARDS_PER_DAY}_daily"] = {
        str(day): value for day, value in daily.items()
    }
    blocked = scored[SCORE_COLUMN].to_numpy() >= fitted.threshold
    fraud = scored[LABEL_COLUMN].to_numpy() == 1
    metrics |= {
        "block_threshold": fitted.threshold,
        "test_blocked": int(blocked.sum()),
        "test_precision_at_threshold": _ratio(blocked & fraud, blocked),
        "test_recall_at_threshold": _ratio(blocked & fraud, fraud),
        "training_seconds": round(fitted.training_seconds, 3),
        "threshold_seconds": round(fitted.threshold_seconds, 3),
        "split": {
            "train": [str(options.window.train_dates()[i]) for i in (0, -1)],
            "test": [str(options.window.test_dates()[i]) for i in (0, -1)],
            "gap_days": options.window.gap_days,
        },
        "model": asdict(config) | {"lightgbm_version": lgb.__version__},
        "verified": failure is None,
        "verification_error": None if failure is None else str(failure),
    }
    return metrics | checks


def _ratio(hits: npt.NDArray[np.bool_], total: npt.NDArray[np.bool_]) -> float | None:
    count = int(total.sum())
    return None if count == 0 else int(hits.sum()) / count


def _write_report(folder: Path, metrics: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / METRICS_FILE
    path.write_text(json.dumps(metrics, indent=2, default=_json_default) + "\n")
    log.info(
        "test week: AUC ROC %.3f, AP %.3f, CP@%d %.3f; report %s",
        metrics["auc_roc"],
        metrics["average_precision"],
        CARDS_PER_DAY,
        metrics[f"card_precision_at_{CARDS_PER_DAY}"],
        path,
    )
    return path


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def parse_args(
    argv: Sequence[str] | None, settings: PlatformSettings
) -> argparse.Namespace:
    """Parse the command line, with defaults taken from ``settings``."""
    parser = argparse.ArgumentParser(
        prog="python -m training.train",
        description="Train, verify and register the fraud model.",
    )
    parser.add_argument(
        "--offline-store",
        type=Path,
        default=settings.offline_store,
        help="root of the offline store to read (default: %(default)s)",
    )
    parser.add_argument(
        "--report-dir",
        type=Path,
        default=Path("reports/training"),
        help="folder that receives <version>/metrics.json (default: %(default)s)",
    )
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=settings.model_dir,
        help="folder that receives <version>/model.onnx (default: %(default)s)",
    )
    parser.add_argument(
        "--train-start",
        type=date.fromisoformat,
        default=CHAPTER3_WINDOW.train_start,
        help="first UTC day of the 7-day training week, YYYY-MM-DD "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--num-threads",
        type=int,
        default=classifier.ModelConfig().num_threads,
        help="number of LightGBM threads (default: %(default)s)",
    )
    add_registration_arguments(parser)
    add_segmentation_argument(parser)
    return parser.parse_args(argv)


def add_registration_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--no-register`` and ``--stage`` to a training job's command line."""
    parser.add_argument(
        "--no-register",
        action="store_true",
        help="write the model and the report but not the registry row",
    )
    parser.add_argument(
        "--stage",
        choices=REGISTER_STAGES,
        default=CANDIDATE_STAGE,
        help="stage of the registered version (default: %(default)s)",
    )


def add_segmentation_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--segmentation-version`` to a training job's command line."""
    parser.add_argument(
        "--segmentation-version",
        metavar="VERSION",
        help="add the customer segment of this segmentation version of the "
        f"offline store as a model input, or of the newest one with "
        f"'{LATEST_VERSION}'; its profiles must stop by the first training day "
        "(default: no segment input)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the job from the command line and return its exit code."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = PlatformSettings()
    args = parse_args(argv, settings)
    options = JobOptions(
        offline_store=args.offline_store,
        report_dir=args.report_dir,
        model_dir=args.model_dir,
        window=SplitWindow(train_start=args.train_start),
        config=classifier.ModelConfig(num_threads=args.num_threads),
        pg_dsn=None if args.no_register else settings.pg_dsn,
        stage=args.stage,
        segmentation_version=args.segmentation_version,
    )
    try:
        result = run(options)
    except InputDataError as exc:
        log.error("bad input: %s", exc)
        return EXIT_BAD_INPUT
    except VerificationError as exc:
        log.error("verification failed, model not registered: %s", exc)
        return EXIT_FAILED
    except psycopg.Error as exc:
        log.error("registering the model failed: %s", exc)
        return EXIT_FAILED
    print(result.version)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
