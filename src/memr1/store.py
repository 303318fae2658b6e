"""The bank file: connection, migrations and every SQL statement memr1 runs.

No other module writes SQL or holds a connection (tests/test_sql_in_store.py checks): they call
Store methods, which return items or plain tuples; the in-memory indexes in retrieval.py are fed
by `Store.vectors_past` and `Store.turns_past`. Each INSERT is written once: `_insert_memory`,
`_insert_turn` and `_history` serve both the writes and `import_rows`.

Each write goes through `Store.apply` or `Store.write`, one BEGIN IMMEDIATE transaction:
memory row, vector row, FTS row (by trigger) and history row land together or not at all.
"""

from __future__ import annotations

import builtins
import importlib
import json
import logging
import os
import sqlite3
import stat
import tempfile
import threading
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import sqlite_vec

from .config import DEFAULT_BUSY_TIMEOUT, check_busy_timeout
from .errors import BankBusy, BankError, Conflict, ExtensionUnavailable, IncompatibleBank, InvalidInput, MemoryNotFound
from .schema import HistoryEntry, MemoryItem, StoredTurn, check_key, utcnow

DEFAULT_BUSY_TIMEOUT_MS = int(DEFAULT_BUSY_TIMEOUT * 1000)  # deprecated: memr1 counts seconds everywhere
log = logging.getLogger("memr1")


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


def _busy_error(path: Path, error: Exception, timeout: float) -> BankBusy:
    return BankBusy(
        f"{path} stayed locked by another writer for {timeout:g}s ({error}); nothing was written. "
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
    (
        3,
        "sentence vectors: a memory or turn of several sentences is also found by its best one",
        """
        CREATE TABLE sentence_vectors (memory_id INTEGER PRIMARY KEY, embeddings BLOB NOT NULL);
        CREATE TRIGGER memories_ad_sentences AFTER DELETE ON memories BEGIN
            DELETE FROM sentence_vectors WHERE memory_id = old.id;
        END;
        CREATE TABLE turn_sentence_vectors (turn_id INTEGER PRIMARY KEY, embeddings BLOB NOT NULL);
        CREATE TRIGGER turns_ad_sentences AFTER DELETE ON turns BEGIN
            DELETE FROM turn_sentence_vectors WHERE turn_id = old.id;
        END;
        """,
    ),
]
SCHEMA_VERSION = _MIGRATIONS[-1][0]


FTS_TOKENIZER = "porter unicode61 remove_diacritics 2"  # fts_memories' and fts_turns' (migrations 1 and 2)
_VOCABULARY = "temp.memr1_fts_memories_terms"
_TOKENIZER = "memr1_tokenizer"  # in the temporary database


# (id, user, at_ts, vector, text, sentence vectors or None) of a memory, as the in-memory index reads it
IndexRow = tuple[int, str, float, bytes, str, bytes | None]


@dataclass
class IndexRows:
    """Store.vectors_past: what the in-memory index needs to catch up with the bank."""

    head: int  # the last history id
    changed: builtins.list[int] | None  # memories written since; None: rebuild from every memory
    rows: builtins.list[IndexRow]  # those still there
    terms: builtins.list[builtins.list[str]] = field(default_factory=list)  # each row's FTS5 terms (not on rebuild)
    postings: builtins.list[tuple[str, str]] = field(default_factory=list)  # rebuild: (term, "id id ...")


@dataclass
class Change:
    """One ADD/UPDATE/DELETE for `Store.apply`; vectors arrive already embedded."""

    kind: str
    user: str
    memory_id: int | None = None
    text: str | None = None
    vector: bytes | None = None
    sentences: bytes | None = None  # the vectors of its sentences, one after another; None for one sentence
    at: datetime | None = None
    at_ts: float | None = None
    metadata: dict[str, Any] | None = None
    source_turns: list[int] = field(default_factory=list)
    seen: MemoryItem | None = None  # the memory as a model was shown it: if it changed since, the change is stale


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


class ImportSection(NamedTuple):
    """One export within an import file, validated: its ids are its own, so two banks' memory 1 never meet."""

    turns: list[dict[str, Any]]
    memories: list[dict[str, Any]]
    history: list[dict[str, Any]]


def _instant(value: str | None) -> datetime | None:
    """Times compare as moments: "…Z" and "…+00:00" spell the same one."""
    return datetime.fromisoformat(value) if value else None


def memory_key(row: dict[str, Any]) -> tuple[Any, ...]:
    """What makes an imported memory one the bank already holds."""
    return row["user"], row["text"], _instant(row["created_at"])


def turn_key(row: dict[str, Any]) -> tuple[Any, ...]:
    """What makes an imported turn one the bank already holds."""
    return (row["user"], row["session"], row["speaker"], row["text"], _instant(row["at"]), _instant(row["created_at"]))


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

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float | None = None,
        busy_timeout_ms: int | None = None,
    ):
        """`busy_timeout`: seconds a write waits for another writer's lock (default 30). `busy_timeout_ms`, the
        same in milliseconds, is deprecated: it is the one setting memr1 ever took in other units."""
        if busy_timeout_ms is not None:
            warnings.warn(
                "Store(busy_timeout_ms=) is deprecated: pass busy_timeout= in seconds", DeprecationWarning, stacklevel=2
            )
            if busy_timeout is not None:
                raise InvalidInput("pass busy_timeout (seconds) or busy_timeout_ms (deprecated), not both")
            number = isinstance(busy_timeout_ms, (int, float)) and not isinstance(busy_timeout_ms, bool)
            busy_timeout = busy_timeout_ms / 1000 if number else busy_timeout_ms
        self.busy_timeout = check_busy_timeout(DEFAULT_BUSY_TIMEOUT if busy_timeout is None else busy_timeout)
        if (
            not isinstance(path, (str, os.PathLike))
            or not isinstance(os.fspath(path), str)
            or "\x00" in os.fspath(path)
        ):
            raise InvalidInput(f"a bank path must be a str or os.PathLike without NUL, got {path!r}"[:200])
        self.path = Path(path)
        self._abspath = Path(os.path.abspath(path))  # the identity check must not follow a later chdir
        self.lock = threading.RLock()
        self._term_cache: dict[str, builtins.list[str]] = {}
        self._driver = _driver_module()
        if self.path.is_dir():
            raise BankError(f"{self.path} is a directory, not a bank file")
        _refuse_foreign(self.path, self._driver, self.busy_timeout)  # before SQLite creates or writes a byte
        _create_private(self.path)
        try:
            self.conn = self._driver.connect(
                str(self.path), isolation_level=None, check_same_thread=False, timeout=self.busy_timeout
            )
        except (self._driver.Error, ValueError, UnicodeEncodeError) as e:
            raise BankError(f"cannot open {self.path}: {e}") from None
        try:
            self.conn.enable_load_extension(True)
            sqlite_vec.load(self.conn)
            self.conn.enable_load_extension(False)
            self.conn.execute(f"PRAGMA busy_timeout = {round(self.busy_timeout * 1000)}")  # SQLite counts ms
            self.conn.execute("PRAGMA journal_mode = WAL")
            self.conn.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable across process crashes
            self.conn.execute("PRAGMA foreign_keys = ON")
            self.conn.execute("PRAGMA secure_delete = ON")  # a deleted or replaced text leaves no copy in free space
            self._identity = _file_identity(self._abspath)
            self._migrate()
        except self._driver.DatabaseError as e:
            self.conn.close()
            if _is_busy(e):
                raise _busy_error(self.path, e, self.busy_timeout) from None
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
                raise _busy_error(self.path, e, self.busy_timeout) from None
            raise BankError(f"{self.path}: {type(e).__name__}: {e}") from e

    def _end(self, statement: str) -> None:
        if self.conn.in_transaction:  # SQLite has already rolled back after some errors (full disk, I/O)
            self.conn.execute(statement)

    @contextmanager
    def write(self) -> Iterator[Any]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception; waits at most busy_timeout for the lock."""
        with self.lock, self._translated():
            self.conn.execute("BEGIN IMMEDIATE")  # waits up to busy_timeout, then SQLITE_BUSY: BankBusy
            if (moved := self._moved()) is not None:
                self._end("ROLLBACK")
                self._disown_wal()
                raise BankError(moved)
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

    def query(self, sql: str, params: Sequence[Any] = ()) -> builtins.list[Any]:
        with self.lock, self._translated():
            return self.conn.execute(sql, params).fetchall()

    def _moved(self) -> str | None:
        """Why not to write, when the path no longer names the file this connection has open.

        A bank unlinked or replaced (a backup restored over it) under an open connection still takes
        writes, into a file nobody will read again."""
        now = _file_identity(self._abspath)
        if now == self._identity:
            return None
        what = "deleted" if now is None else "replaced by another file"
        return (
            f"{self.path} was {what} after this Memory opened it; nothing was written. Close it and open "
            "the bank again (and never replace or delete a bank's files while it is open)"
        )

    def _disown_wal(self) -> None:
        """Empty the -wal of a bank whose file was replaced: it is found by name, so the new file would
        take its frames (pages of the old file) for its own and be corrupted. SQLite keeps the -wal of
        a moved file when it closes, so this is the only moment to do it."""
        try:
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # into the old file, then truncated
        except self._driver.Error:
            pass

    def close(self) -> None:
        """Close, after copying the -wal into the .db so that the .db alone holds every committed write.

        PASSIVE never waits: a frame another connection still reads stays in the -wal, for it to copy later."""
        with self.lock:
            if self._moved() is not None:
                self._disown_wal()
            else:
                try:
                    self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except self._driver.Error:
                    pass  # another connection is checkpointing: it copies the same frames
            self.conn.close()

    def checkpoint(self) -> tuple[int, int, int]:
        """Copy the whole -wal into the .db and truncate it: (busy, frames in the -wal, frames copied).

        Waits up to busy_timeout for readers of older snapshots; busy=1 means some frames had to stay."""
        with self.lock, self._translated():
            return tuple(self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone())

    def backup(self, target: Path) -> None:
        """Copy the bank to `target` through SQLite's online backup API, from one read snapshot.

        The copy is written to a private temporary file beside `target`, then renamed over it."""
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")  # 0600
        os.close(fd)
        tmp = Path(name)
        try:
            dest = self._driver.connect(name, isolation_level=None)
            try:
                with self.lock, self._translated():
                    # pages=-1: every page in one step, under one read transaction. Stepwise, each write by
                    # another process would restart the copy, and a busy bank would never finish.
                    self.conn.backup(dest, pages=-1)
            finally:
                dest.close()
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm"), Path(f"{tmp}-journal")):
                leftover.unlink(missing_ok=True)
            raise
        _fsync_dir(target.parent)

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
    ) -> builtins.list[MemoryItem | None]:
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
            mid = self._insert_memory(
                conn,
                change.user,
                change.text,
                _iso(change.at),
                change.at_ts,
                now,
                now,
                change.metadata or {},
                change.source_turns,
                change.vector,
                change.sentences,
            )
            self._history(conn, mid, change.user, "ADD", None, change.text, actor, turn_id, now)
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
            conn.execute("DELETE FROM sentence_vectors WHERE memory_id = ?", (current.id,))
            self._insert_vector(conn, current.id, change.vector, change.sentences)
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
    def _insert_memory(
        conn: Any,
        user: str,
        text: str | None,
        at: str | None,
        at_ts: float | None,
        created_at: str,
        updated_at: str,
        metadata: dict[str, Any],
        source_turns: builtins.list[int],
        vector: bytes | None,
        sentences: bytes | None = None,
    ) -> int:
        """The one INSERT of a memory, and of its vectors (its FTS row follows by trigger); returns its id."""
        mid: int = conn.execute(
            "INSERT INTO memories (user_id, text, at, at_ts, created_at, updated_at, metadata, source_turns) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (user, text, at, at_ts, created_at, updated_at, json.dumps(metadata), json.dumps(source_turns)),
        ).fetchone()[0]
        Store._insert_vector(conn, mid, vector, sentences)
        return mid

    @staticmethod
    def _insert_vector(conn: Any, mid: int, vector: bytes | None, sentences: bytes | None) -> None:
        conn.execute("INSERT INTO vec_memories (memory_id, embedding) VALUES (?, ?)", (mid, vector))
        if sentences is not None:
            Store._check_sentences(vector, sentences)
            conn.execute("INSERT INTO sentence_vectors (memory_id, embeddings) VALUES (?, ?)", (mid, sentences))

    @staticmethod
    def _check_sentences(vector: bytes | None, sentences: bytes) -> None:
        if not vector or not sentences or len(sentences) % len(vector):
            raise InvalidInput("sentence vectors must be whole vectors of the memory vector's size")
        if not np.isfinite(np.frombuffer(sentences, np.float32)).all():  # float64 read as float32, say
            raise InvalidInput("sentence vectors must be float32 numbers")

    @staticmethod
    def _insert_turn(
        conn: Any,
        user: str,
        session: str | None,
        speaker: str | None,
        text: str,
        at: str | None,
        created_at: str,
        metadata: dict[str, Any],
    ) -> int:
        """The one INSERT of a raw turn (its FTS row follows by trigger); returns its id."""
        turn_id: int = conn.execute(
            "INSERT INTO turns (user_id, session, speaker, text, at, created_at, metadata) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (user, session, speaker, text, at, created_at, json.dumps(metadata)),
        ).fetchone()[0]
        return turn_id

    @staticmethod
    def _history(
        conn: Any,
        mid: int,
        user: str,
        kind: str,
        before: str | None,
        after: str | None,
        actor: str,
        turn_id: int | None,
        changed_at: str,
    ) -> None:
        conn.execute(
            "INSERT INTO history (memory_id, user_id, kind, before, after, changed_at, actor, turn_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (mid, user, kind, before, after, changed_at, actor, turn_id),
        )

    def add_turn(
        self,
        conn: Any,
        *,
        user: str,
        text: str,
        speaker: str | None,
        session: str | None,
        at: datetime | None,
        metadata: dict[str, Any],
        vector: bytes | None = None,
        sentences: bytes | None = None,
    ) -> int:
        """Insert a raw turn (and its vectors, for `ask(sources=...)`) inside the caller's transaction."""
        turn_id = self._insert_turn(conn, user, session, speaker, text, _iso(at), utcnow().isoformat(), metadata)
        if vector is not None:
            conn.execute("INSERT INTO turn_vectors (turn_id, embedding) VALUES (?, ?)", (turn_id, vector))
        if sentences is not None:
            self._check_sentences(vector, sentences)
            conn.execute("INSERT INTO turn_sentence_vectors (turn_id, embeddings) VALUES (?, ?)", (turn_id, sentences))
        return turn_id

    def turn_state(self, user: str) -> tuple[int, int]:
        """(count, last id) of a user's turns: what a cached copy of their vectors must match."""
        return tuple(self.query("SELECT count(*), coalesce(max(id), 0) FROM turns WHERE user_id = ?", (user,))[0])

    def turns_past(
        self, user: str, after: int = 0
    ) -> tuple[int, builtins.list[tuple[int, str | None, bytes | None, bytes | None]]]:
        """A user's turn count, and (turn id, session, vector, sentence vectors) of their turns past `after` by id,
        from one snapshot: a cached copy that appends them can tell from the count whether any turn it holds was
        erased meanwhile. Turns without a vector (imported, or stored before turns had them) come with None: they
        are counted, and found by words alone; a turn of one sentence has no sentence vectors (None)."""
        with self.read() as conn:
            count = conn.execute("SELECT count(*) FROM turns WHERE user_id = ?", (user,)).fetchone()[0]
            rows = conn.execute(
                "SELECT t.id, t.session, v.embedding, s.embeddings FROM turns t LEFT JOIN turn_vectors v "
                "ON v.turn_id = t.id LEFT JOIN turn_sentence_vectors s ON s.turn_id = t.id "
                "WHERE t.user_id = ? AND t.id > ? ORDER BY t.id",
                (user, after),
            ).fetchall()
        return count, rows

    def turns_fts(self, match: str, *, limit: int, user: str) -> builtins.list[tuple[int, float]]:
        return self.query(
            "SELECT t.id, bm25(fts_turns) FROM fts_turns JOIN turns t ON t.id = fts_turns.rowid "
            "WHERE fts_turns MATCH ? AND t.user_id = ? ORDER BY bm25(fts_turns) LIMIT ?",
            (match, user, limit),
        )

    def get_turns(self, ids: Sequence[int]) -> dict[int, StoredTurn]:
        marks = ",".join("?" * len(ids))
        rows = self.query(
            f"SELECT id, user_id, session, speaker, text, at, metadata FROM turns WHERE id IN ({marks})", list(ids)
        )
        return {
            r[0]: StoredTurn(
                id=r[0],
                user=r[1],
                session=r[2],
                speaker=r[3],
                text=r[4],
                at=datetime.fromisoformat(r[5]) if r[5] else None,
                metadata=json.loads(r[6]),
            )
            for r in rows
        }

    def delete_turns(self, conn: Any, user: str) -> int:
        return conn.execute("DELETE FROM turns WHERE user_id = ?", (user,)).rowcount

    def held_memories(self, users: Iterable[str]) -> set[tuple[Any, ...]]:
        """`memory_key` of every memory these users have: what an import will skip."""
        with self.read() as conn:
            return self._held_memories(conn, users)

    @staticmethod
    def _held_memories(conn: Any, users: Iterable[str]) -> set[tuple[Any, ...]]:
        held: set[tuple[Any, ...]] = set()
        for user in set(users):
            rows = conn.execute("SELECT text, created_at FROM memories WHERE user_id = ?", (user,))
            held.update(memory_key({"user": user, "text": text, "created_at": created}) for text, created in rows)
        return held

    @staticmethod
    def _held_turns(conn: Any, users: Iterable[str]) -> dict[tuple[Any, ...], int]:
        held: dict[tuple[Any, ...], int] = {}
        for user in set(users):
            for tid, *row in conn.execute(
                "SELECT id, session, speaker, text, at, created_at FROM turns WHERE user_id = ? ORDER BY id", (user,)
            ):
                keys = ("session", "speaker", "text", "at", "created_at")
                held.setdefault(turn_key({"user": user, **dict(zip(keys, row))}), tid)
        return held

    def delete_all(self, user: str, *, actor: str) -> int:
        """Delete every memory and raw turn of one user in one transaction; returns memories deleted.

        Each memory gets its DELETE history row, so the history keeps every text it ever had."""
        with self.write() as conn:
            ids = [r[0] for r in conn.execute("SELECT id FROM memories WHERE user_id = ?", (user,))]
            for mid in ids:
                self._apply_one(conn, Change("DELETE", user, memory_id=mid), actor, None)
            self.delete_turns(conn, user)
        return len(ids)

    def forget(self, user: str) -> int:
        """Erase every trace of one user's texts, in one transaction; returns memories erased.

        Rows are deleted with secure_delete on (set at open), so freed space is zeroed. FTS5 'delete'
        only appends a tombstone: the terms stay in older index segments until they are merged, so
        both indexes are merged into one segment ('optimize'). The -wal still holds the pages as they
        were until a checkpoint copies the new ones over them and truncates it: that comes last."""
        return self._erase(user)

    def reset(self) -> int:
        """Erase every user's memories, history and turns, as `forget` erases one, in one transaction;
        returns memories erased. The bank's settings (schema, embedder) stay."""
        return self._erase(None)

    def _erase(self, user: str | None) -> int:
        where, args = ("WHERE user_id = ?", (user,)) if user is not None else ("", ())
        with self.write() as conn:
            count = conn.execute(f"SELECT count(*) FROM memories {where}", args).fetchone()[0]
            if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'vec_memories'").fetchone():
                conn.execute(f"DELETE FROM vec_memories WHERE memory_id IN (SELECT id FROM memories {where})", args)
            conn.execute(f"DELETE FROM memories {where}", args)  # the trigger deletes from fts_memories
            conn.execute(f"DELETE FROM history {where}", args)
            conn.execute(f"DELETE FROM turns {where}", args)  # ... from fts_turns and turn_vectors
            conn.execute("INSERT INTO fts_memories(fts_memories) VALUES ('optimize')")
            conn.execute("INSERT INTO fts_turns(fts_turns) VALUES ('optimize')")
            # History is otherwise append-only, and in-memory copies of the vectors follow it: this tells
            # every process that rows went away, so that they rebuild their copies.
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('erasures', '1') "
                "ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + 1"
            )
        busy, _, _ = self.checkpoint()
        if busy:
            log.warning(
                "%s: another connection still reads an older snapshot, so the -wal keeps copies of "
                "erased pages until the next checkpoint (closing every connection makes one)",
                self.path,
            )
        return count

    def erasures(self) -> int:
        """How many erasures the bank has seen: a copy of its rows made before the last one is stale."""
        return int(self.query("SELECT coalesce((SELECT value FROM meta WHERE key = 'erasures'), 0)")[0][0])

    def import_rows(self, sections: Sequence[ImportSection]) -> int:
        """Insert exports in one transaction; returns the memories added.

        Ids are re-allocated section by section, and a section's references follow its own ids only. What
        the bank already holds (before this section) is skipped: a memory with its history, and a turn,
        whose citations then point to the turn the bank holds. Each memory to add carries its "vector".
        """
        added = 0
        with self.write() as conn:
            users = {row["user"] for section in sections for row in (*section.turns, *section.memories)}
            held_memories, held_turns = self._held_memories(conn, users), self._held_turns(conn, users)
            for section in sections:
                turn_ids: dict[int, int] = {}
                new_turns: dict[tuple[Any, ...], int] = {}
                for t in section.turns:
                    key = turn_key(t)
                    tid = held_turns.get(key)
                    if tid is None:
                        tid = self._insert_turn(
                            conn,
                            t["user"],
                            t["session"],
                            t["speaker"],
                            t["text"],
                            t["at"],
                            t["created_at"],
                            t["metadata"],
                        )
                        new_turns.setdefault(key, tid)
                    if t["id"] is not None:
                        turn_ids[t["id"]] = tid
                memory_ids: dict[int, int] = {}
                new_memories: set[tuple[Any, ...]] = set()
                for m in section.memories:
                    key = memory_key(m)
                    if key in held_memories:
                        continue
                    if m.get("vector") is None:  # held when the import looked, gone now: its vector was never made
                        raise Conflict(
                            f"{self.path} changed while the import was embedding; nothing was imported, retry"
                        )
                    sources = list(dict.fromkeys(turn_ids[s] for s in m["source_turns"] if s in turn_ids))
                    new = self._insert_memory(
                        conn,
                        m["user"],
                        m["text"],
                        m["at"],
                        m["at_ts"],
                        m["created_at"],
                        m["updated_at"],
                        m["metadata"],
                        sources,
                        m["vector"],
                        m.get("sentences"),
                    )
                    memory_ids[m["id"]] = new
                    new_memories.add(key)
                has_history = set()
                for h in section.history:
                    if h["memory_id"] not in memory_ids:  # a skipped memory keeps the history the bank has
                        continue
                    has_history.add(h["memory_id"])
                    self._history(
                        conn,
                        memory_ids[h["memory_id"]],
                        h["user"],
                        h["kind"],
                        h["before"],
                        h["after"],
                        h["actor"],
                        turn_ids.get(h["turn_id"]),
                        h["changed_at"],
                    )
                for m in section.memories:  # every memory needs an ADD row: the index follows history
                    if m["id"] in memory_ids and m["id"] not in has_history:
                        self._history(
                            conn,
                            memory_ids[m["id"]],
                            m["user"],
                            "ADD",
                            None,
                            m["text"],
                            "import",
                            None,
                            utcnow().isoformat(),
                        )
                held_memories |= new_memories
                held_turns = new_turns | held_turns
                added += len(memory_ids)
        return added

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

    def memory_ids(self, user: str | None = None, filters: dict[str, Any] | None = None) -> builtins.list[int]:
        """Ids of the memories of `user` (everyone's when None) that match `filters`."""
        where, params = self.where(user=user, filters=filters)
        return [r[0] for r in self.query(f"SELECT id FROM memories {where}", params)]

    def vectors_past(self, seen: int, *, reload_over: int) -> IndexRows:
        """What the in-memory index of the memories (retrieval.VectorIndex: vectors and BM25 terms) that has
        applied the history up to id `seen` needs to catch up, read from one snapshot.

        - head is `seen`: nothing changed (changed and rows empty).
        - the index must be rebuilt, because it has applied nothing (`seen` < 0), history rows went away
          (head < `seen`) or more than `reload_over` history rows were written past it: changed is None, rows
          hold every memory, and postings every FTS5 term with the memories it occurs in.
        - otherwise changed holds the ids of the memories written past `seen`, rows those still there (the
          others were deleted) and terms each row's FTS5 terms.
        """
        with self.read() as conn:
            head: int = conn.execute("SELECT coalesce(max(id), 0) FROM history").fetchone()[0]
            if head == seen:
                return IndexRows(head, [], [])
            if seen < 0 or head < seen or head - seen > reload_over:
                meta = {row[0]: row for row in conn.execute("SELECT id, user_id, at_ts, text FROM memories")}
                sentences = dict(conn.execute("SELECT memory_id, embeddings FROM sentence_vectors"))
                vectors = conn.execute("SELECT memory_id, embedding FROM vec_memories")
                rows = [
                    meta[mid][:3] + (blob, meta[mid][3], sentences.get(mid)) for mid, blob in vectors if mid in meta
                ]
                self._fts_vocabulary(conn)
                # FTS5 keeps each term's occurrences in memory id order: one string of ids per term
                postings = conn.execute(f"SELECT term, group_concat(doc, ' ') FROM {_VOCABULARY} GROUP BY term")
                return IndexRows(head, None, rows, postings=postings.fetchall())
            changed = [
                r[0]
                for r in conn.execute("SELECT DISTINCT memory_id FROM history WHERE id > ? AND id <= ?", (seen, head))
            ]
            marks = ",".join("?" * len(changed))
            rows = conn.execute(
                f"SELECT m.id, m.user_id, m.at_ts, v.embedding, m.text, s.embeddings FROM memories m "
                f"JOIN vec_memories v ON v.memory_id = m.id LEFT JOIN sentence_vectors s ON s.memory_id = m.id "
                f"WHERE m.id IN ({marks})",
                changed,
            ).fetchall()
            terms = self._terms(conn, [row[4] for row in rows])
        return IndexRows(head, changed, rows, terms=terms)

    def terms(self, texts: Sequence[str]) -> builtins.list[builtins.list[str]]:
        """Each text's terms as FTS5 indexes memories (porter unicode61 remove_diacritics 2), one per occurrence.
        Remembered (up to 8,192 texts): a search's words recur, and the tokenizer never changes."""
        known = {t: v for t in texts if (v := self._term_cache.get(t)) is not None}  # another thread may clear it
        missing = [t for t in dict.fromkeys(texts) if t not in known]
        if missing:
            with self.lock, self._translated():
                known.update(zip(missing, self._terms(self.conn, missing)))
            if len(self._term_cache) + len(missing) > 8192:
                self._term_cache.clear()
            self._term_cache.update((t, known[t]) for t in missing)
        return [builtins.list(known[t]) for t in texts]

    @staticmethod
    def _fts_vocabulary(conn: Any) -> None:
        conn.execute(
            f"CREATE VIRTUAL TABLE IF NOT EXISTS {_VOCABULARY} USING fts5vocab(main, 'fts_memories', 'instance')"
        )

    @staticmethod
    def _terms(conn: Any, texts: Sequence[str]) -> builtins.list[builtins.list[str]]:
        """FTS5's own tokenizer, through a contentless table in this connection's temporary database: the
        in-memory BM25 then counts exactly the terms that FTS5 would. It writes nothing to the bank."""
        if not texts:
            return []
        conn.execute(
            f"CREATE VIRTUAL TABLE IF NOT EXISTS temp.{_TOKENIZER} USING fts5(text, content='', tokenize='{FTS_TOKENIZER}')"
        )
        conn.execute(
            f"CREATE VIRTUAL TABLE IF NOT EXISTS temp.{_TOKENIZER}_v USING fts5vocab(temp, '{_TOKENIZER}', 'instance')"
        )
        conn.executemany(f"INSERT INTO temp.{_TOKENIZER}(rowid, text) VALUES (?, ?)", enumerate(texts))
        out: builtins.list[builtins.list[str]] = [[] for _ in texts]
        try:
            for doc, term in conn.execute(f"SELECT doc, term FROM temp.{_TOKENIZER}_v"):
                out[doc].append(term)
        finally:
            conn.execute(f"INSERT INTO temp.{_TOKENIZER}({_TOKENIZER}) VALUES ('delete-all')")
        return out

    def list(
        self,
        user: str | None = None,
        *,
        limit: int | None = None,
        offset: int = 0,
        filters: dict[str, Any] | None = None,
    ) -> builtins.list[MemoryItem]:
        where, params = self.where(user=user, filters=filters)
        sql = f"SELECT {MEMORY_COLUMNS} FROM memories {where} ORDER BY id LIMIT ? OFFSET ?"
        rows = self.query(sql, [*params, -1 if limit is None else int(limit), int(offset)])
        return [row_to_item(row) for row in rows]

    @staticmethod
    def where(
        user: str | None = None,
        since: float | None = None,
        until: float | None = None,
        filters: dict[str, Any] | None = None,
        alias: str = "",
    ) -> tuple[str, builtins.list[Any]]:
        """Build a WHERE clause: values are always bound; metadata keys are allow-listed and quoted."""
        clauses: builtins.list[str] = []
        params: builtins.list[Any] = []
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

    def history(self, memory_id: int, user: str | None = None) -> builtins.list[HistoryEntry]:
        sql = f"SELECT {HISTORY_COLUMNS} FROM history WHERE memory_id = ?"
        params: builtins.list[Any] = [memory_id]
        if user is not None:
            sql += " AND user_id = ?"
            params.append(user)
        rows = self.query(sql + " ORDER BY id", params)
        if not rows:
            raise MemoryNotFound(f"no memory with id {memory_id}" + (f" for user {user!r}" if user else ""))
        return [row_to_history(row) for row in rows]

    def fts(
        self,
        match: str,
        *,
        limit: int,
        user: str | None,
        since: float | None,
        until: float | None,
        filters: dict[str, Any] | None,
    ) -> builtins.list[tuple[int, float]]:
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

    def check(self) -> builtins.list[str]:
        """What is wrong with the bank, if anything: [] when SQLite, FTS5, vec0, memories and history all agree.

        Holds the write lock for a consistent view (FTS5's integrity check is written as an INSERT).
        """
        problems: builtins.list[str] = []
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
            sentences = {r[0] for r in conn.execute("SELECT memory_id FROM sentence_vectors")}
            problems += [f"sentence vectors {m} have no memory" for m in sorted(sentences - memories.keys())][:20]
            replayed = {}
            for mid, user, kind, after in conn.execute(
                "SELECT h.memory_id, h.user_id, h.kind, h.after FROM history h "
                "JOIN (SELECT memory_id, max(id) AS last FROM history GROUP BY memory_id) l ON h.id = l.last"
            ):
                if kind != "DELETE":
                    replayed[mid] = (user, after)
            if replayed != memories:
                wrong = sorted(m for m in replayed.keys() | memories.keys() if replayed.get(m) != memories.get(m))
                problems += [
                    f"memory {m} is {memories.get(m)!r} but its history replays to {replayed.get(m)!r}"
                    for m in wrong[:20]
                ]
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


def _file_identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _create_private(path: Path) -> None:
    """Create a new bank file readable by its owner only; SQLite gives its -wal and -shm the same mode."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError:
        pass  # it exists (or cannot be made here): SQLite opens it, or says why it cannot


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # Windows cannot open a directory: its rename is durable without this
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_SQLITE_MAGIC = b"SQLite format 3\x00"
_MIGRATIONS_COLUMNS = ["version", "name", "applied_at"]


def _refuse_foreign(path: Path, driver: Any, busy_timeout: float) -> None:
    """Refuse any file that is not a memr1 bank, before opening it runs PRAGMA journal_mode=WAL and the
    migrations, which would convert another application's database for good.

    The schema is read read-only: no file, an empty file or a database without a schema becomes a new bank;
    one with memr1's migrations table is a bank (alone and empty, it is a bank whose creation was cut short).
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise BankError(f"cannot open {path}: {e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise BankError(f"{path} is a directory, not a bank file")
    if not stat.S_ISREG(st.st_mode):  # SQLite would wait on a FIFO, or read a device forever
        raise BankError(f"{path} is not a memr1 bank: it is not a regular file; it was left untouched")
    if st.st_size == 0:
        return
    try:
        with open(path, "rb") as f:
            header = f.read(100)
    except OSError as e:
        raise BankError(f"cannot open {path}: {e}") from None
    if not header.startswith(_SQLITE_MAGIC):
        raise BankError(f"{path} is not a memr1 bank: it is not an SQLite database; it was left untouched")
    # A read-only connection to a WAL database creates its -wal and -shm files and leaves them behind. With no
    # -wal file nobody has the database open, so the main file holds all of it and is read as immutable.
    modes = ["mode=ro"]
    if header[18:20] == b"\x02\x02" and not os.path.exists(f"{path}-wal"):
        modes.insert(0, "immutable=1")  # then mode=ro, should a writer that came meanwhile change the file
    uri = Path(os.path.abspath(path)).as_uri()
    for mode in modes:
        try:
            conn = driver.connect(f"{uri}?{mode}", uri=True, isolation_level=None, timeout=busy_timeout)
        except driver.Error as e:
            raise BankError(f"cannot open {path}: {e}") from None
        try:
            tables = sorted(r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))
            if conn.execute("SELECT 1 FROM sqlite_master").fetchone() is None:
                return
            columns = [r[0] for r in conn.execute("SELECT name FROM pragma_table_info('migrations')")]
            first = None
            if columns == _MIGRATIONS_COLUMNS:
                first = conn.execute("SELECT name FROM migrations WHERE version = 1").fetchone()
            break
        except driver.DatabaseError as e:
            if mode != modes[-1]:
                continue
            if _is_busy(e):
                raise _busy_error(path, e, busy_timeout) from None
            raise BankError(
                f"{path} is not a memr1 bank (or not a readable SQLite file): {e}; it was left untouched"
            ) from None
        finally:
            conn.close()
    cut_short = first is None and tables == ["migrations"]
    if columns == _MIGRATIONS_COLUMNS and (first == ("initial schema",) or cut_short):
        return
    raise BankError(
        f"{path} is not a memr1 bank: it is another application's SQLite database (tables: "
        f"{', '.join(tables[:10])}); it was left untouched. Give memr1 a file of its own"
    )


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
