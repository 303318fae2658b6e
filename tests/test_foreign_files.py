"""Opening a file that is not a memr1 bank refuses it without writing a byte: no tables, no WAL, no side files."""

from __future__ import annotations

import os
import sqlite3
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from memr1 import BankError, Memory

SIDE_FILES = ("-wal", "-shm", "-journal")


def _sqlite_file(path: Path, *statements: str, wal: bool = False) -> Path:
    conn = sqlite3.connect(path)
    if wal:
        conn.execute("PRAGMA journal_mode = WAL")
    for statement in statements:
        conn.execute(statement)
    conn.commit()
    conn.close()
    assert not [s for s in SIDE_FILES if Path(f"{path}{s}").exists()]
    return path


def _assert_refused_untouched(path: Path, open_bank: Callable[[Path], object]) -> None:
    payload, mtime = path.read_bytes(), path.stat().st_mtime_ns
    with pytest.raises(BankError, match="not a memr1 bank"):
        open_bank(path)
    assert path.read_bytes() == payload and path.stat().st_mtime_ns == mtime
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no -wal, -shm or -journal left behind


@pytest.fixture
def open_bank(tiny_embedder: Path) -> Callable[[Path], object]:
    def opener(path: Path) -> object:
        mem = Memory(path, embedder=tiny_embedder)
        mem.close()
        return mem

    return opener


@pytest.mark.parametrize(
    "statements",
    [
        pytest.param(
            ["CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)", "INSERT INTO users VALUES (1, 'a')"], id="users"
        ),
        pytest.param(["CREATE TABLE meta (k TEXT, v TEXT)"], id="its-own-meta"),
        pytest.param(
            ["CREATE TABLE migrations (id INTEGER PRIMARY KEY, migration TEXT, batch INTEGER)"],
            id="another-frameworks-migrations",
        ),
        pytest.param(
            [
                "CREATE TABLE migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)",
                "INSERT INTO migrations VALUES (1, 'create users', 'today')",
            ],
            id="lookalike-migrations",
        ),
        pytest.param(["CREATE VIEW v AS SELECT 1"], id="only-a-view"),
    ],
)
def test_another_applications_database_is_refused_untouched(tmp_path: Path, open_bank, statements: list[str]) -> None:
    _assert_refused_untouched(_sqlite_file(tmp_path / "app.db", *statements), open_bank)


def test_a_wal_database_of_another_application_gets_no_side_files(tmp_path: Path, open_bank) -> None:
    """A read-only SQLite connection would create -wal and -shm for a WAL database and leave them there."""
    app = _sqlite_file(tmp_path / "app.db", "CREATE TABLE users (id INTEGER)", wal=True)
    _assert_refused_untouched(app, open_bank)


def test_a_file_that_is_not_sqlite_is_refused_untouched(tmp_path: Path, open_bank) -> None:
    garbage_after_the_magic = b"SQLite format 3\x00" + b"\xff" * 4000
    for name, payload in (("notes.txt", b"my notes\n" * 500), ("short", b"x"), ("fake.db", garbage_after_the_magic)):
        directory = tmp_path / name.replace(".", "_")
        directory.mkdir()
        path = directory / name
        path.write_bytes(payload)
        _assert_refused_untouched(path, open_bank)


@pytest.mark.skipif(sys.platform == "win32", reason="FIFOs are POSIX")
def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path, open_bank) -> None:
    fifo = tmp_path / "bank.db"
    os.mkfifo(fifo)
    outcome: list[BaseException | None] = []
    worker = threading.Thread(target=lambda: outcome.append(_raised(open_bank, fifo)), daemon=True)
    worker.start()
    worker.join(10)
    if worker.is_alive():
        with open(fifo, "wb"):  # let the blocked reader go so the run can end
            pass
        worker.join(10)
        pytest.fail("opening a FIFO as a bank waited for a writer")
    assert isinstance(outcome[0], BankError) and "not a regular file" in str(outcome[0])
    assert [p.name for p in tmp_path.iterdir()] == ["bank.db"]


def _raised(call: Callable[[Path], object], path: Path) -> BaseException | None:
    try:
        call(path)
    except BaseException as e:
        return e
    return None


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda p: p.touch(), id="empty-file"),
        pytest.param(lambda p: _sqlite_file(p, "PRAGMA user_version = 7"), id="sqlite-without-tables"),
        pytest.param(
            lambda p: _sqlite_file(
                p, "CREATE TABLE migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
            ),
            id="creation-cut-short",
        ),
    ],
)
def test_an_empty_file_becomes_a_bank(tmp_path: Path, tiny_embedder: Path, make) -> None:
    path = tmp_path / "bank.db"
    make(path)
    with Memory(path, embedder=tiny_embedder) as mem:
        mem.add("hello")
        assert mem.check() == []
        assert mem.store.query("PRAGMA journal_mode")[0][0] == "wal"


def test_a_bank_reopens_closed_and_while_open_elsewhere(tmp_path: Path, tiny_embedder: Path) -> None:
    path = tmp_path / "bank.db"
    with Memory(path, embedder=tiny_embedder) as mem:
        mem.add("one")
    assert not Path(f"{path}-wal").exists()  # closed cleanly: the main file alone is the bank
    with Memory(path, embedder=tiny_embedder) as first, Memory(path, embedder=tiny_embedder) as second:
        first.add("two")
        assert [i.text for i in second.list()] == ["one", "two"]
