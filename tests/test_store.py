"""The bank file: schema versioning, migrations table, WAL, drivers, bad files."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from memr1 import BankError, IncompatibleBank, Memory, MemoryNotFound
from memr1.store import SCHEMA_VERSION, Store, _driver_module


def test_new_bank_records_its_migrations_and_uses_wal(bank: Path) -> None:
    store = Store(bank)
    rows = store.query("SELECT version, name FROM migrations ORDER BY version")
    assert [r[0] for r in rows] == list(range(1, SCHEMA_VERSION + 1))
    assert store.query("PRAGMA journal_mode")[0][0] == "wal"
    assert store.query("PRAGMA busy_timeout")[0][0] == 30_000
    tables = {r[0] for r in store.query("SELECT name FROM sqlite_master WHERE type IN ('table', 'trigger')")}
    assert {"memories", "history", "turns", "meta", "migrations", "fts_memories", "memories_ai"} <= tables
    store.close()
    Store(bank).close()  # reopening runs no migration twice
    assert len(Store(bank).query("SELECT * FROM migrations")) == SCHEMA_VERSION


def test_vector_table_is_created_for_the_embedders_dimension(mem: Memory) -> None:
    mem.add("hello")
    sql = mem.store.query("SELECT sql FROM sqlite_master WHERE name = 'vec_memories'")[0][0]
    assert "float[32]" in sql and "cosine" in sql
    assert mem.store.meta()["embedder_dim"] == "32"


def test_a_bank_from_a_newer_memr1_is_refused(bank: Path) -> None:
    Store(bank).close()
    with Store(bank).write() as conn:
        conn.execute("INSERT INTO migrations VALUES (999, 'future', 'now')")
    with pytest.raises(IncompatibleBank, match="upgrade memr1"):
        Store(bank)


def test_a_file_that_is_not_sqlite_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    payload = b"these are my notes, not a database\n" * 200
    path.write_bytes(payload)
    with pytest.raises(BankError, match="not a memr1 bank"):
        Memory(path)
    assert path.read_bytes() == payload


def test_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BankError, match="directory"):
        Memory(tmp_path)


def test_failed_write_rolls_back_everything(mem: Memory) -> None:
    from memr1.store import Change

    keep = mem.add("keep me")
    vec = mem.embedder.embed(["new"])[0].tobytes()
    with pytest.raises(MemoryNotFound):
        mem.store.apply(
            [
                Change("ADD", "default", text="new", vector=vec, at_ts=0.0),
                Change("UPDATE", "default", memory_id=12345, text="x", vector=vec),
            ],  # unknown id: fails midway
            actor="test",
        )
    assert [i.text for i in mem.list()] == ["keep me"]
    assert mem.stats()["history"] == 1
    assert mem.store.query("SELECT count(*) FROM vec_memories")[0][0] == 1
    assert mem.search("new")[0].memory.id == keep.id


def test_sqlite_info_reports_versions(mem: Memory) -> None:
    info = mem.sqlite_info()
    assert info["sqlite_vec_version"].startswith("v0.1.")
    assert info["driver"] in ("sqlite3", "sqlean")
    assert tuple(int(x) for x in info["sqlite_version"].split(".")[:2]) >= (3, 37)


def test_driver_falls_back_when_stdlib_cannot_load_extensions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEMR1_SQLITE_DRIVER", raising=False)
    expected = "sqlite3" if hasattr(sqlite3.Connection, "enable_load_extension") else "sqlean"
    assert _driver_module().__name__.split(".")[0] == expected
    monkeypatch.setenv("MEMR1_SQLITE_DRIVER", "sqlean")
    assert _driver_module().__name__.split(".")[0] == "sqlean"


def test_fts_index_follows_updates_and_deletes(mem: Memory) -> None:
    item = mem.add("the quick brown fox")
    mem.update(item.id, "a lazy dog")
    assert mem.search("fox", mode="text") == []
    assert [h.memory.id for h in mem.search("lazy", mode="text")] == [item.id]
    mem.delete(item.id)
    assert mem.search("lazy", mode="text") == []
    assert mem.store.query("INSERT INTO fts_memories(fts_memories) VALUES ('integrity-check')") == []
