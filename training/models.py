"""Model lifecycle CLI: list, show, promote and roll back registered versions.

It also sets the review and block thresholds of customer segments.

Usage::

    python -m training.models list
    python -m training.models show VERSION
    python -m training.models promote VERSION --to shadow|canary|production|archived
                                      [--share PERCENT] [--by NAME] [--force]
                                      [--reason TEXT] [--margin AP]
                                      [--min-labelled N] [--min-frauds N]
    python -m training.models rollback [--by NAME] [--reason TEXT]
    python -m training.models thresholds VERSION --segment ID
                                      (--review P --block P | --clear)

Promotion to production runs the shadow guard of :mod:`training.guard` unless
``--force`` is given. The scorer picks up every change within its registry poll
interval. The registry is the PostgreSQL database of ``FRAUD_PG_DSN``.

Exit codes: 0 on success, 2 for invalid arguments (argparse's code too),
3 for an unknown version, 4 for a transition the lifecycle does not allow,
5 when the guard rejects the promotion, 1 when the database fails.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

import psycopg

from fraudcore.registry import STAGES, InvalidTransition, check_canary_share
from fraudcore.settings import PlatformSettings
from training import guard as shadow_guard
from training.registry import (
    ModelRecord,
    PromotionRejected,
    RegistryError,
    StageChange,
    VersionNotFound,
    default_actor,
    get_model,
    list_models,
    promote,
    rollback,
    set_segment_thresholds,
    stage_history,
)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INVALID = 2
EXIT_NOT_FOUND = 3
EXIT_TRANSITION = 4
EXIT_REJECTED = 5

PROMOTION_TARGETS = tuple(stage for stage in STAGES if stage != "candidate")
LIST_METRICS = ("auc_roc", "average_precision")


def share_percent(text: str) -> float:
    """Parse ``--share``: a percentage in (0, 100]."""
    try:
        share = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a number of percent, got {text!r}"
        ) from None
    try:
        check_canary_share(share)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return share


def build_parser() -> argparse.ArgumentParser:
    """Build the parser of the five subcommands."""
    parser = argparse.ArgumentParser(
        prog="python -m training.models",
        description="List, inspect, promote and roll back registered models.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="print every version with its stage")
    show = commands.add_parser("show", help="print one version and its history")
    show.add_argument("version", help="registry version to print")

    up = commands.add_parser("promote", help="move a version to another stage")
    up.add_argument("version", help="registry version to move")
    up.add_argument(
        "--to",
        required=True,
        choices=PROMOTION_TARGETS,
        dest="target",
        help="stage to move the version to",
    )
    up.add_argument(
        "--share",
        type=share_percent,
        help="percentage of customers in (0, 100] that a canary decides for",
    )
    up.add_argument(
        "--force",
        action="store_true",
        help="promote to production even if the shadow guard rejects it",
    )
    up.add_argument(
        "--margin",
        type=float,
        default=shadow_guard.DEFAULT_MARGIN,
        help="maximum drop in average precision (0 to 1) that the guard accepts "
        "(default: %(default)s)",
    )
    up.add_argument(
        "--min-labelled",
        type=int,
        default=shadow_guard.DEFAULT_MIN_LABELLED,
        help="minimum labelled shadow results for the guard (default: %(default)s)",
    )
    up.add_argument(
        "--min-frauds",
        type=int,
        default=shadow_guard.DEFAULT_MIN_FRAUDS,
        help="minimum frauds among them for the guard (default: %(default)s)",
    )
    down = commands.add_parser(
        "rollback", help="archive production and restore the version before it"
    )
    for sub in (up, down):
        sub.add_argument(
            "--by", default=default_actor(), help="who makes the change "
            "(default: the OS user, %(default)s)",
        )  # fmt: skip
        sub.add_argument("--reason", help="note stored in the stage history")

    limits = commands.add_parser(
        "thresholds",
        help="set or clear the review and block thresholds of one customer segment",
    )
    limits.add_argument("version", help="registry version trained with segments")
    limits.add_argument("--segment", type=int, required=True, help="segment id")
    limits.add_argument("--review", type=float, help="review threshold in [0, 1]")
    limits.add_argument("--block", type=float, help="block threshold in [0, 1]")
    limits.add_argument(
        "--clear",
        action="store_true",
        help="remove the segment's thresholds, so the model's apply again",
    )
    return parser


def format_table(records: Sequence[ModelRecord]) -> str:
    """Format the ``list`` output: one version per line, the newest first."""
    header = ["version", "stage", "share", "created_at", "promoted_by", "promoted_at"]
    header += list(LIST_METRICS)
    lines = [header]
    for record in records:
        share = "" if record.canary_share is None else f"{record.canary_share:g}%"
        metrics = [_metric(record.metrics.get(name)) for name in LIST_METRICS]
        lines.append(
            [
                record.version,
                record.stage,
                share,
                _time(record.created_at),
                record.promoted_by or "",
                _time(record.promoted_at),
                *metrics,
            ]
        )
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(
            cell.ljust(width) for cell, width in zip(row, widths, strict=True)
        ).rstrip()
        for row in lines
    )


def format_record(record: ModelRecord, history: Sequence[StageChange]) -> str:
    """Format the ``show`` output: the row's fields, its metrics and its history."""
    fields = {
        "version": record.version,
        "stage": record.stage,
        "canary_share": record.canary_share,
        "created_at": _time(record.created_at),
        "promoted_by": record.promoted_by,
        "promoted_at": _time(record.promoted_at),
        "artifact_path": record.artifact_path,
        "artifact_sha256": record.artifact_sha256,
        "threshold": record.threshold,
        "feature_names": list(record.feature_names),
        "segmentation_version": record.segmentation_version,
        "segment_thresholds": json.dumps(record.segment_thresholds, sort_keys=True),
    }
    lines = [f"{name}: {value}" for name, value in fields.items()]
    lines.append(f"metrics: {json.dumps(record.metrics, sort_keys=True)}")
    lines.append("history:")
    lines += [f"  {format_change(change)}" for change in history]
    return "\n".join(lines)


def format_change(change: StageChange) -> str:
    """Format one stage change on one line."""
    share = "" if change.canary_share is None else f" ({change.canary_share:g}%)"
    text = (
        f"{_time(change.changed_at)} {change.version}: "
        f"{change.from_stage or 'registered'} -> {change.to_stage}{share} "
        f"by {change.changed_by}"
    )
    if change.forced:
        text += ", forced past the guard"
    if change.reason:
        text += f" ({change.reason})"
    return text


def _metric(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else ""


def _time(value: Any) -> str:
    return "" if value is None else value.isoformat(timespec="seconds")


def run(args: argparse.Namespace, conn: psycopg.Connection[Any]) -> None:
    """Carry out the parsed command and print its result."""
    if args.command == "list":
        print(format_table(list_models(conn)))
    elif args.command == "show":
        record = get_model(conn, args.version)
        print(format_record(record, stage_history(conn, args.version)))
    elif args.command == "promote":
        guard = shadow_guard.ShadowGuard(
            args.margin, args.min_labelled, args.min_frauds
        )
        changes = promote(
            conn, args.version, args.target, by=args.by, share=args.share,
            force=args.force, guard=guard, reason=args.reason,
        )  # fmt: skip
        for change in changes:
            print(format_change(change))
    elif args.command == "rollback":
        for change in rollback(conn, by=args.by, reason=args.reason):
            print(format_change(change))
    else:
        pair = None if args.clear else (args.review, args.block)
        current = set_segment_thresholds(conn, args.version, args.segment, pair)
        text = json.dumps(current, sort_keys=True)
        print(f"{args.version} segment thresholds: {text}")


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit with code 2 when a guard or threshold option is invalid."""
    if args.command == "thresholds":
        pair_given = args.review is not None and args.block is not None
        if args.clear == pair_given:
            parser.error("give either --review and --block, or --clear")
        return
    if args.command != "promote":
        return
    if not 0.0 <= args.margin <= 1.0:
        parser.error(f"--margin must be in [0, 1], got {args.margin:g}")
    if args.min_labelled < 1:
        parser.error(f"--min-labelled must be at least 1, got {args.min_labelled}")
    if args.min_frauds < 1:
        parser.error(f"--min-frauds must be at least 1, got {args.min_frauds}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    check_arguments(parser, args)
    settings = PlatformSettings()
    try:
        with psycopg.connect(settings.pg_dsn, connect_timeout=10) as conn:
            run(args, conn)
    except VersionNotFound as exc:
        return fail(EXIT_NOT_FOUND, str(exc))
    except InvalidTransition as exc:
        return fail(EXIT_TRANSITION, str(exc))
    except PromotionRejected as exc:
        return fail(EXIT_REJECTED, f"promotion rejected: {exc}")
    except RegistryError as exc:
        return fail(EXIT_TRANSITION, str(exc))
    except ValueError as exc:
        return fail(EXIT_INVALID, str(exc))
    except psycopg.Error as exc:
        return fail(EXIT_FAILED, f"the registry database failed: {exc}")
    return EXIT_OK


def fail(code: int, message: str) -> int:
    """Print ``message`` to stderr and return ``code``."""
    print(f"error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
