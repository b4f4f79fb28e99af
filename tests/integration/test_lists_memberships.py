"""List memberships keep their references whole without per-row foreign keys (lists migration 0005).

Each test drives the lists schema with plain SQL on real PostgreSQL, two connections where the
scenario is a race, and checks what a foreign key would have guaranteed.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psycopg
import pytest

from services.common.db import migrate

SQL_DIR = Path(__file__).resolve().parents[2] / "services" / "lists" / "sql"


@pytest.fixture
async def lists_url(database_url: str) -> str:
    """The test database with the lists schema migrated, as a URL whose search_path is that schema."""
    await migrate(database_url, "lists", SQL_DIR)
    return psycopg.conninfo.make_conninfo(database_url, options="-c search_path=lists")


def _seed(url: str) -> tuple[int, int, int]:
    """One list and two active subscribers: (list id, first subscriber, second subscriber)."""
    with psycopg.connect(url, autocommit=True) as conn:
        list_id = conn.execute("INSERT INTO lists (organization_id, name) VALUES (1, 'l') RETURNING id").fetchone()[0]
        ids = [
            r[0]
            for r in conn.execute(
                "INSERT INTO subscribers (organization_id, email) VALUES (1, 'a@example.com'), (1, 'b@example.com')"
                " RETURNING id"
            ).fetchall()
        ]
    return list_id, ids[0], ids[1]


def _counts(url: str, list_id: int) -> tuple[int, int]:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(active), 0), coalesce(sum(total), 0) FROM list_counts WHERE list_id = %s", (list_id,)
        ).fetchone()
    return int(row[0]), int(row[1])


def test_membership_of_missing_subscriber_or_list_is_refused(lists_url):
    # Scenario: a statement adds memberships where one names a subscriber that does not exist, another a
    # list that does not exist. Each is refused whole with SQLSTATE 23503 naming the missing row, and
    # nothing (no membership, no count) is left behind.
    list_id, first, _ = _seed(lists_url)
    with psycopg.connect(lists_url, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.ForeignKeyViolation, match=r"subscriber 999999 does not exist"):
            conn.execute(
                "INSERT INTO list_subscriptions (list_id, subscriber_id) VALUES (%s, %s), (%s, 999999)",
                (list_id, first, list_id),
            )
        with pytest.raises(psycopg.errors.ForeignKeyViolation, match=r"list 888888 does not exist"):
            conn.execute("INSERT INTO list_subscriptions (list_id, subscriber_id) VALUES (888888, %s)", (first,))
        assert conn.execute("SELECT count(*) FROM list_subscriptions").fetchone()[0] == 0
        with pytest.raises(psycopg.errors.ForeignKeyViolation, match="cannot change its list or subscriber"):
            conn.execute("INSERT INTO list_subscriptions (list_id, subscriber_id) VALUES (%s, %s)", (list_id, first))
            conn.execute("UPDATE list_subscriptions SET subscriber_id = 999999")
    assert _counts(lists_url, list_id) == (1, 1)


def test_subscriber_or_list_with_members_cannot_be_deleted(lists_url):
    # Scenario: deleting a subscriber that is still on a list, or a list that still has members, fails
    # with 23503; once the membership is gone the subscriber can be deleted.
    list_id, first, _ = _seed(lists_url)
    with psycopg.connect(lists_url, autocommit=True) as conn:
        conn.execute("INSERT INTO list_subscriptions (list_id, subscriber_id) VALUES (%s, %s)", (list_id, first))
        with pytest.raises(psycopg.errors.ForeignKeyViolation, match=f"subscriber {first} is still on a list"):
            conn.execute("DELETE FROM subscribers WHERE id = %s", (first,))
        with pytest.raises(psycopg.errors.ForeignKeyViolation, match=f"list {list_id} still has members"):
            conn.execute("DELETE FROM lists WHERE id = %s", (list_id,))
        conn.execute("DELETE FROM list_subscriptions WHERE subscriber_id = %s", (first,))
        conn.execute("DELETE FROM subscribers WHERE id = %s", (first,))
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="READ COMMITTED"):
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            conn.execute("DELETE FROM subscribers WHERE organization_id = 1")
    assert _counts(lists_url, list_id) == (0, 0)


def _in_thread(target) -> tuple[threading.Thread, list]:
    outcome: list = []

    def run() -> None:
        try:
            target()
            outcome.append(None)
        except Exception as exc:  # the test inspects it
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def _waiting_on_lock(url: str) -> bool:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'").fetchone()[0] > 0


def _wait_until_blocked(url: str, thread: threading.Thread) -> None:
    deadline = time.monotonic() + 10
    while not _waiting_on_lock(url):
        assert thread.is_alive(), "the second transaction finished instead of waiting for the first"
        assert time.monotonic() < deadline, "the second transaction never waited for the first"
        time.sleep(0.02)


def test_delete_racing_an_uncommitted_membership_waits_and_fails(lists_url):
    # Scenario: one transaction puts a subscriber on a list and has not committed; another deletes that
    # subscriber. The delete waits for the first (the row is locked FOR KEY SHARE), then sees the
    # committed membership and fails: no membership is left pointing at nothing.
    list_id, first, _ = _seed(lists_url)
    with psycopg.connect(lists_url) as adder:
        adder.execute("INSERT INTO list_subscriptions (list_id, subscriber_id) VALUES (%s, %s)", (list_id, first))

        def delete() -> None:
            with psycopg.connect(lists_url) as deleter:
                deleter.execute("DELETE FROM subscribers WHERE id = %s", (first,))
                deleter.commit()

        thread, outcome = _in_thread(delete)
        _wait_until_blocked(lists_url, thread)
        adder.commit()
    thread.join(10)
    assert isinstance(outcome[0], psycopg.errors.ForeignKeyViolation)
    with psycopg.connect(lists_url) as conn:
        assert conn.execute("SELECT count(*) FROM subscribers WHERE id = %s", (first,)).fetchone()[0] == 1
    assert _counts(lists_url, list_id) == (1, 1)


def test_membership_racing_an_uncommitted_delete_waits_and_fails(lists_url):
    # Scenario: one transaction deletes a subscriber and has not committed; another puts that subscriber
    # on a list. The insert waits for the delete, then finds the subscriber gone and fails with 23503,
    # and the list's counts stay untouched.
    list_id, first, second = _seed(lists_url)
    with psycopg.connect(lists_url) as deleter:
        deleter.execute("DELETE FROM subscribers WHERE id = %s", (first,))

        def add() -> None:
            with psycopg.connect(lists_url) as adder:
                adder.execute(
                    "INSERT INTO list_subscriptions (list_id, subscriber_id) VALUES (%s, %s), (%s, %s)",
                    (list_id, second, list_id, first),
                )
                adder.commit()

        thread, outcome = _in_thread(add)
        _wait_until_blocked(lists_url, thread)
        deleter.commit()
    thread.join(10)
    assert isinstance(outcome[0], psycopg.errors.ForeignKeyViolation)
    assert f"subscriber {first} does not exist" in str(outcome[0])
    with psycopg.connect(lists_url) as conn:
        assert conn.execute("SELECT count(*) FROM list_subscriptions").fetchone()[0] == 0
    assert _counts(lists_url, list_id) == (0, 0)


def test_counts_read_the_status_a_concurrent_change_committed(lists_url):
    # Scenario: a subscriber is being unsubscribed (row locked FOR UPDATE, not committed) while another
    # transaction puts them on a list. The membership waits, then counts them with the committed status
    # (not active), so the list shows one member and no active one.
    list_id, first, _ = _seed(lists_url)
    with psycopg.connect(lists_url) as changer:
        changer.execute("SELECT 1 FROM subscribers WHERE id = %s FOR UPDATE", (first,))
        changer.execute("UPDATE subscribers SET status = 'unsubscribed' WHERE id = %s", (first,))

        def add() -> None:
            with psycopg.connect(lists_url) as adder:
                adder.execute(
                    "INSERT INTO list_subscriptions (list_id, subscriber_id) VALUES (%s, %s)", (list_id, first)
                )
                adder.commit()

        thread, outcome = _in_thread(add)
        _wait_until_blocked(lists_url, thread)
        changer.commit()
    thread.join(10)
    assert outcome == [None]
    assert _counts(lists_url, list_id) == (0, 1)
