"""Prequential training job: search, refit per test fold, verify, report, register.

Usage::

    python -m training.prequential [--offline-store PATH] [--report-dir DIR]
                                   [--model-dir DIR] [--trials N] [--seed N]
                                   [--num-threads N] [--no-register]
                                   [--segmentation-version VERSION|latest]

Steps, following the chapter-5 protocol of the fraud-detection handbook (see
:mod:`training.folds`):

1. Load the feature and label rows of the offline store and, with a
   segmentation version, add each customer's segment as the last model input
   (:mod:`training.segment_feature`). Its profiles must stop by the first
   validation fold's training day.
2. Build the 4 validation folds from the store as it was at the first test
   fold's cut-off, and the 4 test folds from the whole store.
3. Check every fold's training set against the data contract of
   :mod:`training.contract`.
4. Search the hyperparameters on the validation folds (:mod:`training.search`).
5. Refit with the chosen parameters on each test fold's training week and
   compute AUC ROC, AP and CP@100 on its test week, then their mean and
   standard deviation.
6. The last test fold's model is the final model: choose its block threshold,
   export it to ONNX, compare ONNX with LightGBM on its rows and sweep its
   monotone features.
7. Write ``<report-dir>/<version>/``: ``metrics.json``, ``report.md`` and its
   figures (:mod:`training.report`).
8. Register the final model in PostgreSQL (``FRAUD_PG_DSN``) and print the
   version.

Exit codes: 0 on success. 1 when a verification check or the registration
failed: the ONNX file and the report are written, but the model is not
registered. 2 when the input data is missing or unusable. 3 when a training set
failed the data contract; nothing is fit then.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
import psycopg

from fraudcore.registry import CANDIDATE_STAGE
from fraudcore.segments import model_inputs
from fraudcore.settings import PlatformSettings
from training import model as classifier
from training import report, search
from training.contract import ContractLimits, check_training_set
from training.dataset import load_features, load_labels
from training.errors import DataContractError, InputDataError, VerificationError
from training.evaluation import SCORE_COLUMN, daily_card_precision_at_k, evaluate_scores
from training.folds import TEST_FOLDS, VALIDATION_FOLDS, FoldData, build_fold, view_at
from training.registry import ModelRecord, file_sha256
from training.segment_feature import join_segment_version
from training.train import (
    CARDS_PER_DAY,
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_OK,
    add_registration_arguments,
    add_segmentation_argument,
    model_version,
    register,
    verify_export,
    write_artifacts,
)

log = logging.getLogger(__name__)

EXIT_CONTRACT = 3
DEFAULT_TRIALS = 30
PUBLISHED_RESULTS_FILE = "published-test-results.csv"
METRIC_NAMES = ("auc_roc", "average_precision", f"card_precision_at_{CARDS_PER_DAY}")


@dataclass(frozen=True)
class ProtocolOptions:
    """Inputs and outputs of one prequential run."""

    offline_store: Path
    report_dir: Path
    model_dir: Path
    trials: int = DEFAULT_TRIALS
    seed: int = 0
    base_config: classifier.ModelConfig = classifier.ModelConfig()
    limits: ContractLimits = ContractLimits()
    published_csv: Path | None = None
    pg_dsn: str | None = None
    # Stage of the registered version; promotion past shadow goes through
    # ``python -m training.models promote``, which runs the shadow guard.
    stage: str = CANDIDATE_STAGE
    segmentation_version: str | None = None


@dataclass(frozen=True)
class TestFoldResult:
    """A test fold's model, its scored test rows and its metrics."""

    data: FoldData
    model: lgb.LGBMClassifier
    scored: pd.DataFrame
    metrics: dict[str, Any]
    fit_seconds: float


@dataclass(frozen=True)
class ProtocolResult:
    """Outcome of a successful run."""

    version: str
    artifact_path: Path
    report_path: Path
    metrics: dict[str, Any]


def build_folds(
    features: pd.DataFrame, labels: pd.DataFrame
) -> tuple[list[FoldData], list[FoldData]]:
    """Build the validation folds from the search's view and the test folds.

    The validation folds see only the store as it was at the first test fold's
    cut-off: no transaction of a test week and no label known later.
    """
    search_features, search_labels = view_at(features, labels, TEST_FOLDS[0].cutoff_ms)
    validation = [
        build_fold(search_features, search_labels, fold) for fold in VALIDATION_FOLDS
    ]
    test = [build_fold(features, labels, fold) for fold in TEST_FOLDS]
    return validation, test


def check_contract(folds: Sequence[FoldData], limits: ContractLimits) -> int:
    """Check each fold's training set; return the number of expectations run.

    Raises
    ------
    DataContractError
        With the failed expectations of every fold that failed.
    """
    reports: list[str] = []
    evaluated = 0
    for data in folds:
        try:
            result = check_training_set(
                data.train, data.fold.name, data.fold.window.train_dates(), limits
            )
            evaluated += result.evaluated
        except DataContractError as exc:
            reports.append(exc.report)
    if reports:
        raise DataContractError("\n".join(reports))
    return evaluated


def fit_test_fold(data: FoldData, config: classifier.ModelConfig) -> TestFoldResult:
    """Fit on a test fold's training week and score its test week with LightGBM."""
    started = time.perf_counter()
    model = classifier.fit_classifier(
        classifier.model_matrix(data.train, config.inputs),
        data.train["fraud"].to_numpy(),
        config,
    )
    fit_seconds = time.perf_counter() - started
    probability = classifier.fraud_probability(
        model, classifier.model_matrix(data.test, config.inputs)
    )
    scored = data.test.assign(**{SCORE_COLUMN: probability})
    metrics: dict[str, Any] = evaluate_scores(scored, CARDS_PER_DAY)
    daily = daily_card_precision_at_k(scored, CARDS_PER_DAY)
    metrics |= fold_facts(data) | {
        f"card_precision_at_{CARDS_PER_DAY}_daily": {
            str(day): value for day, value in daily.items()
        },
        "fit_seconds": round(fit_seconds, 3),
    }
    log.info(
        "%s: AUC ROC %.3f, AP %.3f, CP@%d %.3f",
        data.fold.name,
        metrics["auc_roc"],
        metrics["average_precision"],
        CARDS_PER_DAY,
        metrics[f"card_precision_at_{CARDS_PER_DAY}"],
    )
    return TestFoldResult(data, model, scored, metrics, fit_seconds)


def fold_facts(data: FoldData) -> dict[str, Any]:
    """Return a fold's periods and its row and fraud counts."""
    window = data.fold.window
    return {
        "fold": data.fold.name,
        "train": [str(window.train_dates()[0]), str(window.train_dates()[-1])],
        "test": [str(window.test_dates()[0]), str(window.test_dates()[-1])],
        "train_rows": len(data.train),
        "train_frauds": int(data.train["fraud"].sum()),
        "test_rows": len(data.test),
        "test_frauds": int(data.test["fraud"].sum()),
    }


def summarize(per_fold: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Return mean and sample standard deviation (ddof=1) of each metric."""
    summary: dict[str, dict[str, float]] = {}
    for name in METRIC_NAMES:
        values = np.array([fold[name] for fold in per_fold], dtype=np.float64)
        summary[name] = {
            "mean": float(values.mean()),
            "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
        }
    return summary


def run(options: ProtocolOptions) -> ProtocolResult:
    """Run the prequential job end to end.

    Raises:
        InputDataError: If the offline store lacks the data of a fold.
        DataContractError: If a training set failed the data contract.
        VerificationError: If the final ONNX model failed a check; the report
            is written first.
        psycopg.Error: If the registration failed.
    """
    started = time.perf_counter()
    features = load_features(options.offline_store)
    labels = load_labels(options.offline_store)
    features, segmentation_version = join_segment_version(
        features,
        options.offline_store,
        options.segmentation_version,
        VALIDATION_FOLDS[0].window.train_start,
    )
    inputs = model_inputs(segmentation_version)
    validation, test = build_folds(features, labels)
    expectations = check_contract([*validation, *test], options.limits)

    searched = search.search(
        validation,
        options.trials,
        options.seed,
        replace(options.base_config, inputs=inputs),
    )
    log.info("chosen parameters: %s", searched.config)
    results = [fit_test_fold(data, searched.config) for data in test]

    final = results[-1]
    x_final = classifier.model_matrix(final.data.train, inputs)
    threshold_started = time.perf_counter()
    threshold = classifier.choose_threshold(
        x_final, final.data.train["fraud"].to_numpy(), searched.config
    )
    threshold_seconds = time.perf_counter() - threshold_started
    exported = classifier.to_onnx(final.model, inputs).SerializeToString()
    created_at = datetime.now(UTC).replace(microsecond=0)
    version = model_version(created_at, exported)
    artifact = write_artifacts(options.model_dir / version, exported, final.model)
    session = classifier.onnx_session(exported)
    checks, failure = verify_export(
        final.model, session, final.data.train, final.data.test, inputs
    )

    test_metrics = [result.metrics for result in results]
    metrics: dict[str, Any] = {
        "version": version,
        "created_at": created_at.isoformat(),
        "protocol": "prequential, 4 validation and 4 test folds of 7/7/7 days",
        "final_model_fold": final.data.fold.name,
        "test_summary": summarize(test_metrics),
        "validation_summary": summarize(list(searched.best_folds.values())),
        "test_folds": test_metrics,
        "validation_folds": [
            fold_facts(data) | searched.best_folds[data.fold.name]
            for data in validation
        ],
        "hyperparameters": asdict(searched.config)
        | {"lightgbm_version": lgb.__version__},
        "search": {
            "objective": f"mean validation {search.OBJECTIVE_METRIC}",
            "trials": options.trials,
            "seed": options.seed,
            "best_trial": searched.best_trial,
            "best_value": searched.best_value,
            "space": {
                name: list(bounds) for name, bounds in search.SEARCH_SPACE.items()
            },
            "history": searched.trials,
        },
        "block_threshold": threshold,
        "contract_expectations_passed": expectations,
        "training_seconds": {
            "search": round(searched.seconds, 3),
            "test_fold_fits": round(sum(r.fit_seconds for r in results), 3),
            "threshold": round(threshold_seconds, 3),
        },
        "verified": failure is None,
        "verification_error": None if failure is None else str(failure),
        "machine": report.machine_description(),
        "feature_names": list(inputs),
        "segmentation_version": segmentation_version,
    } | checks
    metrics["total_seconds"] = round(time.perf_counter() - started, 3)
    report_path = report.write_report(
        options.report_dir / version,
        metrics,
        [(r.data.fold.name, r.scored) for r in results],
        final.model,
        options.published_csv,
    )
    if failure is not None:
        raise failure

    if options.pg_dsn is not None:
        record = ModelRecord(
            version=version,
            artifact_path=str(artifact),
            artifact_sha256=file_sha256(artifact),
            feature_names=inputs,
            metrics=metrics,
            threshold=threshold,
            created_at=created_at,
            stage=options.stage,
            segmentation_version=segmentation_version,
        )
        register(options.pg_dsn, record)
    return ProtocolResult(version, artifact, report_path, metrics)


def parse_args(
    argv: Sequence[str] | None, settings: PlatformSettings
) -> argparse.Namespace:
    """Parse the command line, with defaults taken from ``settings``."""
    parser = argparse.ArgumentParser(
        prog="python -m training.prequential",
        description="Search on the validation folds, refit per test fold, verify, "
        "report and register the fraud model.",
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
        help="folder that receives <version>/metrics.json and report.md "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=settings.model_dir,
        help="folder that receives <version>/model.onnx (default: %(default)s)",
    )
    parser.add_argument(
        "--trials",
        type=int,
        default=DEFAULT_TRIALS,
        help="number of search trials, each fitting one model per validation "
        "fold (default: %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the search's sampler and of LightGBM (default: %(default)s)",
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


def quiet_great_expectations() -> None:
    """Raise the level of Great Expectations' loggers to WARNING.

    It logs its set-up at INFO on every validation, and some of its module
    loggers have their own level, so each is set.
    """
    for name in ["great_expectations", *logging.root.manager.loggerDict]:
        if name.startswith("great_expectations"):
            logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the job from the command line and return its exit code."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    quiet_great_expectations()
    settings = PlatformSettings()
    args = parse_args(argv, settings)
    options = ProtocolOptions(
        offline_store=args.offline_store,
        report_dir=args.report_dir,
        model_dir=args.model_dir,
        trials=args.trials,
        seed=args.seed,
        base_config=classifier.ModelConfig(
            seed=args.seed, num_threads=args.num_threads
        ),
        published_csv=settings.data_dir / PUBLISHED_RESULTS_FILE,
        pg_dsn=None if args.no_register else settings.pg_dsn,
        stage=args.stage,
        segmentation_version=args.segmentation_version,
    )
    try:
        result = run(options)
    except InputDataError as exc:
        log.error("bad input: %s", exc)
        return EXIT_BAD_INPUT
    except DataContractError as exc:
        log.error("the data contract failed, nothing was fit:\n%s", exc.report)
        return EXIT_CONTRACT
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
