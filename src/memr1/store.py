"""The bank file: connection, migrations and every SQL statement memr1 runs.

Each write goes through `Store.apply` or `Store.write`, one BEGIN IMMEDIATE transaction:
memory row, vector row, FTS row (by trigger) and history row land together or not at all.
"""

from __future__ import annotations

import importlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlite_vec

from .errors import BankBusy, BankError, Conflict, ExtensionUnavailable, IncompatibleBank, InvalidInput, MemoryNotFound
from .schema import HistoryEntry, MemoryItem, StoredTurn, check_key, utcnow

DEFAULT_BUSY_TIMEOUT_MS = 30_000


def _driver_module():
    """Pick a DB-API driver that can load sqlite-vec.

    The stdlib module is preferred when its build allows extension loading. pyenv and
    macOS builds often don't, so we fall back to sqlean.py: a maintained drop-in
    sqlite3 replacement with wheels for every major platform, a recent SQLite with FTS5,
    and extension loading enabled. MEMR1_SQLITE_DRIVER=sqlite3|sqlean forces one.
    """
    forced = os.environ.get("MEMR1_SQLITE_DRIVER")
    if forced not in (None, "", "sqlite3", "sqlean"):
        raise ExtensionUnavailable(f"MEMR1_SQLITE_DRIVER must be sqlite3 or sqlean, not {forced!r}")
    if forced != "sqlean" and hasattr(sqlite3.Connection, "enable_load_extension"):
        return sqlite3
    if forced == "sqlite3":
        raise ExtensionUnavailable("this Python's sqlite3 cannot load extensions; unset MEMR1_SQLITE_DRIVER")
    try:
        return importlib.import_module("sqlean")
    except ImportError:
        raise ExtensionUnavailable(
            "this Python's sqlite3 cannot load extensions and sqlean.py is not installed: pip install sqlean.py"
        ) from None


def _is_busy(error: Exception) -> bool:
    code = getattr(error, "sqlite_errorcode", None)  # Python 3.11+; the message otherwise
    if code is not None:
        return (code & 0xFF) in (5, 6)  # SQLITE_BUSY, SQLITE_LOCKED and their extended codes
    text = str(error).lower()
    return "locked" in text or "busy" in text


def _busy_error(path: Path, error: Exception, timeout_ms: int) -> BankBusy:
    return BankBusy(
        f"{path} stayed locked by another writer for {timeout_ms / 1000:g}s ({error}); nothing was written. "
        "Retry later, or open the bank with a longer Memory(..., busy_timeout=seconds) when many processes write at once"
    )


# ---- migrations: append only; each runs once inside a write transaction ----

_MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "initial schema",
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE turns (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            user_id TEXT NOT NULL,
            session TEXT,
            speaker TEXT,
            text TEXT NOT NULL,
            at TEXT,
            created_at TEXT NOT NULL,
            metadata TEXT NOT NULL DEFAULT '{}'
        );
        CREATE INDEX turns_user ON turns(user_id, id);
        CREATE TABLE memories (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            user_id TEXT NOT NULL,
            text TEXT NOT NULL,
            at TEXT,
            at_ts REAL NOT NULL,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            metadata TEXT NOT NULL DEFAULT '{}',
            source_turns TEXT NOT NULL DEFAULT '[]'
        );
        CREATE INDEX memories_user ON memories(user_id, id);
        CREATE TABLE history (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            memory_id INTEGER NOT NULL,
            user_id TEXT NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('ADD', 'UPDATE', 'DELETE')),
            before TEXT,
            after TEXT,
            changed_at TEXT NOT NULL,
            actor TEXT NOT NULL,
            turn_id INTEGER
        );
        CREATE INDEX history_memory ON history(memory_id, id);
        CREATE INDEX history_user ON history(user_id, id);
        CREATE VIRTUAL TABLE fts_memories USING fts5(
            text, content='memories', content_rowid='id',
            tokenize='porter unicode61 remove_diacritics 2'
        );
        CREATE TRIGGER memories_ai AFTER INSERT ON memories BEGIN
            INSERT INTO fts_memories(rowid, text) VALUES (new.id, new.text);
        END;
        CREATE TRIGGER memories_ad AFTER DELETE ON memories BEGIN
            INSERT INTO fts_memories(fts_memories, rowid, text) VALUES ('delete', old.id, old.text);
        END;
        CREATE TRIGGER memories_au AFTER UPDATE OF text ON memories BEGIN
            INSERT INTO fts_memories(fts_memories, rowid, text) VALUES ('delete', old.id, old.text);
            INSERT INTO fts_memories(rowid, text) VALUES (new.id, new.text);
        END;
        """,
    ),
    (
        2,
        "raw turns searchable: FTS5 over speaker and text, and a vector per turn",
        """
        CREATE VIRTUAL TABLE fts_turns USING fts5(
            speaker, text, content='turns', content_rowid='id',
            tokenize='porter unicode61 remove_diacritics 2'
        );
        INSERT INTO fts_turns(fts_turns) VALUES ('rebuild');
        CREATE TABLE turn_vectors (turn_id INTEGER PRIMARY KEY, embedding BLOB NOT NULL);
        CREATE TRIGGER turns_ai AFTER INSERT ON turns BEGIN
            INSERT INTO fts_turns(rowid, speaker, text) VALUES (new.id, new.speaker, new.text);
        END;
        CREATE TRIGGER turns_ad AFTER DELETE ON turns BEGIN
            INSERT INTO fts_turns(fts_turns, rowid, speaker, text) VALUES ('delete', old.id, old.speaker, old.text);
            DELETE FROM turn_vectors WHERE turn_id = old.id;
        END;
        """,
    ),
]
SCHEMA_VERSION = _MIGRATIONS[-1][0]


@dataclass
class Change:
    """One ADD/UPDATE/DELETE for `Store.apply`; vectors arrive already embedded."""

    kind: str
    user: str
    memory_id: int | None = None
    text: str | None = None
    vector: bytes | None = None
    at: datetime | None = None
    at_ts: float | None = None
    metadata: dict[str, Any] | None = None
    source_turns: list[int] = field(default_factory=list)
    created_at: str | None = None  # imports keep their original times
    updated_at: str | None = None
    seen: MemoryItem | None = None  # the memory as a model was shown it: if it changed since, the change is stale


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def row_to_item(row: Sequence[Any]) -> MemoryItem:
    mid, user, text, at, created, updated, metadata, sources = row
    return MemoryItem(
        id=mid,
        user=user,
        text=text,
        at=datetime.fromisoformat(at) if at else None,
        created_at=datetime.fromisoformat(created),
        updated_at=datetime.fromisoformat(updated),
        metadata=json.loads(metadata),
        source_turns=json.loads(sources),
    )


MEMORY_COLUMNS = "id, user_id, text, at, created_at, updated_at, metadata, source_turns"
HISTORY_COLUMNS = "id, memory_id, user_id, kind, before, after, changed_at, actor, turn_id"


def row_to_history(row: Sequence[Any]) -> HistoryEntry:
    hid, mid, user, kind, before, after, changed, actor, turn = row
    return HistoryEntry(
        id=hid,
        memory_id=mid,
        user=user,
        kind=kind,
        before=before,
        after=after,
        changed_at=datetime.fromisoformat(changed),
        actor=actor,
        turn_id=turn,
    )


class Store:
    """One connection to one bank file, serialised by a lock (see Memory for the thread model)."""

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS):
        if (
            not isinstance(path, (str, os.PathLike))
            or not isinstance(os.fspath(path), str)
            or "\x00" in os.fspath(path)
        ):
            raise InvalidInput(f"a bank path must be a str or os.PathLike without NUL, got {path!r}"[:200])
        self.path = Path(path)
        self.busy_timeout_ms = busy_timeout_ms
        self.lock = threading.RLock()
        self._driver = _driver_module()
        if self.path.is_dir():
            raise BankError(f"{self.path} is a directory, not a bank file")
        try:
            self.conn = self._driver.connect(
                str(self.path), isolation_level=None, check_same_thread=False, timeout=busy_timeout_ms / 1000
            )
        except (self._driver.Error, ValueError, UnicodeEncodeError) as e:
            raise BankError(f"cannot open {self.path}: {e}") from None
        try:
            self.conn.enable_load_extension(True)
            sqlite_vec.load(self.conn)
            self.conn.enable_load_extension(False)
            self.conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            self.conn.execute("PRAGMA journal_mode = WAL")
            self.conn.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable across process crashes
            self.conn.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except self._driver.DatabaseError as e:
            self.conn.close()
            if _is_busy(e):
                raise _busy_error(self.path, e, busy_timeout_ms) from None
            raise BankError(f"{self.path} is not a memr1 bank (or not an SQLite file): {e}") from None
        except Exception:
            self.conn.close()
            raise

    # ---- transactions ----

    @contextmanager
    def _translated(self) -> Iterator[None]:
        """No driver error reaches the caller: contention becomes BankBusy (saying what to do), the rest BankError."""
        try:
            yield
        except self._driver.Error as e:
            if _is_busy(e):
                raise _busy_error(self.path, e, self.busy_timeout_ms) from None
            raise BankError(f"{self.path}: {type(e).__name__}: {e}") from e

    def _end(self, statement: str) -> None:
        if self.conn.in_transaction:  # SQLite has already rolled back after some errors (full disk, I/O)
            self.conn.execute(statement)

    @contextmanager
    def write(self) -> Iterator[Any]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception; waits at most busy_timeout for the lock."""
        with self.lock, self._translated():
            self.conn.execute("BEGIN IMMEDIATE")  # waits up to busy_timeout, then SQLITE_BUSY: BankBusy
            try:
                yield self.conn
            except BaseException:
                self._end("ROLLBACK")
                raise
            try:
                self.conn.execute("COMMIT")
            except BaseException:
                self._end("ROLLBACK")
                raise

    @contextmanager
    def read(self) -> Iterator[Any]:
        """A consistent snapshot across several SELECTs."""
        with self.lock, self._translated():
            self.conn.execute("BEGIN")
            try:
                yield self.conn
            finally:
                self._end("COMMIT")

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self.lock, self._translated():
            return self.conn.execute(sql, params).fetchall()

    def close(self) -> None:
        with self.lock:
            self.conn.close()

    # ---- schema ----

    def _migrate(self) -> None:
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
        )
        current = self.schema_version()
        if current > SCHEMA_VERSION:
            raise IncompatibleBank(
                f"{self.path} has schema version {current}; this memr1 knows up to {SCHEMA_VERSION}: upgrade memr1"
            )
        if current == SCHEMA_VERSION:
            return
        with self.write() as conn:
            current = self.schema_version()  # another process may have migrated meanwhile
            for version, name, sql in _MIGRATIONS:
                if version <= current:
                    continue
                for statement in _statements(sql):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (version, name, utcnow().isoformat()),
                )

    def schema_version(self) -> int:
        return self.conn.execute("SELECT coalesce(max(version), 0) FROM migrations").fetchone()[0]

    def meta(self) -> dict[str, str]:
        return dict(self.query("SELECT key, value FROM meta"))

    def bind_embedder(self, identity: str, dim: int, ref: str | None) -> None:
        """Record the embedder on first use; refuse a different one afterwards."""
        meta = self.meta()
        if "embedder" in meta:
            self._check_embedder(meta, identity, dim)
            return
        with self.write() as conn:
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            if "embedder" in meta:
                self._check_embedder(meta, identity, dim)
                return
            conn.execute(
                f"CREATE VIRTUAL TABLE vec_memories USING vec0("
                f"memory_id INTEGER PRIMARY KEY, embedding float[{int(dim)}] distance_metric=cosine)"
            )
            conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [("embedder", identity), ("embedder_dim", str(dim)), ("embedder_ref", ref or "")],
            )

    def _check_embedder(self, meta: dict[str, str], identity: str, dim: int) -> None:
        if int(meta["embedder_dim"]) != dim or meta["embedder"] != identity:
            raise IncompatibleBank(
                f"{self.path} was built with embedder {meta['embedder']!r} ({meta['embedder_dim']}-d); "
                f"it cannot be searched with {identity!r} ({dim}-d). Open it with the original embedder, "
                "or export it and import into a new bank to re-embed."
            )

    # ---- writes ----

    def apply(
        self, changes: Sequence[Change], *, actor: str, turn: dict[str, Any] | None = None
    ) -> list[MemoryItem | None]:
        """Apply changes in one transaction; returns the resulting item (None for DELETE).

        With `turn`, the raw turn is stored in the same transaction and every change cites it.
        """
        with self.write() as conn:
            turn_id = self.add_turn(conn, **turn) if turn is not None else None
            if turn_id is not None:
                for change in changes:
                    change.source_turns = [*change.source_turns, turn_id]
            return [self._apply_one(conn, change, actor, turn_id) for change in changes]

    def _apply_one(self, conn: Any, change: Change, actor: str, turn_id: int | None) -> MemoryItem | None:
        now = utcnow().isoformat()
        if change.kind == "ADD":
            created = change.created_at or now
            mid = conn.execute(
                "INSERT INTO memories (user_id, text, at, at_ts, created_at, updated_at, metadata, source_turns) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (
                    change.user,
                    change.text,
                    _iso(change.at),
                    change.at_ts,
                    created,
                    change.updated_at or created,
                    json.dumps(change.metadata or {}),
                    json.dumps(change.source_turns),
                ),
            ).fetchone()[0]
            conn.execute("INSERT INTO vec_memories (memory_id, embedding) VALUES (?, ?)", (mid, change.vector))
            self._history(conn, mid, change.user, "ADD", None, change.text, actor, turn_id, change.created_at or now)
            return self._get(conn, mid)
        current = self._current(conn, change)
        if change.kind == "UPDATE":
            metadata = {**current.metadata, **(change.metadata or {})}
            sources = current.source_turns + [t for t in change.source_turns if t not in current.source_turns]
            conn.execute(
                "UPDATE memories SET text = ?, updated_at = ?, metadata = ?, source_turns = ?, "
                "at = coalesce(?, at), at_ts = coalesce(?, at_ts) WHERE id = ?",
                (
                    change.text,
                    now,
                    json.dumps(metadata),
                    json.dumps(sources),
                    _iso(change.at),
                    change.at_ts,
                    current.id,
                ),
            )
            conn.execute("DELETE FROM vec_memories WHERE memory_id = ?", (current.id,))
            conn.execute("INSERT INTO vec_memories (memory_id, embedding) VALUES (?, ?)", (current.id, change.vector))
            self._history(conn, current.id, current.user, "UPDATE", current.text, change.text, actor, turn_id, now)
            return self._get(conn, current.id)
        if change.kind == "DELETE":
            conn.execute("DELETE FROM memories WHERE id = ?", (current.id,))
            conn.execute("DELETE FROM vec_memories WHERE memory_id = ?", (current.id,))
            self._history(conn, current.id, current.user, "DELETE", current.text, None, actor, turn_id, now)
            return None
        raise InvalidInput(f"unknown change kind {change.kind!r}")

    def _current(self, conn: Any, change: Change) -> MemoryItem:
        """The memory a change targets; a decision made on a version that has since changed is refused."""
        try:
            current = self._get(conn, change.memory_id, change.user)
        except MemoryNotFound:
            if change.seen is None:
                raise
            raise Conflict(f"memory {change.memory_id} was deleted by another writer after the model saw it") from None
        seen = change.seen
        if seen is not None and (current.updated_at, current.text) != (seen.updated_at, seen.text):
            raise Conflict(f"memory {change.memory_id} was changed by another writer after the model saw it")
        return current

    @staticmethod
    def _history(conn: Any, mid: int, user: str, kind: str, before: str | None, after: str | None,
                 actor: str, turn_id: int | None, changed_at: str) -> None:  # fmt: skip
        conn.execute(
            "INSERT INTO history (memory_id, user_id, kind, before, after, changed_at, actor, turn_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (mid, user, kind, before, after, changed_at, actor, turn_id),
        )

    def add_turn(self, conn: Any, *, user: str, text: str, speaker: str | None, session: str | None,
                 at: datetime | None, metadata: dict[str, Any], vector: bytes | None = None) -> int:  # fmt: skip
        """Insert a raw turn (and its vector, for `ask(sources=...)`) inside the caller's transaction."""
        turn_id = conn.execute(
            "INSERT INTO turns (user_id, session, speaker, text, at, created_at, metadata) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (user, session, speaker, text, _iso(at), utcnow().isoformat(), json.dumps(metadata)),
        ).fetchone()[0]
        if vector is not None:
            conn.execute("INSERT INTO turn_vectors (turn_id, embedding) VALUES (?, ?)", (turn_id, vector))
        return turn_id

    def turn_state(self, user: str) -> tuple[int, int]:
        """(count, last id) of a user's turns: what a cached copy of their vectors must match."""
        return tuple(self.query("SELECT count(*), coalesce(max(id), 0) FROM turns WHERE user_id = ?", (user,))[0])

    def turn_vectors(self, user: str, after: int = 0) -> list[tuple[int, str | None, bytes]]:
        """(turn id, session, vector) of a user's turns past `after`, by id; turns without a vector
        (imported, or stored before turns had them) are found by words alone."""
        return self.query(
            "SELECT t.id, t.session, v.embedding FROM turns t JOIN turn_vectors v "
            "ON v.turn_id = t.id WHERE t.user_id = ? AND t.id > ? ORDER BY t.id",
            (user, after),
        )

    def turns_fts(self, match: str, *, limit: int, user: str) -> list[tuple[int, float]]:
        return self.query(
            "SELECT t.id, bm25(fts_turns) FROM fts_turns JOIN turns t ON t.id = fts_turns.rowid "
            "WHERE fts_turns MATCH ? AND t.user_id = ? ORDER BY bm25(fts_turns) LIMIT ?",
            (match, user, limit),
        )

    def get_turns(self, ids: Sequence[int]) -> dict[int, StoredTurn]:
        marks = ",".join("?" * len(ids))
        rows = self.query(f"SELECT id, user_id, session, speaker, text, at, metadata FROM turns WHERE id IN ({marks})",
                          list(ids))  # fmt: skip
        return {r[0]: StoredTurn(id=r[0], user=r[1], session=r[2], speaker=r[3], text=r[4],
                                 at=datetime.fromisoformat(r[5]) if r[5] else None, metadata=json.loads(r[6]))
                for r in rows}  # fmt: skip

    def delete_turns(self, conn: Any, user: str) -> int:
        return conn.execute("DELETE FROM turns WHERE user_id = ?", (user,)).rowcount

    def import_rows(self, turns: Sequence[dict[str, Any]], memories: Sequence[tuple[dict[str, Any], bytes]],
                    history: Sequence[dict[str, Any]]) -> int:  # fmt: skip
        """Insert an export in one transaction; ids are re-allocated and references remapped."""
        with self.write() as conn:
            turn_ids: dict[int, int] = {}
            for t in turns:
                turn_ids[t["id"]] = conn.execute(
                    "INSERT INTO turns (user_id, session, speaker, text, at, created_at, metadata) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
                    (
                        t["user"],
                        t["session"],
                        t["speaker"],
                        t["text"],
                        t["at"],
                        t["created_at"],
                        json.dumps(t["metadata"]),
                    ),
                ).fetchone()[0]
            memory_ids: dict[int, int] = {}
            for m, vector in memories:
                sources = [turn_ids.get(s, s) for s in m["source_turns"]]
                new = conn.execute(
                    "INSERT INTO memories (user_id, text, at, at_ts, created_at, updated_at, metadata, source_turns) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                    (m["user"], m["text"], m["at"], m["at_ts"], m["created_at"], m["updated_at"],
                     json.dumps(m["metadata"]), json.dumps(sources)),
                ).fetchone()[0]  # fmt: skip
                conn.execute("INSERT INTO vec_memories (memory_id, embedding) VALUES (?, ?)", (new, vector))
                memory_ids[m["id"]] = new
            has_history = set()
            for h in history:
                if h["memory_id"] not in memory_ids:
                    continue
                has_history.add(h["memory_id"])
                self._history(conn, memory_ids[h["memory_id"]], h["user"], h["kind"], h["before"], h["after"],
                              h["actor"], turn_ids.get(h["turn_id"]) if h["turn_id"] else None, h["changed_at"])  # fmt: skip
            for m, _ in memories:  # every memory needs an ADD row: the index follows history
                if m["id"] not in has_history:
                    self._history(conn, memory_ids[m["id"]], m["user"], "ADD", None, m["text"], "import", None,
                                  utcnow().isoformat())  # fmt: skip
        return len(memories)

    def export_rows(self, user: str | None) -> Iterator[dict[str, Any]]:
        """Turns, then memories, then the history of those memories, as plain dicts."""
        with self.read() as conn:
            where, params = self.where(user=user)
            for row in conn.execute(
                f"SELECT id, user_id, session, speaker, text, at, created_at, metadata FROM turns {where} ORDER BY id",
                params,
            ).fetchall():
                keys = ("id", "user", "session", "speaker", "text", "at", "created_at", "metadata")
                out = dict(zip(keys, row))
                out["metadata"] = json.loads(out["metadata"])
                yield {"type": "turn", **out}
            for row in conn.execute(f"SELECT {MEMORY_COLUMNS} FROM memories {where} ORDER BY id", params).fetchall():
                yield {"type": "memory", **row_to_item(row).model_dump(mode="json")}
            for row in conn.execute(
                f"SELECT {HISTORY_COLUMNS} FROM history WHERE memory_id IN (SELECT id FROM memories {where}) ORDER BY id",
                params,
            ).fetchall():
                yield {"type": "history", **row_to_history(row).model_dump(mode="json", exclude={"id"})}

    # ---- reads ----

    def _get(self, conn: Any, memory_id: int | None, user: str | None = None) -> MemoryItem:
        row = conn.execute(f"SELECT {MEMORY_COLUMNS} FROM memories WHERE id = ?", (memory_id,)).fetchone()
        if row is None or (user is not None and row[1] != user):
            scope = f" for user {user!r}" if user is not None else ""
            raise MemoryNotFound(f"no memory with id {memory_id}{scope}")
        return row_to_item(row)

    def get(self, memory_id: int, user: str | None = None) -> MemoryItem:
        with self.lock, self._translated():
            return self._get(self.conn, memory_id, user)

    def get_many(self, ids: Sequence[int]) -> dict[int, MemoryItem]:
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        rows = self.query(f"SELECT {MEMORY_COLUMNS} FROM memories WHERE id IN ({marks})", list(ids))
        return {row[0]: row_to_item(row) for row in rows}

    def list(self, user: str | None = None, *, limit: int | None = None, offset: int = 0,
             filters: dict[str, Any] | None = None) -> list[MemoryItem]:  # fmt: skip
        where, params = self.where(user=user, filters=filters)
        sql = f"SELECT {MEMORY_COLUMNS} FROM memories {where} ORDER BY id LIMIT ? OFFSET ?"
        rows = self.query(sql, [*params, -1 if limit is None else int(limit), int(offset)])
        return [row_to_item(row) for row in rows]

    @staticmethod
    def where(user: str | None = None, since: float | None = None, until: float | None = None,
              filters: dict[str, Any] | None = None, alias: str = "") -> tuple[str, list[Any]]:  # fmt: skip
        """Build a WHERE clause: values are always bound; metadata keys are allow-listed and quoted."""
        clauses, params = [], []
        if user is not None:
            clauses.append(f"{alias}user_id = ?")
            params.append(user)
        if since is not None:
            clauses.append(f"{alias}at_ts >= ?")
            params.append(since)
        if until is not None:
            clauses.append(f"{alias}at_ts <= ?")
            params.append(until)
        for key, value in (filters or {}).items():
            check_key(key)
            if isinstance(value, (dict, list)):
                raise InvalidInput(f"filter on {key!r} must compare a scalar, not {type(value).__name__}")
            clauses.append(f"json_extract({alias}metadata, ?) IS ?")
            params.extend([f'$."{key}"', value])
        return ("WHERE " + " AND ".join(clauses)) if clauses else "", params

    def history(self, memory_id: int, user: str | None = None) -> list[HistoryEntry]:
        sql = f"SELECT {HISTORY_COLUMNS} FROM history WHERE memory_id = ?"
        params: list[Any] = [memory_id]
        if user is not None:
            sql += " AND user_id = ?"
            params.append(user)
        rows = self.query(sql + " ORDER BY id", params)
        if not rows:
            raise MemoryNotFound(f"no memory with id {memory_id}" + (f" for user {user!r}" if user else ""))
        return [row_to_history(row) for row in rows]

    def fts(self, match: str, *, limit: int, user: str | None, since: float | None, until: float | None,
            filters: dict[str, Any] | None) -> list[tuple[int, float]]:  # fmt: skip
        where, params = self.where(user=user, since=since, until=until, filters=filters, alias="m.")
        where = where.replace("WHERE", "AND", 1)
        sql = (
            "SELECT m.id, bm25(fts_memories) FROM fts_memories JOIN memories m ON m.id = fts_memories.rowid "
            f"WHERE fts_memories MATCH ? {where} ORDER BY bm25(fts_memories) LIMIT ?"
        )
        return self.query(sql, [match, *params, limit])

    def counts(self) -> dict[str, int]:
        with self.read() as conn:
            one = lambda sql: conn.execute(sql).fetchone()[0]  # noqa: E731
            return {
                "memories": one("SELECT count(*) FROM memories"),
                "users": one("SELECT count(DISTINCT user_id) FROM memories"),
                "turns": one("SELECT count(*) FROM turns"),
                "history": one("SELECT count(*) FROM history"),
            }

    def check(self) -> list[str]:
        """What is wrong with the bank, if anything: [] when SQLite, FTS5, vec0, memories and history all agree.

        Holds the write lock for a consistent view (FTS5's integrity check is written as an INSERT).
        """
        problems: list[str] = []
        with self.write() as conn:
            pages = [r[0] for r in conn.execute("PRAGMA integrity_check").fetchall()]
            problems += [f"integrity_check: {p}" for p in pages if p != "ok"][:20]
            try:  # rank=1 also compares the index with the memories table it indexes
                conn.execute("INSERT INTO fts_memories(fts_memories, rank) VALUES ('integrity-check', 1)")
            except self._driver.DatabaseError as e:
                problems.append(f"FTS index disagrees with the memories table: {e}")
            memories = {mid: (user, text) for mid, user, text in conn.execute("SELECT id, user_id, text FROM memories")}
            if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'vec_memories'").fetchone():
                vectors = {r[0] for r in conn.execute("SELECT memory_id FROM vec_memories")}
                problems += [f"memory {m} has no vector" for m in sorted(memories.keys() - vectors)][:20]
                problems += [f"vector {m} has no memory" for m in sorted(vectors - memories.keys())][:20]
            elif memories:
                problems.append(f"{len(memories)} memories but no vector table")
            replayed = {}
            for mid, user, kind, after in conn.execute(
                "SELECT h.memory_id, h.user_id, h.kind, h.after FROM history h "
                "JOIN (SELECT memory_id, max(id) AS last FROM history GROUP BY memory_id) l ON h.id = l.last"
            ):
                if kind != "DELETE":
                    replayed[mid] = (user, after)
            if replayed != memories:
                wrong = sorted(m for m in replayed.keys() | memories.keys() if replayed.get(m) != memories.get(m))
                problems += [f"memory {m} is {memories.get(m)!r} but its history replays to {replayed.get(m)!r}"
                             for m in wrong[:20]]  # fmt: skip
        return problems

    def sqlite_info(self) -> dict[str, Any]:
        with self.lock, self._translated():
            sqlite_version = self.conn.execute("SELECT sqlite_version()").fetchone()[0]
            vec_version = self.conn.execute("SELECT vec_version()").fetchone()[0]
        return {
            "driver": self._driver.__name__.split(".")[0],
            "sqlite_version": sqlite_version,
            "sqlite_vec_version": vec_version,
            "schema_version": SCHEMA_VERSION,
        }


def _statements(script: str) -> list[str]:
    """Split a migration script; triggers contain ';' so use sqlite3.complete_statement."""
    statements, buffer = [], ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip():
                statements.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        statements.append(buffer.strip())
    return statements
