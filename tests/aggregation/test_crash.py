"""A run killed (kill -9) inside its transaction leaves nothing; the next run is exact."""

import os
import random
import signal
import subprocess
import sys
from datetime import datetime, timedelta
from decimal import Decimal

import psycopg2
import pytest

from dacc.aggregation.compute import compute_aggregation
from tests.aggregation.helpers import (
    aggregate_cells,
    assert_cells_equal,
    blocked_pid,
    database_url,
    expected_cells,
    insert_raw,
)

RUN = """
import sys
from dacc import create_app
from dacc.aggregation.compute import compute_aggregation
from dacc.config import Config

app = create_app(Config(database_url=sys.argv[1], logging_enable=False, source="crash test"))
with app.app_context():
    compute_aggregation(sys.argv[2], force=True)
"""

# Where the killed run waits: on the aggregation_state row (every level merged, only
# the snapshot left to save), or on one aggregate row in the middle of the merge.
LOCKS = {
    "before_saving_the_snapshot": "SELECT 1 FROM aggregation_state WHERE measure_name = 'm' FOR UPDATE",
    "in_the_middle_of_the_merge": (
        "SELECT 1 FROM aggregate WHERE measure_name = 'm' AND group1 = '{\"g1\": \"c\"}'"
        " AND group2 IS NOT NULL ORDER BY start_date LIMIT 1 FOR UPDATE"
    ),
}


def _batch(seed: int, n: int):
    rnd = random.Random(seed)
    base = datetime(2024, 5, 1)
    return [
        (
            Decimal(rnd.randint(-5000, 15000)) / 100,
            base + timedelta(days=rnd.randrange(20)),
            "app",
            {"g1": rnd.choice("abcd")},
            {"g2": rnd.choice("xyz")},
            None,
        )
        for _ in range(n)
    ]


@pytest.mark.parametrize("where", sorted(LOCKS))
def test_run_killed_mid_transaction_leaves_nothing_and_the_next_run_is_exact(app, make_definition, where):
    definition = make_definition("m", group2_key="g2", with_quartiles=True, wildcard_groups=[["group2"]])
    insert_raw("m", _batch(1, 3000))
    compute_aggregation("m", force=True)
    before = aggregate_cells("m")
    insert_raw("m", _batch(2, 6000))

    holder = psycopg2.connect(database_url())
    with holder.cursor() as cur:
        cur.execute(LOCKS[where])
        assert cur.rowcount == 1
    run = subprocess.Popen(
        [sys.executable, "-c", RUN, database_url("postgresql+psycopg2"), "m"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        try:
            backend = blocked_pid(holder)
        except AssertionError:
            run.kill()
            raise AssertionError(run.communicate()[1].decode()[-3000:]) from None
        os.kill(run.pid, signal.SIGKILL)
        assert run.wait(10) == -signal.SIGKILL
    finally:
        if run.poll() is None:
            run.kill()
        holder.rollback()
        holder.close()
    # The orphaned backend finishes its statement, finds its client gone and aborts.
    from tests.aggregation.helpers import wait_backend_gone

    wait_backend_gone(backend)
    assert aggregate_cells("m") == before

    result = compute_aggregation("m", force=True)
    assert result.raw_read == 6000
    assert_cells_equal(aggregate_cells("m", {}), expected_cells(definition))
    assert_cells_equal(
        aggregate_cells("m", {"group2": "g2"}), expected_cells(definition, frozenset({"group2"}))
    )


def test_a_killed_run_releases_its_lock_within_seconds_and_a_rerun_proceeds(app, make_definition):
    """The killed run's backend waits on a row lock that is NOT released: without
    client_connection_check_interval it would keep the measure's lock for as long."""
    import time

    from tests.aggregation.helpers import wait_backend_gone

    definition = make_definition("m", group2_key="g2")
    insert_raw("m", _batch(3, 500))
    compute_aggregation("m", force=True)
    insert_raw("m", _batch(4, 500))
    holder = psycopg2.connect(database_url())
    try:
        with holder.cursor() as cur:
            cur.execute(LOCKS["in_the_middle_of_the_merge"])
        run = subprocess.Popen(
            [sys.executable, "-c", RUN, database_url("postgresql+psycopg2"), "m"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            backend = blocked_pid(holder)
            os.kill(run.pid, signal.SIGKILL)
            assert run.wait(10) == -signal.SIGKILL
            killed_at = time.monotonic()
            wait_backend_gone(backend, timeout=5)
            assert time.monotonic() - killed_at < 5
        finally:
            if run.poll() is None:
                run.kill()
    finally:
        holder.rollback()
        holder.close()
    result = compute_aggregation("m", force=True)
    assert not result.skipped
    assert result.raw_read == 500
    assert_cells_equal(aggregate_cells("m", {}), expected_cells(definition))
