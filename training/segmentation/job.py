"""Segmentation job: cluster customers (or any numeric CSV) and publish segments.

Usage::

    python -m training.segmentation [--offline-store PATH] [--start DAY] [--end DAY]
    python -m training.segmentation --csv FILE [--id-column NAME] [--publish]

Steps:

1. Load the input: customer profiles built from the offline store
   (:mod:`training.segmentation.profiles`), or the CSV file as it is.
2. Preprocess, sweep K-Means, Gaussian mixture and Ward for every k, and
   describe the chosen clustering (:mod:`training.segmentation.analysis`).
3. Write the report, the labelled rows and the figures to ``--report-dir``.
4. Publish each row's segment under a new segmentation version to the offline
   store, PostgreSQL and Redis (:mod:`training.segmentation.publish`). Profiles
   are published unless ``--no-publish``; CSV rows only with ``--publish`` and
   ``--id-column``, whose values are taken as customer ids.

Exit codes: 0 on success. 1 when publishing failed; the report and the other
files are still written. 2 when the input is missing or unusable, including
when no k can be scored on it.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import psycopg
import redis

from fraudcore.settings import PlatformSettings
from training.errors import InputDataError
from training.segmentation import artifacts, publish
from training.segmentation.analysis import Analysis, analyse
from training.segmentation.config import METHODS, SegmentationConfig
from training.segmentation.profiles import (
    ID_COLUMN,
    PROFILE_COLUMNS,
    load_customer_profiles,
)

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2

DEFAULT_REPORT_DIR = Path("reports/segmentation")


@dataclass(frozen=True)
class JobOptions:
    """Inputs, outputs and stores of one segmentation run.

    ``csv`` None means customer profiles from ``offline_store``. ``publish``
    writes segments to the offline store, and also to Redis and PostgreSQL
    unless ``offline_only``.
    """

    report_dir: Path
    offline_store: Path
    config: SegmentationConfig
    csv: Path | None = None
    id_column: str | None = None
    start: date | None = None
    end: date | None = None
    publish: bool = False
    offline_only: bool = False
    settings: PlatformSettings | None = None


@dataclass(frozen=True)
class JobResult:
    """Outcome of a run: its report, version and whether publishing succeeded."""

    report: dict[str, Any]
    report_path: Path
    version: str
    published: bool


def run(options: JobOptions) -> JobResult:
    """Run the whole job.

    Returns
    -------
    JobResult

    Raises
    ------
    InputDataError
        If the input is missing or unusable, or no k can be scored on it.
    """
    started = time.perf_counter()
    created_at = datetime.now(UTC)
    _check_publishable(options)
    frame, id_column, source = load_input(options)
    load_seconds = round(time.perf_counter() - started, 3)

    analysis = analyse(frame, options.config, id_column)
    version = publish.segmentation_version(frame, options.config.to_dict(), created_at)
    report = artifacts.build_report(analysis, options.config, source)
    report["segmentation_version"] = version
    report["created_at"] = created_at.isoformat()

    artifact_started = time.perf_counter()
    report["artifacts"] = write_artifacts(frame, analysis, options)
    artifact_seconds = round(time.perf_counter() - artifact_started, 3)

    publish_started = time.perf_counter()
    report["publication"] = _publish(
        frame, id_column, analysis, version, created_at, options
    )
    report["run_seconds"] = {
        "load": load_seconds,
        **analysis.seconds,
        "artifacts": artifact_seconds,
        "publish": round(time.perf_counter() - publish_started, 3),
        "total": round(time.perf_counter() - started, 3),
    }
    report_path = options.report_dir / artifacts.REPORT_FILE
    artifacts.write_report(report, report_path)
    published = report["publication"].get("error") is None
    return JobResult(report, report_path, version, published)


def _check_publishable(options: JobOptions) -> None:
    if options.publish and options.csv is not None and options.id_column is None:
        raise InputDataError(
            "publishing segments of CSV rows needs --id-column naming the customer "
            "id column; received none."
        )


def load_input(options: JobOptions) -> tuple[pd.DataFrame, str | None, dict[str, Any]]:
    """Load the CSV file or build customer profiles.

    Returns
    -------
    frame : pandas.DataFrame of shape (n_rows, n_columns)
    id_column : str or None
    source : dict
        Description of the input for the report.
    """
    source: dict[str, Any]
    if options.csv is not None:
        frame = read_csv(options.csv)
        source = {
            "kind": "csv",
            "path": str(options.csv),
            "id_column": options.id_column,
        }
        return frame, options.id_column, source
    frame = load_customer_profiles(options.offline_store, options.start, options.end)
    source = {
        "kind": "customer_profiles",
        "offline_store": str(options.offline_store),
        "start": None if options.start is None else options.start.isoformat(),
        "end_exclusive": None if options.end is None else options.end.isoformat(),
        "id_column": ID_COLUMN,
        "profile_columns": PROFILE_COLUMNS,
    }
    return frame, ID_COLUMN, source


def read_csv(path: Path) -> pd.DataFrame:
    """Read a CSV file with a header row, column types as pandas infers them.

    Raises
    ------
    InputDataError
        If the file is missing, empty or not parseable as CSV.
    """
    try:
        return pd.read_csv(path, low_memory=False)
    except FileNotFoundError:
        raise InputDataError(
            f"CSV file {path} does not exist; expected a readable file."
        ) from None
    except pd.errors.EmptyDataError:
        raise InputDataError(
            f"CSV file {path} is empty; expected a header row and data rows."
        ) from None
    except (pd.errors.ParserError, UnicodeDecodeError, IsADirectoryError) as exc:
        raise InputDataError(f"CSV file {path} could not be parsed: {exc}") from None


def write_artifacts(
    frame: pd.DataFrame, analysis: Analysis, options: JobOptions
) -> dict[str, Any]:
    """Write the labelled rows and the figures; return their names for the report."""
    options.report_dir.mkdir(parents=True, exist_ok=True)
    column = artifacts.write_labelled_rows(
        frame, analysis.labels, options.report_dir / artifacts.OUTPUT_FILE
    )
    figures = artifacts.write_figures(analysis, options.config, options.report_dir)
    return {
        "report_dir": str(options.report_dir),
        "report": artifacts.REPORT_FILE,
        "labelled_rows": artifacts.OUTPUT_FILE,
        "cluster_column": column,
        "figures": figures,
    }


def _publish(
    frame: pd.DataFrame,
    id_column: str | None,
    analysis: Analysis,
    version: str,
    created_at: datetime,
    options: JobOptions,
) -> dict[str, Any]:
    if not options.publish:
        return {"published": False, "reason": "publishing was not requested"}
    assert id_column is not None
    rows = publish.segment_rows(frame[id_column], analysis.labels, version, created_at)
    result: dict[str, Any] = {"published": False, "rows": len(rows)}
    # Only profiles have a cut-off: CSV rows carry no time.
    profiles_end = options.end if options.csv is None else None
    result["offline"] = str(
        publish.write_offline_segments(options.offline_store, rows, profiles_end)
    )
    if options.offline_only:
        result["published"] = True
        return result
    settings = options.settings or PlatformSettings()
    try:
        with psycopg.connect(settings.pg_dsn, connect_timeout=10) as conn:
            result["postgres_rows"] = publish.write_postgres_segments(conn, rows)
        client = redis.Redis.from_url(settings.redis_url, socket_timeout=30)
        with client:
            result["redis_rows"] = publish.write_redis_segments(
                client, settings.redis_prefix, rows
            )
    except (psycopg.Error, redis.RedisError, OSError) as exc:
        log.error("publishing segments of version %s failed: %s", version, exc)
        result["error"] = f"{type(exc).__name__}: {exc}"
        return result
    result["redis_prefix"] = settings.redis_prefix
    result["published"] = True
    return result


def parse_args(
    argv: Sequence[str] | None, settings: PlatformSettings
) -> argparse.Namespace:
    """Parse the command line, with store defaults taken from ``settings``."""
    parser = argparse.ArgumentParser(
        prog="python -m training.segmentation",
        description="Cluster customer profiles or a numeric CSV and publish segments.",
    )
    _add_input_arguments(parser.add_argument_group("input"), settings)
    _add_sweep_arguments(parser.add_argument_group("sweep"))
    _add_output_arguments(parser.add_argument_group("output"))
    return parser.parse_args(argv)


def _add_input_arguments(
    source: argparse._ArgumentGroup, settings: PlatformSettings
) -> None:
    source.add_argument(
        "--csv",
        metavar="FILE",
        type=Path,
        help="cluster the rows of this CSV file instead of the customer profiles",
    )
    source.add_argument(
        "--id-column",
        metavar="NAME",
        help="CSV column that identifies a row (the customer id when publishing); "
        "it is not used as a feature",
    )
    source.add_argument(
        "--offline-store",
        metavar="PATH",
        type=Path,
        default=settings.offline_store,
        help="offline store to read profiles from and to write segments to "
        "(default: %(default)s)",
    )
    source.add_argument(
        "--start",
        metavar="DAY",
        type=date.fromisoformat,
        help="first UTC day of transactions in the profiles, YYYY-MM-DD",
    )
    source.add_argument(
        "--end",
        metavar="DAY",
        type=date.fromisoformat,
        help="UTC day at which the profiles stop, not included, YYYY-MM-DD; set it "
        "to the first training day so that segments do not look ahead",
    )


def _add_sweep_arguments(sweep: argparse._ArgumentGroup) -> None:
    defaults = SegmentationConfig()
    sweep.add_argument(
        "--seed",
        metavar="N",
        type=int,
        default=defaults.seed,
        help="seed of every random step (default: %(default)s)",
    )
    sweep.add_argument(
        "--k-min",
        metavar="K",
        type=int,
        default=defaults.k_min,
        help="smallest number of clusters (default: %(default)s)",
    )
    sweep.add_argument(
        "--k-max",
        metavar="K",
        type=int,
        default=defaults.k_max,
        help="largest number of clusters (default: %(default)s)",
    )
    sweep.add_argument(
        "--methods",
        nargs="+",
        choices=METHODS,
        default=list(defaults.methods),
        help="methods to sweep (default: all)",
    )
    sweep.add_argument(
        "--ward-max-rows",
        metavar="ROWS",
        type=int,
        default=defaults.ward_max_rows,
        help="rows above which Ward is fit on a sample of this size "
        "(default: %(default)s)",
    )
    sweep.add_argument(
        "--silhouette-max-rows",
        metavar="ROWS",
        type=int,
        default=defaults.silhouette_max_rows,
        help="rows above which the silhouette uses a sample of this size "
        "(default: %(default)s)",
    )
    sweep.add_argument(
        "--top-features",
        metavar="N",
        type=int,
        default=defaults.top_features,
        help="separating features described per cluster (default: %(default)s)",
    )


def _add_output_arguments(output: argparse._ArgumentGroup) -> None:
    output.add_argument(
        "--report-dir",
        metavar="DIR",
        type=Path,
        default=DEFAULT_REPORT_DIR,
        help="folder of the report, labelled rows and figures (default: %(default)s)",
    )
    output.add_argument(
        "--publish",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write segments to the offline store, PostgreSQL and Redis "
        "(default: on for profiles, off for --csv)",
    )
    output.add_argument(
        "--offline-only",
        action="store_true",
        help="publish to the offline store only, not to PostgreSQL and Redis",
    )


def options_from_args(
    args: argparse.Namespace, settings: PlatformSettings
) -> JobOptions:
    """Build the job options from parsed arguments.

    Raises
    ------
    ValueError
        If the sweep parameters are inconsistent.
    """
    config = SegmentationConfig(
        seed=args.seed,
        k_min=args.k_min,
        k_max=args.k_max,
        methods=tuple(name for name in METHODS if name in args.methods),
        ward_max_rows=args.ward_max_rows,
        silhouette_max_rows=args.silhouette_max_rows,
        top_features=args.top_features,
    )
    publish_rows = args.publish if args.publish is not None else args.csv is None
    return JobOptions(
        report_dir=args.report_dir,
        offline_store=args.offline_store,
        config=config,
        csv=args.csv,
        id_column=args.id_column,
        start=args.start,
        end=args.end,
        publish=publish_rows,
        offline_only=args.offline_only,
        settings=settings,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the job from the command line and return its exit code."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = PlatformSettings()
    args = parse_args(argv, settings)
    try:
        options = options_from_args(args, settings)
    except ValueError as exc:
        log.error("invalid parameters: %s", exc)
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        result = run(options)
    except InputDataError as exc:
        log.error("bad input: %s", exc)
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    choice = result.report["choice"]
    print(
        f"{result.version}: {choice['method']} k={choice['k']}, "
        f"report {result.report_path}"
    )
    return EXIT_OK if result.published else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
