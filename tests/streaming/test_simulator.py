"""Tests of the transaction simulator: schema, ordering, seeds, fraud rules, CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fraudcore.settings import PlatformSettings
from streaming import simulator
from streaming.simulator import (
    COLUMN_DTYPES,
    Compromises,
    add_device_ids,
    apply_fraud_scenarios,
    draw_compromises,
    simulate_genuine_transactions,
    simulate_transactions,
)

REPO_ROOT = Path(__file__).resolve().parents[2]

# The rules of the handbook's fraud scenarios, written out here rather than
# imported, so that a wrong constant in the simulator fails these tests.
AMOUNT_THRESHOLD = 220.0
TERMINAL_WINDOW_DAYS = 28
CUSTOMER_WINDOW_DAYS = 14
AMOUNT_FACTOR = 5
SECONDS_PER_DAY = 86_400

# Few terminals in a wide radius, so that the daily compromises hit many rows.
SMALL = {"n_customers": 200, "n_terminals": 500, "n_days": 40, "radius": 20.0}


@pytest.fixture(scope="module")
def small() -> pd.DataFrame:
    return simulate_transactions(**SMALL, seed=7)


@pytest.fixture(scope="module")
def labelled_run() -> tuple[pd.DataFrame, Compromises, pd.DataFrame]:
    """Genuine transactions, the compromises drawn for them, and the result."""
    genuine = simulate_genuine_transactions(
        SMALL["n_customers"],
        SMALL["n_terminals"],
        "2018-04-01",
        SMALL["n_days"],
        seed=11,
        radius=SMALL["radius"],
    )
    rng = np.random.default_rng(12)
    compromises = draw_compromises(
        SMALL["n_customers"], SMALL["n_terminals"], SMALL["n_days"], rng
    )
    return genuine, compromises, apply_fraud_scenarios(genuine, compromises, rng)


def _in_windows(
    entity_ids: np.ndarray,
    days: np.ndarray,
    event_ids: np.ndarray,
    event_days: np.ndarray,
    window_days: int,
) -> np.ndarray:
    """Brute-force mask of the rows inside any event's window."""
    inside = np.zeros(len(entity_ids), dtype=bool)
    for entity, first_day in zip(event_ids, event_days, strict=True):
        inside |= (
            (entity_ids == entity)
            & (days >= first_day)
            & (days < first_day + window_days)
        )
    return inside


def test_simulate_transactions_schema_matches_reference(small: pd.DataFrame) -> None:
    reference = PlatformSettings().data_dir / "transactions.parquet"
    if not reference.is_file():
        pytest.skip(f"reference file not found: {reference}")
    expected = pq.read_schema(reference)
    actual = pa.Schema.from_pandas(small, preserve_index=False)

    assert actual.names == expected.names
    for name in expected.names:
        assert actual.field(name).type == expected.field(name).type, name


def test_simulate_transactions_pandas_dtypes(small: pd.DataFrame) -> None:
    assert list(small.columns) == list(COLUMN_DTYPES)
    assert {name: str(dtype) for name, dtype in small.dtypes.items()} == COLUMN_DTYPES
    assert small["TX_DATETIME"].dt.tz is None


def test_simulate_transactions_ids_unique_in_time_order(small: pd.DataFrame) -> None:
    ids = small["TRANSACTION_ID"].to_numpy()
    seconds = small["TX_TIME_SECONDS"].to_numpy()

    assert len(small) > 1000
    assert np.array_equal(ids, np.arange(len(small)))
    assert np.all(np.diff(seconds) >= 0)
    assert small["TX_DATETIME"].is_monotonic_increasing


def test_simulate_transactions_time_columns_agree(small: pd.DataFrame) -> None:
    seconds = small["TX_TIME_SECONDS"].to_numpy()
    start = pd.Timestamp("2018-04-01")
    elapsed = (small["TX_DATETIME"] - start).dt.total_seconds().to_numpy()

    assert np.array_equal(elapsed, seconds)
    assert np.array_equal(small["TX_TIME_DAYS"].to_numpy(), seconds // SECONDS_PER_DAY)
    assert small["TX_TIME_DAYS"].min() >= 0
    assert small["TX_TIME_DAYS"].max() < SMALL["n_days"]


def test_simulate_transactions_start_date_shifts_datetimes() -> None:
    shifted = simulate_transactions(n_customers=50, n_days=5, start_date="2020-02-28")
    default = simulate_transactions(n_customers=50, n_days=5)

    offset = shifted["TX_DATETIME"] - default["TX_DATETIME"]
    assert (offset == pd.Timestamp("2020-02-28") - pd.Timestamp("2018-04-01")).all()
    assert shifted["TX_DATETIME"].min() >= pd.Timestamp("2020-02-28")


def test_simulate_transactions_amounts_in_cents(small: pd.DataFrame) -> None:
    amounts = small["TX_AMOUNT"].to_numpy()

    assert np.all(amounts >= 0)
    assert np.array_equal(np.round(amounts, 2), amounts)


def test_simulate_transactions_daytime_peak(small: pd.DataFrame) -> None:
    hours = (small["TX_TIME_SECONDS"] % SECONDS_PER_DAY) // 3600
    midday = hours.between(10, 13).mean()
    night = hours.between(0, 3).mean()

    assert night > 0
    assert midday > 3 * night


def test_simulate_transactions_same_seed_same_frame() -> None:
    first = simulate_transactions(n_customers=50, n_days=30, seed=3)
    second = simulate_transactions(n_customers=50, n_days=30, seed=3)
    other = simulate_transactions(n_customers=50, n_days=30, seed=4)

    pd.testing.assert_frame_equal(first, second)
    assert not first.equals(other)


def test_simulate_transactions_label_matches_scenario(small: pd.DataFrame) -> None:
    fraud = small["TX_FRAUD"].to_numpy()
    scenario = small["TX_FRAUD_SCENARIO"].to_numpy()

    assert set(np.unique(scenario)) <= {0, 1, 2, 3}
    assert np.array_equal(fraud, (scenario > 0).astype(np.int64))


def test_scenario_1_rows_exceed_threshold(small: pd.DataFrame) -> None:
    scenario_1 = small[small["TX_FRAUD_SCENARIO"] == 1]
    above = small[small["TX_AMOUNT"] > AMOUNT_THRESHOLD]

    assert len(scenario_1) > 0
    assert (scenario_1["TX_AMOUNT"] > AMOUNT_THRESHOLD).all()
    assert (above["TX_FRAUD"] == 1).all()


def test_scenario_2_labels_terminal_windows(
    labelled_run: tuple[pd.DataFrame, Compromises, pd.DataFrame],
) -> None:
    _, compromises, labelled = labelled_run
    scenario = labelled["TX_FRAUD_SCENARIO"].to_numpy()
    inside = _in_windows(
        labelled["TERMINAL_ID"].to_numpy(),
        labelled["TX_TIME_DAYS"].to_numpy(),
        compromises.terminal_ids,
        compromises.terminal_days,
        TERMINAL_WINDOW_DAYS,
    )

    assert inside.sum() > 0
    # Scenario 3 may relabel a row inside a terminal window, never clear it.
    assert np.all(np.isin(scenario[inside], [2, 3]))
    assert np.all(scenario[~inside] != 2)


def test_scenario_3_multiplies_picked_amounts(
    labelled_run: tuple[pd.DataFrame, Compromises, pd.DataFrame],
) -> None:
    genuine, compromises, labelled = labelled_run
    picked = labelled["TX_FRAUD_SCENARIO"].to_numpy() == 3
    before = genuine["TX_AMOUNT"].to_numpy()
    after = labelled["TX_AMOUNT"].to_numpy()
    inside = _in_windows(
        labelled["CUSTOMER_ID"].to_numpy(),
        labelled["TX_TIME_DAYS"].to_numpy(),
        compromises.customer_ids,
        compromises.customer_days,
        CUSTOMER_WINDOW_DAYS,
    )

    assert picked.sum() > 0
    assert np.array_equal(after[picked], np.round(before[picked] * AMOUNT_FACTOR, 2))
    assert np.array_equal(after[~picked], before[~picked])
    assert np.all(inside[picked])


def test_scenario_3_picks_a_third_of_window() -> None:
    genuine = simulate_genuine_transactions(20, 300, "2018-04-01", 30, seed=5)
    customer = int(genuine["CUSTOMER_ID"].value_counts().index[0])
    no_terminals = np.zeros(0, dtype=np.int64)
    compromises = Compromises(
        terminal_ids=no_terminals,
        terminal_days=no_terminals,
        customer_ids=np.array([customer]),
        customer_days=np.array([10]),
    )
    labelled = apply_fraud_scenarios(genuine, compromises, np.random.default_rng(0))
    days = genuine["TX_TIME_DAYS"]
    last_day = 10 + CUSTOMER_WINDOW_DAYS - 1
    window = (genuine["CUSTOMER_ID"] == customer) & days.between(10, last_day)
    picked = labelled["TX_FRAUD_SCENARIO"] == 3

    assert window.sum() >= 3
    assert picked.sum() == window.sum() // 3
    assert window[picked].all()


def test_simulate_transactions_default_fraud_rate() -> None:
    transactions = simulate_transactions()
    scenario = transactions["TX_FRAUD_SCENARIO"]

    assert 1_600_000 < len(transactions) < 1_950_000
    assert 0.006 < transactions["TX_FRAUD"].mean() < 0.011
    assert 0.0002 < (scenario == 1).mean() < 0.001
    assert 0.003 < (scenario == 2).mean() < 0.008
    assert 0.0015 < (scenario == 3).mean() < 0.004


def test_simulate_transactions_tiny_radius_empty() -> None:
    transactions = simulate_transactions(
        n_customers=10, n_terminals=10, n_days=3, radius=1e-9
    )

    assert len(transactions) == 0
    assert {name: str(t) for name, t in transactions.dtypes.items()} == COLUMN_DTYPES


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"n_customers": 0}, "n_customers must be positive"),
        ({"n_terminals": -1}, "n_terminals must be positive"),
        ({"n_days": 0}, "n_days must be positive"),
        ({"n_days": 2.5}, "n_days must be an integer"),
        ({"seed": -1}, "seed must be >= 0"),
        ({"radius": 0.0}, "radius must be a positive finite number"),
        ({"start_date": "2018-04-01 12:00"}, "naive midnight"),
        ({"start_date": "not a date"}, "start_date must be a date"),
    ],
)
def test_simulate_transactions_rejects_invalid_arguments(
    arguments: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        simulate_transactions(**arguments)  # type: ignore[arg-type]


def test_terminals_within_radius_matches_brute_force() -> None:
    rng = np.random.default_rng(1)
    customer_xy = rng.uniform(0, 100, size=(300, 2))
    terminal_xy = rng.uniform(0, 100, size=(800, 2))

    for radius in (0.5, 5.0, 37.0, 150.0):
        indptr, indices = simulator._terminals_within_radius(
            customer_xy, terminal_xy, radius
        )
        distances = np.hypot(
            *(customer_xy[:, None, :] - terminal_xy).transpose(2, 0, 1)
        )
        for customer in range(len(customer_xy)):
            expected = np.flatnonzero(distances[customer] <= radius)
            found = indices[indptr[customer] : indptr[customer + 1]]
            assert np.array_equal(found, expected), (radius, customer)


def test_main_writes_parquet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "simulated.parquet"
    argv = ["--out", str(out), "--customers", "50", "--days", "10", "--seed", "2"]

    assert simulator.main(argv) == 0

    written = pd.read_parquet(out)
    expected = simulate_transactions(n_customers=50, n_days=10, seed=2)
    pd.testing.assert_frame_equal(written, expected)
    assert pq.ParquetFile(out).metadata.row_group(0).column(0).compression == "ZSTD"
    printed = capsys.readouterr().out
    assert f"wrote {len(expected)} transactions" in printed
    assert "fraud rate" in printed


@pytest.mark.parametrize(
    "arguments",
    [
        ["--customers", "0"],
        ["--terminals", "-5"],
        ["--days", "ten"],
        ["--seed", "-1"],
        ["--start-date", "2018-13-01"],
    ],
)
def test_main_invalid_argument_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], arguments: list[str]
) -> None:
    with pytest.raises(SystemExit) as raised:
        simulator.main(["--out", str(tmp_path / "x.parquet"), *arguments])

    assert raised.value.code == 2
    assert "error: argument" in capsys.readouterr().err
    assert not (tmp_path / "x.parquet").exists()


def test_main_missing_directory_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as raised:
        simulator.main(["--out", str(tmp_path / "missing" / "x.parquet")])

    assert raised.value.code == 2
    assert "does not exist" in capsys.readouterr().err


def test_module_cli_invalid_size_exits_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "streaming.simulator",
            "--out",
            str(tmp_path / "x.parquet"),
            "--customers",
            "0",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 2
    assert "--customers: must be a positive integer, got '0'" in result.stderr


def test_add_device_ids_shares_and_owners(small: pd.DataFrame) -> None:
    with_devices = add_device_ids(small, seed=5)
    devices = with_devices["DEVICE_ID"]
    on_shared = devices.fillna("").str.startswith("shared-")
    customers_per_device = with_devices.groupby("DEVICE_ID")["CUSTOMER_ID"].nunique()
    shared = customers_per_device.index.str.startswith("shared-")

    assert list(with_devices.columns) == [*COLUMN_DTYPES, "DEVICE_ID"]
    assert devices.isna().mean() == pytest.approx(0.2, abs=0.03)
    assert on_shared.mean() == pytest.approx(0.1, abs=0.03)
    assert (customers_per_device[~shared] == 1).all()
    assert (customers_per_device[shared] > 1).all()
    own = with_devices[devices.notna() & ~on_shared]
    owners = own["DEVICE_ID"].str.extract(r"^c(\d+)-d[01]$")[0].astype("int64")
    assert (owners == own["CUSTOMER_ID"]).all()


def test_add_device_ids_same_seed_same_devices(small: pd.DataFrame) -> None:
    first = add_device_ids(small, seed=5)
    again = add_device_ids(small, seed=5)
    other = add_device_ids(small, seed=6)

    pd.testing.assert_frame_equal(first, again)
    assert not first["DEVICE_ID"].equals(other["DEVICE_ID"])
    pd.testing.assert_frame_equal(first[list(COLUMN_DTYPES)], small)


def test_main_devices_flag_writes_device_column(tmp_path: Path) -> None:
    out = tmp_path / "with-devices.parquet"
    simulator.main(
        ["--out", str(out), "--customers", "20", "--terminals", "30", "--days", "5"]
        + ["--devices"]
    )

    written = pd.read_parquet(out)
    assert written["DEVICE_ID"].notna().any()
    assert written["DEVICE_ID"].isna().any()
