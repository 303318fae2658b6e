"""`Bank`: one SQLite file of memories and raw turns, with its embedder and vector index; no chat model.

Everything here works without an LLM: memories are added, searched, changed and exported as
given. `Memory` builds on it with the two agents, and applies the Memory Manager's decisions
through `Bank.apply`, the same call `finetune/` uses to score a decision.
"""

from __future__ import annotations

import builtins
import contextlib
import itertools
import json
import logging
import os
import stat
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
from pydantic import ValidationError

from . import prompts, retrieval
from .agents import Shown
from .config import Config
from .embedding import DEFAULT_EMBEDDER, Embedder, embed_texts, embedder_from_ref
from .errors import BankError, InvalidInput
from .schema import (
    HistoryEntry,
    Hit,
    MemoryItem,
    Operation,
    Turn,
    check_id,
    check_label,
    check_metadata,
    check_text,
    check_user,
    parse_time,
    timestamp,
    utcnow,
)
from .store import Change, ImportSection, Store, memory_key

log = logging.getLogger("memr1")
DEFAULT_USER = "default"
EXPORT_VERSION = 1
SOURCES = ("memories", "turns", "both")
Sources = Literal["memories", "turns", "both"]
B = TypeVar("B", bound="Bank")


def turn_line(speaker: str | None, text: str) -> str:
    """How a raw turn is embedded and shown: who said it matters to "What did Caroline..." questions."""
    return f"{speaker}: {text}" if speaker else text


class Bank:
    """A memory bank in one SQLite file, without agents: what `Memory` is, less `observe` and `ask`.

    Thread model: a bank may be shared by threads. Database work is serialised on one connection;
    embedding runs outside that lock, behind the model's own. Several processes may open the same
    file: writes are short BEGIN IMMEDIATE transactions in WAL mode, waiting up to `busy_timeout`
    seconds.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        embedder: str | os.PathLike[str] | Embedder | None = None,
        busy_timeout: float | None = None,
        threads: int | Mapping[str, int] | None = None,
        config: Config | Mapping[str, Any] | None = None,
    ) -> None:
        """Open (or create) a bank. The embedder is `embedder`, else $MEMR1_EMBEDDER, else the one the bank
        recorded (only if it is already on this machine: a bank does not choose downloads), else the default.
        `busy_timeout` is in seconds ($MEMR1_BUSY_TIMEOUT, default 30); `threads` sets llama.cpp threads for
        the embedder (a count, or {"embedder": n}). `config` holds the same settings as a `Config` or a dict
        (see `Config.load`), instead of the arguments; an embedder instance may still be passed beside it."""
        if embedder is not None and not isinstance(embedder, (str, os.PathLike, Embedder)):
            raise InvalidInput(
                f"embedder must be a model path, a reference or an instance, not {type(embedder).__name__}"
            )
        instance = embedder if isinstance(embedder, Embedder) else None
        if config is None:
            config = Config.load(
                {"embedder": None if instance else embedder, "busy_timeout": busy_timeout, "threads": threads}
            )
        elif busy_timeout is not None or threads is not None or (embedder is not None and not instance):
            raise InvalidInput("pass the settings as arguments or in config, not both")
        elif not isinstance(config, Config):
            config = Config.load(config)
        self.config = config
        self.store = Store(path, busy_timeout=config.busy_timeout)
        self._index: retrieval.VectorIndex | None = None
        self._turns: retrieval.TurnIndex | None = None
        self._erasures = 0
        recorded = self.store.meta().get("embedder_ref") or None
        threads_ = config.embedder_threads
        if instance is not None:
            self.embedder: Embedder = instance
        elif config.embedder is None and recorded and recorded != DEFAULT_EMBEDDER:
            # A bank may come from anyone: a model it names is used only if it is already on this machine
            # (memr1's own default excepted: that one it would fetch for a new bank anyway). A custom
            # embedder is rebuilt by the factory registered for its ref's scheme.
            self.embedder = embedder_from_ref(recorded, n_threads=threads_, named_by=f"the bank {self.store.path}")
        else:
            self.embedder = embedder_from_ref(config.embedder or DEFAULT_EMBEDDER, n_threads=threads_)
        if instance is not None or config.embedder is not None:
            self.vector_index()  # a chosen embedder is checked against the bank at open

    @classmethod
    def from_config(
        cls: type[B], config: Config | Mapping[str, Any], *, path: str | os.PathLike[str] | None = None
    ) -> B:
        """A bank from one settings dict, mem0's way: `{"path": "bank.db", "embedder": ..., ...}`; the keys are
        `Config`'s (see `Config.load`), plus "path" unless `path` is given."""
        values = dict(config) if isinstance(config, Mapping) else None
        if values is not None:
            path = values.pop("path", path)
        if path is None:
            raise InvalidInput("from_config needs the bank's path: a 'path' key, or path=")
        return cls(path, config=Config.load(values) if values is not None else config)

    # ---- lifecycle ----

    def __enter__(self) -> Bank:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.store.close()

    @property
    def path(self) -> Path:
        return self.store.path

    def vector_index(self) -> retrieval.VectorIndex:
        """The in-memory index of this bank's vectors, brought up to date with the file (and bound to the
        embedder on first use: a bank keeps one embedder for life)."""
        erasures = self.store.erasures()  # read before the copies are made, so an erasure meanwhile is seen next time
        if self._index is None:
            ref = getattr(self.embedder, "ref", None)
            self.store.bind_embedder(self.embedder.identity, self.embedder.dim, ref)
        if self._index is None or erasures != self._erasures:
            # The in-memory copies follow the bank's append-only history; an erasure deletes history
            # rows instead, so after one (by any process) they are made afresh.
            self._index = retrieval.VectorIndex(self.embedder.dim)
            self._turns = retrieval.TurnIndex(self.embedder.dim)
            self._erasures = erasures
        return self._index

    def _embed(self, texts: builtins.list[str], *, query: bool = False) -> np.ndarray:
        if self._index is None:  # the embedder is checked against the bank before its first vector is made
            self.vector_index()
        return embed_texts(self.embedder, texts, query=query)

    def _vectors_and_sentences(self, texts: builtins.list[str]) -> builtins.list[tuple[bytes, bytes | None]]:
        """Each text's vector and its sentences' (None for one sentence), embedded in one batch."""
        split = [retrieval.sentences(t) for t in texts]
        vectors = self._embed([*texts, *(s for parts in split for s in parts)])
        out, at = [], len(texts)
        for vector, parts in zip(vectors, split):
            out.append((vector.tobytes(), vectors[at : at + len(parts)].tobytes() if parts else None))
            at += len(parts)
        return out

    # ---- writes ----

    def add(
        self,
        text: str,
        *,
        user: str = DEFAULT_USER,
        at: datetime | str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> MemoryItem:
        """Store one memory verbatim (no LLM); see `observe` for the Memory Manager."""
        text, user, moment, metadata = check_text(text), check_user(user), parse_time(at), check_metadata(metadata)
        vector, sentences = self._vectors_and_sentences([text])[0]
        change = Change(
            "ADD",
            user,
            text=text,
            vector=vector,
            sentences=sentences,
            at=moment,
            at_ts=timestamp(moment or utcnow()),
            metadata=metadata,
        )
        item = self.store.apply([change], actor="api")[0]
        assert item is not None
        return item

    def update(
        self,
        memory_id: int,
        text: str,
        *,
        user: str | None = None,
        at: datetime | str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> MemoryItem:
        """Replace a memory's text (metadata is merged); the old text stays in its history."""
        memory_id, text, metadata = check_id(memory_id), check_text(text), check_metadata(metadata)
        user = check_user(user) if user is not None else None
        moment = parse_time(at)
        current = self.store.get(memory_id, user)  # fail fast, before the embedding work
        vector, sentences = self._vectors_and_sentences([text])[0]
        change = Change(
            "UPDATE",
            current.user,
            memory_id=memory_id,
            text=text,
            vector=vector,
            sentences=sentences,
            at=moment,
            at_ts=timestamp(moment) if moment else None,
            metadata=metadata,
        )
        item = self.store.apply([change], actor="api")[0]
        assert item is not None
        return item

    def delete(self, memory_id: int, *, user: str | None = None) -> None:
        memory_id = check_id(memory_id)
        user = check_user(user) if user is not None else None
        current = self.store.get(memory_id, user)
        self.store.apply([Change("DELETE", current.user, memory_id=memory_id)], actor="api")

    def delete_all(self, *, user: str, purge: bool = False) -> int:
        """Delete every memory and raw turn of one user (and nobody else's); returns memories deleted.

        Their history, with every text the memories ever had, is kept for audit; `purge=True` erases
        that too, as `forget` does."""
        if purge:
            return self.forget(user)
        return self.store.delete_all(check_user(user), actor="api")

    def forget(self, user: str) -> int:
        """Erase one user, leaving no copy of their texts in the bank file; returns memories erased.

        Their memories, history, raw turns, vectors and full-text index entries are deleted in one
        transaction; SQLite zeroes the space they held, both full-text indexes are merged so that no
        old segment keeps their words, and a checkpoint truncates the -wal, which held earlier copies.
        A connection reading an older snapshot at that moment keeps those copies in the -wal until the
        next checkpoint (a warning says so). Backups and exports made earlier are not touched."""
        return self.store.forget(check_user(user))

    def reset(self) -> int:
        """Erase every user's memories, history and raw turns, as `forget` erases one user, in one
        transaction (mem0's name); returns memories erased. The bank keeps its embedder and schema."""
        return self.store.reset()

    # ---- reads ----

    def get(self, memory_id: int, *, user: str | None = None) -> MemoryItem:
        return self.store.get(check_id(memory_id), check_user(user) if user is not None else None)

    def list(
        self,
        *,
        user: str | None = DEFAULT_USER,
        limit: int | None = None,
        offset: int = 0,
        filters: dict[str, Any] | None = None,
    ) -> builtins.list[MemoryItem]:
        """Memories oldest first; `user=None` lists every user's."""
        for name, value in (("limit", limit), ("offset", offset)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**62):
                raise InvalidInput(f"{name} must be a non-negative int, got {value!r}"[:200])
        return self.store.list(
            check_user(user) if user is not None else None,
            limit=limit,
            offset=offset or 0,
            filters=_check_filters(filters),
        )

    get_all = list  # mem0's name

    def history(self, memory_id: int, *, user: str | None = None) -> builtins.list[HistoryEntry]:
        """Every change to one memory, oldest first, including its deletion."""
        return self.store.history(check_id(memory_id), check_user(user) if user is not None else None)

    def search(
        self,
        query: str,
        k: int | None = None,
        *,
        user: str | None = DEFAULT_USER,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        filters: dict[str, Any] | None = None,
        mode: retrieval.Mode = "hybrid",
        top_k: int | None = None,
    ) -> builtins.list[Hit]:
        """Hybrid (vector + BM25) search within one user's memories (`user=None`: all users).

        Returns the `k` best hits (10 by default); `top_k` is mem0's name for `k`."""
        query = check_text(query, "query")
        if k is not None and top_k is not None and k != top_k:
            raise InvalidInput(f"k and top_k are one setting; got k={k!r} and top_k={top_k!r}"[:200])
        k = k if k is not None else top_k if top_k is not None else 10
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 1000:
            raise InvalidInput(f"k must be an int from 1 to 1000, got {k!r}")
        if mode not in ("hybrid", "vector", "text"):
            raise InvalidInput(f"mode must be hybrid, vector or text, not {mode!r}")
        user = check_user(user) if user is not None else None
        start, end = parse_time(since, "since"), parse_time(until, "until")
        index = self.vector_index()
        vector = self._embed([query], query=True)[0] if mode != "text" else None
        return retrieval.search(
            self.store,
            index,
            vector,
            query,
            k=k,
            user=user,
            since=timestamp(start) if start else None,
            until=timestamp(end) if end else None,
            filters=_check_filters(filters),
            mode=mode,
        )

    # ---- bulk ----

    def export(self, path: str | os.PathLike[str], *, user: str | None = None) -> int:
        """Write turns, memories and their history as JSON lines; returns memories written."""
        user = check_user(user) if user is not None else None
        target = _file_path(path, "export path")
        if target.is_dir():
            raise InvalidInput(f"cannot export to {target}: it is a directory")
        count, embedder = 0, self.store.meta().get("embedder")
        try:  # a unique temporary file, renamed into place: never a half-written export under the real name
            fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        except OSError as e:
            raise InvalidInput(f"cannot write an export next to {target}: {e}") from None
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(json.dumps({"type": "memr1-export", "version": EXPORT_VERSION, "embedder": embedder}) + "\n")
                for row in self.store.export_rows(user):
                    count += row["type"] == "memory"
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
            tmp.replace(target)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise InvalidInput(f"cannot write {target}: {e}") from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return count

    def backup(self, path: str | os.PathLike[str]) -> Path:
        """Copy the bank, consistently, while it is open and other processes write to it; returns the copy's path.

        SQLite's online backup API copies one snapshot: every write committed before the backup began,
        none of those after. The copy is one self-contained file (no -wal to go with it), created 0600
        under a temporary name and renamed into place. Copying an open bank's .db by hand loses the
        writes that are still in its -wal."""
        target = _file_path(path, "backup path")
        if target.is_dir():
            raise InvalidInput(f"cannot back up to {target}: it is a directory")
        if target.exists() and target.samefile(self.path):
            raise InvalidInput(f"cannot back up {self.path} onto itself")
        for sidecar in (Path(f"{target}-wal"), Path(f"{target}-shm")):
            if sidecar.exists():  # a new file under an open bank's -wal would be corrupted by it
                raise InvalidInput(
                    f"cannot back up to {target}: {sidecar.name} exists, so it is an open bank "
                    "(or one that was not closed cleanly); choose another path"
                )
        try:
            self.store.backup(target)
        except OSError as e:
            raise BankError(f"cannot back up {self.path} to {target}: {e}") from None
        return target

    def import_jsonl(self, path: str | os.PathLike[str]) -> int:
        """Import an export, or several concatenated; returns the memories added, re-embedded for this bank.

        Every line is validated first, then all is written in one transaction: an error leaves the bank as
        it was. Each header line starts a new export whose ids are its own (`cat a.jsonl b.jsonl` keeps both
        banks apart); an id repeated within one export is refused with its line. What the bank already holds
        is skipped: a memory with the same user, text and creation time (with its history), and a turn with
        the same user, session, speaker, text and times. So importing a file twice adds it once, and a backup
        imported into its own bank brings back only what was lost since. The file must be a regular file
        with lines of at most 1 MiB.
        """
        sections = _read_export(_file_path(path, "import path"))
        memories = [m for section in sections for m in section.memories]
        held = self.store.held_memories({m["user"] for m in memories}) if memories else set()
        todo = [m for m in memories if memory_key(m) not in held]  # the transaction decides again, with no model
        if todo:
            for m, (vector, sentences) in zip(todo, self._vectors_and_sentences([m["text"] for m in todo])):
                m["vector"], m["sentences"] = vector, sentences
        return self.store.import_rows(sections)

    # ---- introspection ----

    def sqlite_info(self) -> dict[str, Any]:
        """Which SQLite driver, SQLite and sqlite-vec versions this bank runs on."""
        return self.store.sqlite_info()

    def check(self) -> builtins.list[str]:
        """Problems with the bank, [] when healthy: SQLite's integrity check, and FTS5, vectors, memories
        and history agreeing (no memory without its vector, no vector without its memory)."""
        return self.store.check()

    def stats(self) -> dict[str, Any]:
        meta = self.store.meta()
        return {
            "path": str(self.path),
            "bytes": self.path.stat().st_size if self.path.exists() else 0,
            **self.store.counts(),
            "embedder": meta.get("embedder"),
            "embedder_dim": int(meta["embedder_dim"]) if "embedder_dim" in meta else None,
            **self.sqlite_info(),
        }

    def recall(self, question: str, k: int, *, user: str, sources: Sources) -> builtins.list[Shown]:
        """What the Answer Agent is shown: memories, turns (as "Speaker: text"), or both interleaved by rank."""
        memories: builtins.list[Shown] = []
        turns: builtins.list[Shown] = []
        index = self.vector_index()
        vector = self._embed([question], query=True)[0]  # once, for both searches
        if sources != "turns":
            hits = retrieval.search(
                self.store, index, vector, question, k=k, user=user, since=None, until=None, filters=None
            )
            memories = [Shown(("memory", h.memory.id), h.memory.text, h.memory.at, h.memory) for h in hits]
        if sources != "memories":
            assert self._turns is not None  # made with the index
            ranked = retrieval.search_turns(self.store, self._turns, vector, question, k=k, user=user)
            found = self.store.get_turns([tid for tid, _ in ranked])
            turns = [
                Shown(("turn", tid), prompts.absolute_dates(turn_line(t.speaker, t.text), t.at), t.at, t)
                for tid, _ in ranked
                if (t := found.get(tid)) is not None
            ]
        mixed = [item for pair in itertools.zip_longest(memories, turns) for item in pair if item is not None]
        return mixed[:k]

    def apply(
        self, plan: prompts.ManagerPlan, turn: Turn, *, shown: Sequence[MemoryItem] = ()
    ) -> builtins.list[Operation]:
        """Store a turn and what the Memory Manager decided about it, in one transaction; returns the operations,
        NOOPs included. Memories written take the turn's time, an UPDATE's too.

        `shown` are the memories the plan was decided on. An UPDATE or DELETE of a memory that another writer
        changed since raises Conflict and writes nothing, not even the turn: decide again on fresh memories.
        `observe` is `search`, `MemoryManager.decide`, then this; finetune scores a decision through it too."""
        text, user = check_text(turn.text, "turn text"), check_user(turn.user)
        seen = {m.id: m for m in shown}
        for op in plan.ops:
            if op.memory_id is not None and op.memory_id not in seen:
                raise InvalidInput(f"the plan {op.kind}s memory {op.memory_id}, which it was not decided on (shown=)")
            if op.memory_id is not None and seen[op.memory_id].user != user:
                raise InvalidInput(f"the plan {op.kind}s memory {op.memory_id}, which is not {user!r}'s")
        row: dict[str, Any] = {
            "user": user,
            "text": text,
            "speaker": check_label(turn.speaker, "speaker"),
            "session": check_label(turn.session, "session"),
            "at": turn.at,
            "metadata": check_metadata(turn.metadata),
        }
        new_texts = [op.text for op in plan.ops if op.kind in ("ADD", "UPDATE")]
        # the turn's own vectors first, for ask(sources="turns")
        vectors = iter(self._vectors_and_sentences([turn_line(turn.speaker, text), *new_texts]))
        row["vector"], row["sentences"] = next(vectors)
        moment = timestamp(turn.at or utcnow())
        changes = [
            Change(
                op.kind,
                user,
                memory_id=op.memory_id,
                text=op.text or None,
                at=turn.at,
                at_ts=moment,
                seen=seen.get(op.memory_id) if op.memory_id is not None else None,
            )
            for op in plan.ops
        ]
        for change in changes:
            if change.kind in ("ADD", "UPDATE"):
                change.vector, change.sentences = next(vectors)
        items = self.store.apply(changes, actor="manager", turn=row)
        applied = [
            Operation(
                kind=op.kind,
                memory_id=item.id if item else op.memory_id,  # type: ignore[arg-type]
                text=item.text if item else None,
                previous=seen[op.memory_id].text if op.memory_id in seen else None,
            )
            for op, item in zip(plan.ops, items, strict=True)
        ]
        held = [
            Operation(kind="NOOP", memory_id=mid, text=seen[mid].text if mid in seen else None) for mid in plan.noops
        ]
        return applied + held


def _file_path(path: object, what: str) -> Path:
    if not isinstance(path, (str, os.PathLike)) or isinstance(os.fspath(path), bytes):
        raise InvalidInput(f"{what} must be a str or os.PathLike, got {type(path).__name__}")
    if "\x00" in os.fspath(path) or not os.fspath(path).strip():
        raise InvalidInput(f"{what} must be a non-empty path without NUL, got {os.fspath(path)!r}"[:200])
    try:
        os.fsencode(path)
    except UnicodeEncodeError:  # a lone surrogate: no file system can hold that name
        raise InvalidInput(f"{what} cannot be encoded for the file system: {os.fspath(path)!r}"[:200]) from None
    try:
        Path(path).exists()  # a name too long for the file system fails here, as the caller's mistake
    except OSError as e:
        raise InvalidInput(f"{what} is unusable ({e.strerror}): {os.fspath(path)!r}"[:200]) from None
    return Path(path)


def _check_filters(filters: object) -> dict[str, Any] | None:
    if filters is None:
        return None
    if not isinstance(filters, dict):
        raise InvalidInput(f"filters must be a dict, got {type(filters).__name__}")
    return check_metadata(filters)


MAX_IMPORT_LINE_BYTES = 1 << 20  # an export's longest line, a history row with two escaped 64K-character texts, fits


def _read_export(path: Path) -> list[ImportSection]:
    """Parse and validate a whole import file, export by export, before anything is written."""
    sections: list[ImportSection] = []
    section: _Section | None = None
    with _open_regular(path) as f:
        for number, line in _bounded_lines(f, path):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError("not a JSON object")
                try:  # a '\\ud800' escape decodes to a lone surrogate, which SQLite cannot store as UTF-8
                    json.dumps(row, ensure_ascii=False).encode("utf-8")
                except UnicodeEncodeError:
                    raise ValueError("a string holds a lone surrogate code point") from None
                kind = row.pop("type", None)
                if kind == "memr1-export":
                    if row.get("version") != EXPORT_VERSION:
                        raise ValueError(f"export version {row.get('version')!r} is not {EXPORT_VERSION}")
                    if section is not None:
                        sections.append(section.close(path))
                    section = _Section()
                    continue
                section = section or _Section()  # lines before any header: one export without its header
                if kind == "memory":
                    item = MemoryItem(**row)
                    check_text(item.text), check_user(item.user), check_metadata(item.metadata)
                    section.claim("memory", item.id, number)
                    section.memories.append(_memory_row(item))
                elif kind == "history":
                    entry = HistoryEntry(id=0, **row)
                    check_user(entry.user)
                    section.history.append((number, _history_row(entry)))
                elif kind == "turn":
                    if row.get("id") is not None:
                        section.claim("turn", check_id(row["id"]), number)
                    check_text(row.get("text"), "turn text"), check_user(row.get("user"))
                    check_metadata(row.get("metadata"))
                    check_label(row.get("speaker"), "speaker"), check_label(row.get("session"), "session")
                    row["at"] = _iso(parse_time(row.get("at")))
                    row["created_at"] = _iso(parse_time(row.get("created_at"), "created_at"))
                    section.turns.append(
                        {k: row.get(k) for k in ("id", "user", "session", "speaker", "text", "at", "created_at")}
                        | {"metadata": row.get("metadata") or {}}
                    )
                else:
                    raise ValueError(f"unknown line type {kind!r}")
            except (ValueError, TypeError, ValidationError, InvalidInput, RecursionError) as e:
                detail = str(e).splitlines()[0] if not isinstance(e, ValidationError) else _first_error(e)
                raise InvalidInput(f"{path}, line {number}: {detail}; nothing was imported") from None
    if section is not None:
        sections.append(section.close(path))
    return sections


class _Section:
    """One export being read: its ids, the lines that gave them, and its rows."""

    def __init__(self) -> None:
        self.turns: list[dict[str, Any]] = []
        self.memories: list[dict[str, Any]] = []
        self.history: list[tuple[int, dict[str, Any]]] = []
        self.lines: dict[tuple[str, int], int] = {}

    def claim(self, kind: str, ident: int, number: int) -> None:
        """Two rows with one id would be merged into one memory or turn: a file made by hand, or two exports
        glued together without the second one's header."""
        first = self.lines.setdefault((kind, ident), number)
        if first != number:
            raise ValueError(
                f"{kind} id {ident} appears twice in one export (first on line {first}); "
                "concatenated exports must each keep their header line"
            )

    def close(self, path: Path) -> ImportSection:
        """Every history row must be about one of this export's memories, as its user, and each memory's
        history must replay to its text: otherwise `history`, the search index and `check` disagree."""
        memories = {m["id"]: m for m in self.memories}
        last: dict[int, dict[str, Any]] = {}
        for number, h in self.history:
            memory = memories.get(h["memory_id"])
            problem = None
            if memory is None:
                problem = f"a history row for memory {h['memory_id']}, but this export has no memory {h['memory_id']}"
            elif h["user"] != memory["user"]:
                problem = f"a history row for user {h['user']!r}, but memory {h['memory_id']} is {memory['user']!r}'s"
            if problem:
                raise InvalidInput(f"{path}, line {number}: {problem}; nothing was imported")
            last[h["memory_id"]] = h
        for m in self.memories:
            final = last.get(m["id"])
            if final is not None and (final["kind"] == "DELETE" or final["after"] != m["text"]):
                number = self.lines[("memory", m["id"])]
                raise InvalidInput(
                    f"{path}, line {number}: memory {m['id']}'s history does not replay to its text "
                    f"(its last change is {final['kind']} to {final['after']!r})"[:300]
                    + "; nothing was imported"
                )
        return ImportSection(self.turns, self.memories, [h for _, h in self.history])


@contextlib.contextmanager
def _open_regular(path: Path) -> Iterator[Any]:
    """Open without blocking (a FIFO would wait for a writer) and refuse what is not a regular file: a device
    such as /dev/zero never ends, and a directory is no export."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as e:
        raise InvalidInput(f"cannot read {path}: {e}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InvalidInput(f"cannot import {path}: it is not a regular file; nothing was imported")
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        yield f


def _bounded_lines(f: Any, path: Path) -> Iterator[tuple[int, str]]:
    """Numbered lines split on "\\n" only (U+2028 may sit inside a JSON string), none read past the cap."""
    number = 0
    while True:
        try:
            raw = f.readline(MAX_IMPORT_LINE_BYTES + 1)
        except OSError as e:
            raise InvalidInput(f"cannot read {path}: {e}; nothing was imported") from None
        if not raw:
            return
        number += 1
        if len(raw.removesuffix(b"\n")) > MAX_IMPORT_LINE_BYTES:
            raise InvalidInput(
                f"{path}, line {number} is longer than 1 MiB, more than any export writes; nothing was imported"
            )
        try:
            yield number, raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InvalidInput(f"cannot read {path}, line {number}: {e}; nothing was imported") from None


def _memory_row(item: MemoryItem) -> dict[str, Any]:
    """Times as the bank writes them (isoformat, "+00:00" rather than JSON's "Z")."""
    row = item.model_dump(mode="json")
    row.update(at=_iso(item.at), created_at=item.created_at.isoformat(), updated_at=item.updated_at.isoformat())
    row["at_ts"] = timestamp(item.at or item.created_at)
    return row


def _history_row(entry: HistoryEntry) -> dict[str, Any]:
    return entry.model_dump(mode="json") | {"changed_at": entry.changed_at.isoformat()}


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def _first_error(error: ValidationError) -> str:
    first = error.errors()[0]
    return f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
