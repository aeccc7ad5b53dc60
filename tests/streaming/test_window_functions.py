"""The feature job's Java aggregate functions, in Flink SQL against Python's results.

Runs a batch query on Flink's local executor, in a process of its own as the
job runs: the functions see each key's rows in time order, as in the job's
event-time windows, with same-time rows as peers.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from deploy.stack import Paths, function_jar
from fraudcore.settings import PlatformSettings
from streaming.feature_sql import FUNCTIONS, milliseconds, window_totals

pytestmark = pytest.mark.integration

QUERY_SCRIPT = """
import json, sys
from pyflink.common import Configuration
from pyflink.table import EnvironmentSettings, TableEnvironment

request = json.load(sys.stdin)
config = Configuration()
config.set_string("pipeline.jars", request["jar"])
config.set_string("rest.bind-address", "127.0.0.1")
config.set_string("parallelism.default", "1")
settings = EnvironmentSettings.new_instance().in_batch_mode()
table_env = TableEnvironment.create(settings.with_configuration(config).build())
for name, java_class in request["functions"].items():
    table_env.create_java_temporary_function(name, java_class)
with table_env.execute_sql(request["query"]).collect() as rows:
    print(json.dumps([[*row[:3], list(row[3]), row[4], row[5]] for row in rows]))
"""

DAY_MS = 86_400_000
# Out of order on purpose: the results follow the order of the lengths given.
WINDOW_DAYS = (3, 1)

# (key, event_ms, weight, value, category), in no particular order.
ROWS = [
    # Values whose plain float sum loses digits: fsum gives 2.0 exactly, and
    # the order of the rows must not matter.
    ("sum", 0, 1, 1e16, "a"),
    ("sum", 1, 1, 1.0, "b"),
    ("sum", 2, 1, -1e16, "a"),
    ("sum", 3, 1, 1.0, "b"),
    ("sum", 4, 1, 0.1, "c"),
    ("sum", 4, 1, 0.2, "c"),
    # Window edges: rows exactly one and three days before others drop out.
    ("edge", 0, 1, 1.0, "x"),
    ("edge", DAY_MS, 1, 2.0, "y"),
    ("edge", DAY_MS + 1, 1, 4.0, "x"),
    ("edge", 3 * DAY_MS, 1, 8.0, "z"),
    ("edge", 3 * DAY_MS, 1, 16.0, "z"),
    # Weight 0 moves the window's end and is neither counted nor kept.
    ("probe", 0, 1, 1.0, "p"),
    ("probe", DAY_MS, 0, 100.0, "q"),
    ("probe", DAY_MS + 5, 1, 2.0, "p"),
]


def expected_row(key: str, event_ms: int) -> tuple[list[float], int, int | None]:
    """Compute the totals, distinct count and previous time in Python."""
    seen = [row for row in ROWS if row[0] == key and row[1] <= event_ms]
    totals: list[float] = []
    for days in WINDOW_DAYS:
        window = [row for row in seen if row[1] > event_ms - days * DAY_MS]
        weighted = [row for row in window if row[2] != 0]
        totals += [float(sum(row[2] for row in weighted))]
        totals += [math.fsum(row[3] for row in weighted)]
    day = {row[4] for row in seen if row[1] > event_ms - DAY_MS}
    peers = sum(1 for row in seen if row[1] == event_ms)
    earlier = [row[1] for row in seen if row[1] < event_ms]
    previous = event_ms if peers > 1 else max(earlier, default=None)
    return totals, len(day), previous


@pytest.fixture(scope="module")
def results() -> dict[tuple[str, int, float], tuple[list[float], int, int | None]]:
    settings = PlatformSettings()
    jar = function_jar(Paths(settings.state_dir).jars / "functions")
    values = ", ".join(
        f"('{key}', CAST({ms} AS BIGINT), {weight}, CAST({value!r} AS DOUBLE), "
        f"'{category}')"
        for key, ms, weight, value, category in ROWS
    )
    query = (
        f"SELECT k, t, v, {window_totals('t', 'w', 'v', WINDOW_DAYS)} OVER o, "
        f"WINDOW_DISTINCT(t, c, {milliseconds(1)}) OVER o, "
        "PREVIOUS_TIME(t) OVER o "
        f"FROM (VALUES {values}) AS r(k, t, w, v, c) "
        "WINDOW o AS (PARTITION BY k ORDER BY t)"
    )
    request = {"jar": jar.as_uri(), "functions": FUNCTIONS, "query": query}
    output = subprocess.run(
        [sys.executable, "-c", QUERY_SCRIPT],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    rows = json.loads(output.strip().splitlines()[-1])
    return {
        (key, ms, value): (totals, distinct, previous)
        for key, ms, value, totals, distinct, previous in rows
    }


def test_window_functions_match_python(results):
    assert len(results) == len(ROWS)
    for (key, event_ms, value), (totals, distinct, previous) in results.items():
        expected_totals, expected_distinct, expected_previous = expected_row(
            key, event_ms
        )
        case = f"row {key} at {event_ms} with {value}"
        assert totals == expected_totals, case
        assert distinct == expected_distinct, case
        assert previous == expected_previous, case


def test_window_totals_sum_exactly(results):
    totals, _, _ = results[("sum", 3, 1.0)]
    assert totals[1] == 2.0
    assert sum([1e16, 1.0, -1e16, 1.0]) != 2.0


def test_window_functions_peers_share_results(results):
    first, second = (
        results[("edge", 3 * DAY_MS, 8.0)],
        results[("edge", 3 * DAY_MS, 16.0)],
    )
    assert first == second
    assert first[2] == 3 * DAY_MS
