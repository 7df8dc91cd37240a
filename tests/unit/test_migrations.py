"""Migrations apply as `wrangler d1 migrations apply` does, once each, recorded by name."""

import re
import sqlite3

import pytest

from services.readstore.migrations import MigrationError, apply_migrations, migration_files
from services.readstore.store import ReadStoreError, open_read_store


def test_an_empty_database_gets_every_migration_recorded(tmp_path):
    conn = sqlite3.connect(tmp_path / "d1.db", isolation_level=None)
    names = [p.name for p in migration_files()]
    assert apply_migrations(conn) == names
    rows = conn.execute("SELECT id, name, applied_at FROM d1_migrations ORDER BY id").fetchall()
    assert [r[1] for r in rows] == names
    assert [r[0] for r in rows] == list(range(1, len(names) + 1))
    assert all(r[2] for r in rows)  # CURRENT_TIMESTAMP, as D1 records it
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"rooms", "messages", "members_seen", "ai_usage_daily", "projector_positions",
            "dead_letters", "d1_migrations"} <= tables


def test_applying_twice_changes_nothing(tmp_path):
    conn = sqlite3.connect(tmp_path / "d1.db", isolation_level=None)
    apply_migrations(conn)
    before = conn.execute("SELECT * FROM d1_migrations").fetchall()
    assert apply_migrations(conn) == []
    assert conn.execute("SELECT * FROM d1_migrations").fetchall() == before


def test_the_sql_is_what_d1_accepts():
    for path in migration_files():
        code = "\n".join(line.split("--")[0] for line in path.read_text().splitlines()).upper()
        # as statements: a table may well be named message_attachments
        assert not re.search(r"\bPRAGMA\b", code) and not re.search(r"\bATTACH\b", code)
        assert len(path.read_bytes()) < 100_000


def test_a_misnamed_migration_is_refused(tmp_path):
    (tmp_path / "init.sql").write_text("CREATE TABLE t (x);")
    with pytest.raises(MigrationError, match="NNNN_name.sql"):
        migration_files(tmp_path)


def test_a_failing_migration_is_not_recorded(tmp_path):
    (tmp_path / "0001_ok.sql").write_text("CREATE TABLE t (x);")
    (tmp_path / "0002_bad.sql").write_text("CREATE TABLE t (x);")  # already exists
    conn = sqlite3.connect(tmp_path / "d1.db", isolation_level=None)
    with pytest.raises(MigrationError, match="0002_bad.sql"):
        apply_migrations(conn, tmp_path)
    assert [r[0] for r in conn.execute("SELECT name FROM d1_migrations")] == ["0001_ok.sql"]


def test_a_corrupt_or_missing_store_gives_a_clear_message(tmp_path):
    garbage = tmp_path / "read.db"
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ReadStoreError, match="not a usable read store"):
        open_read_store(garbage)
    with pytest.raises(ReadStoreError, match="no read store at"):
        open_read_store(tmp_path / "missing.db", readonly=True)
