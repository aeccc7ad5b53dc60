"""Synthetic card transactions with labelled fraud, in the dataset's schema.

The output has the columns, dtypes and fraud scenarios of the simulated
transactions published with the Fraud Detection Handbook (Le Borgne et al.,
2022, data repository Fraud-Detection-Handbook/simulated-data-raw), so that
it can stand in for that data at any size. The generator is our own:

* Customers and terminals sit at uniform random points of a 100 x 100
  square. A customer pays only at terminals within ``radius`` of it, and a
  customer with none in reach makes no transactions.
* Each customer has a mean amount, an amount spread and a mean number of
  transactions per day. Daily counts are Poisson, amounts are normal, and
  times of day are normal around noon, so some fall at night.
* Fraud scenario 1 labels every amount above 220. Scenario 2 compromises two
  terminals a day, and all their transactions of the next 28 days are fraud.
  Scenario 3 compromises three customers a day: over the next 14 days a third
  of their transactions are multiplied by 5 in amount and are fraud. A window
  of n days starts on the day of the compromise.

The handbook data has no devices. :func:`add_device_ids` adds a ``DEVICE_ID``
column: most payments come from one of the customer's own devices, some from
devices that several customers share, and some carry no device at all.

Run ``python -m streaming.simulator --out FILE.parquet`` to write a file, with
``--devices`` for the ``DEVICE_ID`` column.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

log = logging.getLogger(__name__)

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
AnyArray = npt.NDArray[Any]

# Column names and dtypes of the handbook's transactions file, in its order.
COLUMN_DTYPES: dict[str, str] = {
    "TRANSACTION_ID": "int64",
    "TX_DATETIME": "datetime64[ns]",
    "CUSTOMER_ID": "int64",
    "TERMINAL_ID": "int64",
    "TX_AMOUNT": "float64",
    "TX_TIME_SECONDS": "int64",
    "TX_TIME_DAYS": "int64",
    "TX_FRAUD": "int64",
    "TX_FRAUD_SCENARIO": "int64",
}

SECONDS_PER_DAY = 86_400

# Side of the square that customers and terminals are placed in.
AREA_SIDE = 100.0
# With 10,000 terminals this radius puts about 75 terminals in a customer's reach
# on average (fewer near the edges of the square). Customers of the handbook data
# use 67 terminals on average.
DEFAULT_RADIUS = 5.0

MEAN_AMOUNT_RANGE = (5.0, 100.0)
# The standard deviation of a customer's amounts, as a share of its mean amount.
AMOUNT_SD_SHARE = 0.5
MEAN_DAILY_TRANSACTIONS_RANGE = (0.0, 4.0)

# Times of day are normal around noon. Draws outside the day are dropped, which
# thins each daily Poisson count by about 3 %.
TIME_OF_DAY_MEAN_SECONDS = 43_200.0
TIME_OF_DAY_SD_SECONDS = 20_000.0

SCENARIO_1_AMOUNT_THRESHOLD = 220.0
# An entity compromised on day d is fraudulent on days d .. d + window - 1.
SCENARIO_2_TERMINALS_PER_DAY = 2
SCENARIO_2_DAYS = 28
SCENARIO_3_CUSTOMERS_PER_DAY = 3
SCENARIO_3_DAYS = 14
SCENARIO_3_SHARE_DENOMINATOR = 3
SCENARIO_3_AMOUNT_FACTOR = 5

# Device assignment of add_device_ids: shares of all transactions and the pools
# the devices come from.
NO_DEVICE_SHARE = 0.2
SHARED_DEVICE_SHARE = 0.1
DEVICES_PER_CUSTOMER = 2
CUSTOMERS_PER_SHARED_DEVICE = 20

# Stride of the (entity, day) keys that the scenario windows search in.
_DAY_KEY_STRIDE = 1 << 32
# Upper bound on the neighbour grid's side in cells, so a tiny radius cannot
# allocate millions of empty cells.
_MAX_GRID_CELLS_PER_SIDE = 1024


@dataclass(frozen=True)
class Compromises:
    """Compromised terminals and customers, each with the day it starts.

    Attributes
    ----------
    terminal_ids, terminal_days : ndarray of shape (n_terminal_events,)
        Terminal compromised on day ``terminal_days[i]`` (0-based day number).
    customer_ids, customer_days : ndarray of shape (n_customer_events,)
        Customer compromised on day ``customer_days[i]``.
    """

    terminal_ids: IntArray
    terminal_days: IntArray
    customer_ids: IntArray
    customer_days: IntArray


@dataclass(frozen=True)
class _Customers:
    """Customer profiles, each array of shape (n_customers,)."""

    x: FloatArray
    y: FloatArray
    mean_amount: FloatArray
    sd_amount: FloatArray
    mean_daily_transactions: FloatArray


def simulate_transactions(
    n_customers: int = 5_000,
    n_terminals: int = 10_000,
    start_date: str | date = "2018-04-01",
    n_days: int = 183,
    seed: int = 0,
    *,
    radius: float = DEFAULT_RADIUS,
) -> pd.DataFrame:
    """Simulate card transactions and label them with the three fraud scenarios.

    The defaults give the handbook data's scale: 1,781,080 transactions and a
    fraud rate of 0.84 % with seed 0. Scenarios 2 and 3 compromise a fixed
    number of terminals and customers a day, so the fraud rate rises as
    ``n_terminals`` or ``n_customers`` shrink.

    NOTE: memory grows with the number of (customer, terminal) pairs in reach,
    about ``n_customers * n_terminals * pi * radius**2 / 100**2``, besides the
    rows themselves. Nothing caps it, so a radius near 100 with tens of
    thousands of customers can exhaust memory.

    Parameters
    ----------
    n_customers, n_terminals, n_days : int
        Positive sizes of the simulation.
    start_date : str or datetime.date
        Naive midnight of day 0, such as ``"2018-04-01"``.
    seed : int
        Non-negative seed. The same arguments and seed give the same frame.
    radius : float
        Maximum distance between a customer and the terminals it uses, on the
        100 x 100 square.

    Returns
    -------
    pandas.DataFrame of shape (n_transactions, 9)
        Columns and dtypes of :data:`COLUMN_DTYPES`, one row per transaction,
        sorted by time, with ``TRANSACTION_ID`` counting up from 0.

    Raises
    ------
    ValueError
        If a size or the radius is not positive, the seed is negative, or
        ``start_date`` is not a naive midnight.
    """
    started = time.perf_counter()
    genuine_seed, compromise_seed, selection_seed = np.random.SeedSequence(
        _check_seed(seed)
    ).spawn(3)

    genuine = _simulate_genuine_columns(
        n_customers, n_terminals, start_date, n_days, genuine_seed, radius
    )
    compromises = draw_compromises(
        n_customers, n_terminals, n_days, np.random.default_rng(compromise_seed)
    )
    labelled = _label_frauds(
        genuine, compromises, np.random.default_rng(selection_seed)
    )
    # Built once from the final columns, because each DataFrame copies its int64
    # columns into one block.
    transactions = pd.DataFrame(labelled)

    log.info(
        "simulated %d transactions (%d frauds) for %d customers, %d terminals "
        "and %d days in %.1f s",
        len(transactions),
        int(transactions["TX_FRAUD"].sum()),
        n_customers,
        n_terminals,
        n_days,
        time.perf_counter() - started,
    )
    return transactions


def simulate_genuine_transactions(
    n_customers: int,
    n_terminals: int,
    start_date: str | date,
    n_days: int,
    seed: int | np.random.SeedSequence,
    *,
    radius: float = DEFAULT_RADIUS,
) -> pd.DataFrame:
    """Simulate transactions before any fraud scenario is applied.

    Parameters are those of :func:`simulate_transactions`, except that ``seed``
    may also be a ``numpy.random.SeedSequence``.

    Returns
    -------
    pandas.DataFrame of shape (n_transactions, 9)
        The columns of :data:`COLUMN_DTYPES`, sorted by time, with
        ``TX_FRAUD`` and ``TX_FRAUD_SCENARIO`` all 0.
    """
    return pd.DataFrame(
        _simulate_genuine_columns(
            n_customers, n_terminals, start_date, n_days, seed, radius
        )
    )


def _simulate_genuine_columns(
    n_customers: int,
    n_terminals: int,
    start_date: str | date,
    n_days: int,
    seed: int | np.random.SeedSequence,
    radius: float,
) -> dict[str, AnyArray]:
    _check_positive("n_customers", n_customers)
    _check_positive("n_terminals", n_terminals)
    _check_positive("n_days", n_days)
    _check_radius(radius)
    start = _parse_start_date(start_date)
    if not isinstance(seed, np.random.SeedSequence):
        seed = _check_seed(seed)
    rng = np.random.default_rng(seed)

    customers = _draw_customers(n_customers, rng)
    terminal_xy = rng.uniform(0.0, AREA_SIDE, size=(n_terminals, 2))
    customer_xy = np.column_stack([customers.x, customers.y])
    indptr, reachable = _terminals_within_radius(customer_xy, terminal_xy, radius)

    customer_ids, days, seconds_of_day = _draw_times(
        customers, np.diff(indptr), n_days, rng
    )
    amounts = _draw_amounts(customers, customer_ids, rng)
    terminal_ids = _draw_terminals(indptr, reachable, customer_ids, rng)

    return _assemble_columns(
        start, customer_ids, terminal_ids, days, seconds_of_day, amounts
    )


def add_device_ids(transactions: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Return a copy of ``transactions`` with a ``DEVICE_ID`` column.

    Each transaction independently carries no device (share
    :data:`NO_DEVICE_SHARE`), a shared device (share :data:`SHARED_DEVICE_SHARE`)
    or one of the customer's :data:`DEVICES_PER_CUSTOMER` own devices. The shared
    pool has one device per :data:`CUSTOMERS_PER_SHARED_DEVICE` distinct
    customers, at least one, and any customer may use any of them.

    Parameters
    ----------
    transactions : pandas.DataFrame of shape (n_transactions, n_columns)
        Rows with an integer ``CUSTOMER_ID`` column.
    seed : int
        Non-negative seed. The same rows and seed give the same devices.

    Returns
    -------
    pandas.DataFrame of shape (n_transactions, n_columns + 1)
        ``DEVICE_ID`` is text such as ``"c17-d1"`` (customer 17's second
        device) or ``"shared-3"``, and None for transactions without a device.
    """
    rng = np.random.default_rng(_check_seed(seed))
    customers = transactions["CUSTOMER_ID"].to_numpy()
    n_shared = max(1, len(np.unique(customers)) // CUSTOMERS_PER_SHARED_DEVICE)
    draw = rng.random(len(customers))
    own = rng.integers(0, DEVICES_PER_CUSTOMER, size=len(customers))
    shared = rng.integers(0, n_shared, size=len(customers))

    devices = np.array(
        [f"c{c}-d{d}" for c, d in zip(customers.tolist(), own.tolist(), strict=True)],
        dtype=object,
    )
    is_shared = draw < NO_DEVICE_SHARE + SHARED_DEVICE_SHARE
    devices[is_shared] = [f"shared-{i}" for i in shared[is_shared].tolist()]
    devices[draw < NO_DEVICE_SHARE] = None
    return transactions.assign(DEVICE_ID=devices)


def draw_compromises(
    n_customers: int,
    n_terminals: int,
    n_days: int,
    rng: np.random.Generator,
) -> Compromises:
    """Draw the terminals and customers that scenarios 2 and 3 compromise.

    Each day compromises two distinct terminals and three distinct customers
    (all of them when there are fewer). Picks on different days are
    independent, so one terminal or customer may be compromised again.

    Raises
    ------
    ValueError
        If a size is not positive.
    """
    _check_positive("n_customers", n_customers)
    _check_positive("n_terminals", n_terminals)
    _check_positive("n_days", n_days)
    terminal_ids, terminal_days = _draw_daily_picks(
        n_terminals, SCENARIO_2_TERMINALS_PER_DAY, n_days, rng
    )
    customer_ids, customer_days = _draw_daily_picks(
        n_customers, SCENARIO_3_CUSTOMERS_PER_DAY, n_days, rng
    )
    return Compromises(terminal_ids, terminal_days, customer_ids, customer_days)


def apply_fraud_scenarios(
    transactions: pd.DataFrame,
    compromises: Compromises,
    rng: np.random.Generator,
) -> pd.DataFrame:
    """Return a copy of ``transactions`` with the three fraud scenarios applied.

    The scenarios are applied in order, and a later one overwrites the
    scenario of a row that an earlier one labelled. Scenario 1 tests the
    amounts before scenario 3 multiplies them.

    Parameters
    ----------
    transactions : pandas.DataFrame of shape (n_transactions, 9)
        Genuine transactions, as :func:`simulate_genuine_transactions` returns.
    compromises : Compromises
        Compromise events, with days numbered like ``TX_TIME_DAYS``.
    rng : numpy.random.Generator
        Source of scenario 3's choice of transactions.

    Returns
    -------
    pandas.DataFrame of shape (n_transactions, 9)
        The same rows with ``TX_AMOUNT``, ``TX_FRAUD`` and
        ``TX_FRAUD_SCENARIO`` set.
    """
    columns = {name: transactions[name].to_numpy() for name in COLUMN_DTYPES}
    return pd.DataFrame(_label_frauds(columns, compromises, rng))


def _label_frauds(
    columns: dict[str, AnyArray],
    compromises: Compromises,
    rng: np.random.Generator,
) -> dict[str, AnyArray]:
    """Apply the fraud scenarios to genuine columns, as in apply_fraud_scenarios.

    Returns new amount and label arrays. The other arrays are shared with
    ``columns``.
    """
    days = columns["TX_TIME_DAYS"]
    amounts = columns["TX_AMOUNT"].copy()
    scenarios = np.zeros(len(amounts), dtype=np.int64)

    scenarios[amounts > SCENARIO_1_AMOUNT_THRESHOLD] = 1

    terminal_rows, _ = _rows_in_windows(
        columns["TERMINAL_ID"],
        days,
        compromises.terminal_ids,
        compromises.terminal_days,
        SCENARIO_2_DAYS,
    )
    scenarios[terminal_rows] = 2

    customer_rows, rows_per_event = _rows_in_windows(
        columns["CUSTOMER_ID"],
        days,
        compromises.customer_ids,
        compromises.customer_days,
        SCENARIO_3_DAYS,
    )
    picked = _pick_share(
        customer_rows, rows_per_event, SCENARIO_3_SHARE_DENOMINATOR, rng
    )
    amounts[picked] = np.round(amounts[picked] * SCENARIO_3_AMOUNT_FACTOR, 2)
    scenarios[picked] = 3

    return columns | {
        "TX_AMOUNT": amounts,
        "TX_FRAUD": (scenarios > 0).astype(np.int64),
        "TX_FRAUD_SCENARIO": scenarios,
    }


def _draw_customers(n_customers: int, rng: np.random.Generator) -> _Customers:
    x = rng.uniform(0.0, AREA_SIDE, size=n_customers)
    y = rng.uniform(0.0, AREA_SIDE, size=n_customers)
    mean_amount = rng.uniform(*MEAN_AMOUNT_RANGE, size=n_customers)
    mean_daily = rng.uniform(*MEAN_DAILY_TRANSACTIONS_RANGE, size=n_customers)
    return _Customers(x, y, mean_amount, mean_amount * AMOUNT_SD_SHARE, mean_daily)


def _terminals_within_radius(
    customer_xy: FloatArray, terminal_xy: FloatArray, radius: float
) -> tuple[IntArray, IntArray]:
    """Find each customer's terminals within ``radius``, as a CSR adjacency.

    Parameters
    ----------
    customer_xy : ndarray of shape (n_customers, 2)
    terminal_xy : ndarray of shape (n_terminals, 2)
    radius : float

    Returns
    -------
    indptr : ndarray of shape (n_customers + 1,)
        Customer ``c``'s terminals are ``indices[indptr[c]:indptr[c + 1]]``.
    indices : ndarray of shape (n_pairs,)
        Terminal ids, ascending within each customer.
    """
    grid = _TerminalGrid.build(terminal_xy, radius)
    customer_cells = grid.cell_of(customer_xy)

    pair_customers = []
    pair_terminals = []
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            customers, terminals = grid.pairs_within(
                customer_xy, customer_cells + (dx, dy), terminal_xy, radius
            )
            pair_customers.append(customers)
            pair_terminals.append(terminals)

    customers = np.concatenate(pair_customers)
    terminals = np.concatenate(pair_terminals)
    order = np.argsort(customers * len(terminal_xy) + terminals)
    counts = np.bincount(customers, minlength=len(customer_xy))
    indptr = np.concatenate([[0], np.cumsum(counts)])
    return indptr, terminals[order]


@dataclass(frozen=True)
class _TerminalGrid:
    """Terminals bucketed into square cells at least ``radius`` wide.

    Only the 3 x 3 cells around a point can then contain terminals within
    ``radius`` of it.
    """

    cell_size: float
    cells_per_side: int
    terminals_by_cell: IntArray
    cell_bounds: IntArray

    @classmethod
    def build(cls, terminal_xy: FloatArray, radius: float) -> _TerminalGrid:
        cell_size = max(radius, AREA_SIDE / _MAX_GRID_CELLS_PER_SIDE)
        cells_per_side = max(1, math.ceil(AREA_SIDE / cell_size))
        cells = _grid_cells(terminal_xy, cell_size, cells_per_side)
        flat_cells = cells[:, 0] * cells_per_side + cells[:, 1]
        terminals_by_cell = np.argsort(flat_cells, kind="stable")
        cell_bounds = np.searchsorted(
            flat_cells[terminals_by_cell], np.arange(cells_per_side**2 + 1)
        )
        return cls(cell_size, cells_per_side, terminals_by_cell, cell_bounds)

    def cell_of(self, xy: FloatArray) -> IntArray:
        """Return the (column, row) cell of each point, shape (n_points, 2)."""
        return _grid_cells(xy, self.cell_size, self.cells_per_side)

    def pairs_within(
        self,
        customer_xy: FloatArray,
        cells: IntArray,
        terminal_xy: FloatArray,
        radius: float,
    ) -> tuple[IntArray, IntArray]:
        """Pair each customer with the terminals of ``cells[c]`` within ``radius``.

        Cells outside the grid contain no terminals.

        Returns
        -------
        customers, terminals : ndarray of shape (n_pairs,)
        """
        inside = np.all((cells >= 0) & (cells < self.cells_per_side), axis=1)
        customers = np.flatnonzero(inside)
        flat = cells[customers, 0] * self.cells_per_side + cells[customers, 1]
        group, position = _expand_ranges(
            self.cell_bounds[flat], self.cell_bounds[flat + 1]
        )
        customers = customers[group]
        terminals = self.terminals_by_cell[position]

        offset = customer_xy[customers] - terminal_xy[terminals]
        within = np.hypot(offset[:, 0], offset[:, 1]) <= radius
        return customers[within], terminals[within]


def _grid_cells(xy: FloatArray, cell_size: float, cells_per_side: int) -> IntArray:
    cells: IntArray = np.floor(xy / cell_size).astype(np.int64)
    return cells.clip(0, cells_per_side - 1)


def _expand_ranges(starts: IntArray, stops: IntArray) -> tuple[IntArray, IntArray]:
    """Enumerate every index of the ranges ``[starts[i], stops[i])``.

    Returns
    -------
    group : ndarray of shape (n_indices,)
        The range ``i`` that each index comes from, ascending.
    position : ndarray of shape (n_indices,)
        The indices, ascending within each range.
    """
    lengths = stops - starts
    group = np.repeat(np.arange(len(starts)), lengths)
    first_of_group = np.cumsum(lengths) - lengths
    position = starts[group] + np.arange(len(group)) - first_of_group[group]
    return group, position


def _draw_times(
    customers: _Customers,
    n_reachable: IntArray,
    n_days: int,
    rng: np.random.Generator,
) -> tuple[IntArray, IntArray, IntArray]:
    """Draw who transacts on which day and at which second of the day.

    Returns
    -------
    customer_ids, days, seconds_of_day : ndarray of shape (n_transactions,)
        Grouped by customer, then by day. Customers without a reachable
        terminal make no transactions.
    """
    rate = np.where(n_reachable > 0, customers.mean_daily_transactions, 0.0)
    counts = rng.poisson(rate[:, np.newaxis], size=(len(rate), n_days))
    cell = np.repeat(np.arange(counts.size), counts.ravel())
    customer_ids, days = np.divmod(cell, n_days)

    seconds = rng.normal(
        TIME_OF_DAY_MEAN_SECONDS, TIME_OF_DAY_SD_SECONDS, size=len(cell)
    )
    in_day = (seconds >= 0) & (seconds < SECONDS_PER_DAY)
    seconds_of_day = seconds[in_day].astype(np.int64)
    return customer_ids[in_day], days[in_day], seconds_of_day


def _draw_amounts(
    customers: _Customers, customer_ids: IntArray, rng: np.random.Generator
) -> FloatArray:
    """Draw one amount per transaction, rounded to cents.

    A negative normal draw is replaced by a uniform draw between 0 and the
    customer's mean amount, so that amounts stay >= 0.
    """
    mean = customers.mean_amount[customer_ids]
    amounts = rng.normal(mean, customers.sd_amount[customer_ids])
    negative = amounts < 0
    amounts[negative] = rng.uniform(0.0, mean[negative])
    return np.round(amounts, 2)


def _draw_terminals(
    indptr: IntArray,
    reachable: IntArray,
    customer_ids: IntArray,
    rng: np.random.Generator,
) -> IntArray:
    """Pick, for each transaction, a terminal uniformly among the customer's."""
    first = indptr[customer_ids]
    n_choices = indptr[customer_ids + 1] - first
    offset = np.floor(rng.random(len(customer_ids)) * n_choices).astype(np.int64)
    terminal_ids: IntArray = reachable[first + offset]
    return terminal_ids


def _assemble_columns(
    start: pd.Timestamp,
    customer_ids: IntArray,
    terminal_ids: IntArray,
    days: IntArray,
    seconds_of_day: IntArray,
    amounts: FloatArray,
) -> dict[str, AnyArray]:
    """Sort the transactions by time into the columns of :data:`COLUMN_DTYPES`.

    Transactions in the same second keep their generation order.
    """
    seconds = days * SECONDS_PER_DAY + seconds_of_day
    order = np.argsort(seconds, kind="stable")
    seconds = seconds[order]
    n_transactions = len(seconds)

    return {
        "TRANSACTION_ID": np.arange(n_transactions),
        "TX_DATETIME": start.to_datetime64() + seconds.astype("timedelta64[s]"),
        "CUSTOMER_ID": customer_ids[order],
        "TERMINAL_ID": terminal_ids[order],
        "TX_AMOUNT": amounts[order],
        "TX_TIME_SECONDS": seconds,
        "TX_TIME_DAYS": days[order],
        "TX_FRAUD": np.zeros(n_transactions, dtype=np.int64),
        "TX_FRAUD_SCENARIO": np.zeros(n_transactions, dtype=np.int64),
    }


def _draw_daily_picks(
    population: int, per_day: int, n_days: int, rng: np.random.Generator
) -> tuple[IntArray, IntArray]:
    """Pick ``per_day`` distinct members of ``range(population)`` for each day.

    Returns
    -------
    ids, days : ndarray of shape (n_days * min(per_day, population),)
    """
    picks = min(per_day, population)
    ids = np.concatenate(
        [rng.choice(population, size=picks, replace=False) for _ in range(n_days)]
    )
    days = np.repeat(np.arange(n_days), picks)
    return ids.astype(np.int64), days


def _rows_in_windows(
    entity_ids: IntArray,
    days: IntArray,
    event_ids: IntArray,
    event_days: IntArray,
    window_days: int,
) -> tuple[IntArray, IntArray]:
    """Find the rows of each event's entity in days ``[day, day + window_days)``.

    Parameters
    ----------
    entity_ids, days : ndarray of shape (n_rows,)
        Terminal or customer id and day number of each row.
    event_ids, event_days : ndarray of shape (n_events,)
        Compromised entity and first day of each event.
    window_days : int

    Returns
    -------
    rows : ndarray of shape (n_matches,)
        Row numbers of event 0's window, then event 1's, and so on. A row in
        the windows of two events appears twice.
    rows_per_event : ndarray of shape (n_events,)
        Number of rows in each event's window.
    """
    # Only rows of compromised entities are sorted, a small share of all rows.
    candidates = np.flatnonzero(np.isin(entity_ids, event_ids))
    keys = entity_ids[candidates].astype(np.int64) * _DAY_KEY_STRIDE
    keys += days[candidates]
    order = np.argsort(keys, kind="stable")
    rows_by_key = candidates[order]
    sorted_keys = keys[order]

    # Keys of one entity are contiguous and ordered by day, so each window is
    # one slice of the sorted keys.
    first_keys = event_ids.astype(np.int64) * _DAY_KEY_STRIDE + event_days
    starts = np.searchsorted(sorted_keys, first_keys, side="left")
    stops = np.searchsorted(sorted_keys, first_keys + window_days, side="left")
    _, position = _expand_ranges(starts, stops)
    return rows_by_key[position], stops - starts


def _pick_share(
    rows: IntArray,
    rows_per_event: IntArray,
    denominator: int,
    rng: np.random.Generator,
) -> IntArray:
    """Pick ``n // denominator`` random rows of each event that has ``n`` rows.

    Parameters
    ----------
    rows : ndarray of shape (n_matches,)
        Row numbers grouped by event, as :func:`_rows_in_windows` returns them.
    rows_per_event : ndarray of shape (n_events,)
    denominator : int
    rng : numpy.random.Generator

    Returns
    -------
    ndarray of shape (n_picked,)
        Unique row numbers, ascending. A row that two overlapping events pick
        appears once.
    """
    group = np.repeat(np.arange(len(rows_per_event)), rows_per_event)
    shuffled = np.lexsort((rng.random(len(rows)), group))
    rank = np.arange(len(rows)) - (np.cumsum(rows_per_event) - rows_per_event)[group]
    keep = rank < (rows_per_event // denominator)[group]
    picked: IntArray = np.unique(rows[shuffled][keep])
    return picked


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")


def _check_radius(radius: float) -> None:
    if not math.isfinite(radius) or radius <= 0:
        raise ValueError(f"radius must be a positive finite number, got {radius!r}")


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return int(seed)


def _parse_start_date(start_date: str | date) -> pd.Timestamp:
    try:
        start = pd.Timestamp(start_date)
    except (TypeError, ValueError):
        raise ValueError(
            f"start_date must be a date such as '2018-04-01', got {start_date!r}"
        ) from None
    if start is pd.NaT or start.tzinfo is not None or start != start.normalize():
        raise ValueError(
            f"start_date must be a naive midnight such as '2018-04-01', "
            f"got {start_date!r}"
        )
    return start.as_unit("ns")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def _iso_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a date in YYYY-MM-DD form, got {text!r}"
        ) from None


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m streaming.simulator",
        description="Simulate card transactions with fraud labels into Parquet.",
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="Parquet file to write (zstd)"
    )
    parser.add_argument(
        "--customers", type=_positive_int, default=5_000, help="number of customers"
    )
    parser.add_argument(
        "--terminals", type=_positive_int, default=10_000, help="number of terminals"
    )
    parser.add_argument(
        "--days", type=_positive_int, default=183, help="number of days simulated"
    )
    parser.add_argument(
        "--start-date",
        type=_iso_date,
        default=date(2018, 4, 1),
        help="first day, YYYY-MM-DD (default 2018-04-01)",
    )
    parser.add_argument(
        "--seed", type=_non_negative_int, default=0, help="random seed, >= 0"
    )
    parser.add_argument(
        "--devices",
        action="store_true",
        help="add a DEVICE_ID column (see add_device_ids)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Write simulated transactions to ``--out`` and print the row count.

    Invalid arguments make argparse exit with status 2.
    """
    parser = _build_parser()
    args = parser.parse_args(argv)
    if not args.out.parent.is_dir():
        parser.error(f"the directory of --out does not exist: {args.out.parent}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")

    transactions = simulate_transactions(
        n_customers=args.customers,
        n_terminals=args.terminals,
        start_date=args.start_date,
        n_days=args.days,
        seed=args.seed,
    )
    if args.devices:
        transactions = add_device_ids(transactions, seed=args.seed)
    transactions.to_parquet(args.out, compression="zstd", index=False)

    n_frauds = int(transactions["TX_FRAUD"].sum())
    rate = n_frauds / len(transactions) if len(transactions) else 0.0
    print(
        f"wrote {len(transactions)} transactions to {args.out}: "
        f"{n_frauds} frauds, fraud rate {rate:.3%}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
