"""Hybrid search: a vector list and a BM25 list, fused by normalised score, then spread to neighbours.

The vectors live in sqlite-vec (vec0, cosine), the durable source of truth. Search runs
on an in-memory copy of them: sign bits (one per dimension, after centring) for a coarse
Hamming pass, and int16 values (a scale per row) to re-score the candidates. A plain vec0 scan reads
every float (≈45-60 ms for 100k×384 on 2 cores), vec0's top-k grows with k and its
lookups by id scan too, so this is how search stays in single-digit milliseconds
(benchmarks/retrieval_speed.py).

The in-memory copy follows the bank through the append-only history table: every write
adds history rows, so replaying the rows past the last one seen keeps it exact even when
other processes write. It runs no SQL: `Store.vectors_past` reads those rows for it.

How the two lists become one ranking (`Tuning`; each choice measured on LoCoMo's train and
val conversations only, benchmarks/locomo_retrieval.py and RESULTS.md):
- each list is 200 deep; its scores are shifted so that a memory missing from it scores 0 and
  scaled by their root mean square, so a list that is confident about its top hit counts for
  more (reciprocal-rank fusion throws that away); the two lists count the same (BM25 counted 1.5 times
  before memories were also scored by their sentences, which made the vector list stronger);
- a question about time ("When did...", "How long...") lifts memories that state a time
  ("yesterday", "last May", "2022"): in LoCoMo's train and val conversations 78% of the evidence
  for such questions does, against 13% of all turns;
- a memory then gets a share of the scores of the memories said just before and after it by the
  same user (ids adjacent in that user's bank, at most an hour apart). A turn like "Yes, for
  running!" holds the answer while the turn before it holds the words of the question.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np

from .schema import Hit
from .store import IndexRow, Store

Mode = Literal["hybrid", "vector", "text"]
_WORD = re.compile(r"\w+", re.UNICODE)
_ASKS_WHEN = re.compile(
    r"^\W*(when|how long|since when|by when|until when|(in |during |around )?(what|which) (year|month|week|day|date|time|season))\b",
    re.IGNORECASE,
)
_UNITS = r"(day|night|week|weekend|month|year|morning|afternoon|evening|summer|winter|spring|fall|autumn)s?"
_DAYS = r"(mon|tues|wednes|thurs|fri|satur|sun)days?"
_STATES_TIME = re.compile(
    rf"\b(yesterday|today|tonight|tomorrow|ago|recently|lately|earlier|"
    rf"(last|next|this|past|few|couple of) (\w+ )?({_UNITS}|{_DAYS})|{_DAYS}|(19|20)\d\d)\b",
    re.IGNORECASE,
)
_MONTH = re.compile(r"\b(January|February|March|April|May|June|July|August|September|October|November|December)\b")
# Words that match most memories cost BM25 time and add no signal; dropped unless nothing else is left.
STOPWORDS = frozenset(
    "a an and are as at be been but by can could did do does for from had has have he her hers him his how i if "
    "in into is it its me my of on or our she so than that the their them then there these they this to was we "
    "were what when where which who whom why will with would you your".split()
)


@dataclass(frozen=True)
class Tuning:
    """How hybrid search fuses its lists; the defaults won on LoCoMo train+val (see the module docstring)."""

    depth: int = 200  # each list holds max(k, depth) memories before fusion
    text_weight: float = 1.0  # the BM25 list's weight against the vector list's 1.0
    context: tuple[float, ...] = (0.4, 0.2)  # share of a memory's score given to memories 1, 2, ... away
    context_after: tuple[float, ...] | None = None  # the shares of those said after it, when not `context`'s
    context_gap: float = 3600.0  # seconds: memories said further apart are not each other's context
    time_boost: float = 1.0  # added to a memory stating a time when the query asks when
    max_df: float = 1.0  # BM25 skips words held by more than this share of the bank, unless all are
    sentences: bool = True  # a memory of several sentences scores as the best of them and itself

    @property
    def radius(self) -> int:
        """How many memories away context reaches."""
        return max(len(self.context), len(self.context_after or ()))


DEFAULT_TUNING = Tuning()


class Scope(NamedTuple):
    """Which memories a search may return: one user's (None: every user's), said within [since, until]
    (timestamps), and among `allowed` ids (what metadata filters let through) when given."""

    user: str | None = None
    since: float | None = None
    until: float | None = None
    allowed: np.ndarray | None = None


@dataclass
class _Rows:
    ids: np.ndarray  # int64 memory ids, ascending: a user's neighbours are adjacent rows of its scope
    bits: np.ndarray  # (words, n) uint64 sign bits, column-major so each XOR/popcount is one contiguous pass
    vecs: np.ndarray  # int16 vectors for re-scoring, each times its row's scale (0.77 KB per 384-d memory)
    users: np.ndarray  # int32 user codes
    ts: np.ndarray  # float64 at_ts
    live: np.ndarray  # bool; a deleted memory's row stays, marked dead, until the rows are compacted
    scale: np.ndarray  # float32: a row's largest |value| / 32767
    sent_at: np.ndarray  # int64: where the memory's sentence vectors start in the index's _Sentences
    sent_n: np.ndarray  # int32: how many it has (0: a memory of one sentence is its own vector)


def _int16(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows as int16 and a scale each (a row's largest |value| / 32767): cosine within 1e-5 at 384-d."""
    scale = np.maximum(np.abs(matrix).max(axis=1, initial=0.0), 1e-30) / 32767
    return np.rint(matrix / scale[:, None]).astype(np.int16), scale.astype(np.float32)


def _cosines(vecs: np.ndarray, scale: np.ndarray, at: np.ndarray, query: np.ndarray) -> np.ndarray:
    """The query's cosine with int16 rows `at`. numpy converts float16 to float32 one value at a time, so int16
    with a scale per row is 4-5x faster to re-score than float16, as compact, and more exact; gathered and
    converted 256 rows at a time, the float32 copy stays in cache (measured 15% faster at 2,000 rows)."""
    sims = np.empty(len(at), np.float32)
    for start in range(0, len(at), 256):
        part = at[start : start + 256]
        sims[start : start + 256] = np.take(vecs, part, axis=0).astype(np.float32) @ query
    return sims * scale[at]


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The indices start, start+1, ..., start+count-1 of every range, one after another."""
    ends = np.cumsum(counts)
    return np.repeat(starts - ends + counts, counts) + np.arange(int(ends[-1]) if len(ends) else 0)


class _Sentences:
    """The sentence vectors of memories of several sentences, int16 with a scale each, in one append-only
    arena that memory rows point into. A memory's new sentences are appended and its old ones left behind
    until they are an eighth of the arena; then the arena is copied without them."""

    def __init__(self, dim: int):
        self.dim = dim
        self.vecs = np.empty((0, dim), np.int16)
        self.scale = np.empty(0, np.float32)
        self.used = 0
        self.live = 0

    def add(self, blobs: Sequence[bytes | None]) -> tuple[np.ndarray, np.ndarray]:
        """Append each memory's sentence vectors; (start, count) of each."""
        counts = np.asarray([len(b) // (4 * self.dim) if b else 0 for b in blobs], np.int64)
        total = int(counts.sum())
        starts = self.used + np.cumsum(counts) - counts
        if total:
            if self.used + total > len(self.vecs):  # grown by half: each row is copied O(1) times on average
                self._resize(max(self.used + total, len(self.vecs) * 3 // 2, 64))
            matrix = np.frombuffer(b"".join(b for b in blobs if b), np.float32).reshape(total, self.dim)
            end = self.used + total
            self.vecs[self.used : end], self.scale[self.used : end] = _int16(matrix)
            self.used, self.live = end, self.live + total
        return starts, counts.astype(np.int32)

    def release(self, counts: np.ndarray) -> None:
        self.live -= int(counts.sum())

    def wasteful(self) -> bool:
        """Whether what updates and deletes left behind is worth a compaction (an eighth: amortised)."""
        return self.used - self.live > self.live // 8 + 64

    def compact(self, starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Keep only these ranges (the live memories'); their new starts."""
        keep = _ranges(starts, counts)
        self.vecs, self.scale = self.vecs[keep], self.scale[keep]
        self.used = self.live = len(keep)
        return np.cumsum(counts) - counts

    def best(self, starts: np.ndarray, counts: np.ndarray, query: np.ndarray) -> np.ndarray:
        """Each memory's best sentence cosine (every count > 0)."""
        return np.maximum.reduceat(
            _cosines(self.vecs, self.scale, _ranges(starts, counts), query), np.cumsum(counts) - counts
        )

    def _resize(self, capacity: int) -> None:
        vecs, scale = np.empty((capacity, self.dim), np.int16), np.empty(capacity, np.float32)
        vecs[: self.used], scale[: self.used] = self.vecs[: self.used], self.scale[: self.used]
        self.vecs, self.scale = vecs, scale


def _within(
    live: np.ndarray, users: np.ndarray, ts: np.ndarray, ids: np.ndarray, code: int | None, scope: Scope
) -> np.ndarray:
    """Which rows are live, the user's (by code; any user's when None) and within the scope's window and ids:
    the one test that the vector rows, the BM25 slots and the context links all apply."""
    mask = live.copy()
    if code is not None:
        mask &= users == code
    if scope.since is not None:
        mask &= ts >= scope.since
    if scope.until is not None:
        mask &= ts <= scope.until
    if scope.allowed is not None:
        mask &= np.isin(ids, scope.allowed)
    return mask


class VectorIndex:
    """In-memory copy of one bank's vectors: sign bits for the coarse pass, int16 to re-score.

    Its arrays keep spare rows, so a write changes a few rows in place: a new memory takes the next spare
    row (memory ids only grow, so id order holds), an update overwrites its row, a delete marks its row
    dead. Copying 100k vectors on every write made a search right after a write 6× slower (issue 12).

    A memory of several sentences also has a vector per sentence, and scores as the best of its own cosine
    and theirs: "I went hiking. My son loves it." should be found by a question about the son (with BM25's
    weight retuned, +3 points of R@10 on LoCoMo's train and val conversations). The bit pass reads only the memories' own vectors; the
    sentences are read for the candidates it keeps (every memory of a scope below `exact_below`).
    """

    def __init__(
        self,
        dim: int,
        *,
        exact_below: int = 4096,
        oversample: int = 20,
        min_candidates: int = 2000,
        max_candidates: int = 2000,
        scope_share: float = 1 / 125,
    ):
        self.dim = dim
        self.exact_below = exact_below  # scopes this small skip the bit pass entirely
        self.oversample = oversample
        self.min_candidates = min_candidates
        # re-scoring is the cost that grows with n: search's 200-deep lists would re-score 4,000 rows at 20x
        self.max_candidates = max(max_candidates, min_candidates)
        # Sign bits rank a big scope more loosely: at 1M memories the 2,000 Hamming-nearest held 88% of the
        # exact top 60, 8,000 (this share) 98%, for 2 ms more than the 9 ms of the pass (benchmarks/RESULTS.md)
        self.scope_share = scope_share
        self.lock = threading.Lock()
        self.rebuilds = 0  # full reloads from the bank: writes must not cause them
        self._seen = -1  # last history id applied
        self._center = np.zeros(dim, dtype=np.float32)
        self._users: dict[str, int] = {}
        self._buf = self._alloc(0)
        self._sentences = _Sentences(dim)
        self._n = 0  # rows in use, dead ones included; the rest of _buf is spare
        self._dead = 0
        self.text = TextIndex()  # the same memories' FTS5 terms, for BM25 without FTS5's per-row cost
        # a search asks for the same scope twice (vector pass, then context): the last one, until the next write
        self._last_scope: tuple[tuple[Any, ...], np.ndarray | None] | None = None

    def __len__(self) -> int:
        return self._n - self._dead

    @property
    def _rows(self) -> _Rows:
        """Views of the rows in use; only valid while the lock is held."""
        b, n = self._buf, self._n
        return _Rows(
            b.ids[:n],
            b.bits[:, :n],
            b.vecs[:n],
            b.users[:n],
            b.ts[:n],
            b.live[:n],
            b.scale[:n],
            b.sent_at[:n],
            b.sent_n[:n],
        )

    # ---- keeping up with the bank ----

    def sync(self, store: Store) -> None:
        """Apply the history written since the last sync; rebuild from every memory when far behind."""
        with self.lock:
            past = store.vectors_past(self._seen, reload_over=max(2048, len(self) // 4))
            if past.head == self._seen:
                return
            rows = [(*row[:4], row[5]) for row in past.rows]
            self._last_scope = None
            if past.changed is None:
                self._rebuild(rows)
                self.text.rebuild(past.rows, past.postings, self._code)
            else:
                gone = set(past.changed).difference(r[0] for r in rows)
                self._drop(gone)
                self._append(rows)
                self.text.drop(gone)
                self.text.add(past.rows, past.terms, self._code)
                if self._sentences.wasteful():  # checked first: finding the live ranges reads every row
                    r = self._rows
                    keep = np.flatnonzero(r.live & (r.sent_n > 0))
                    r.sent_at[keep] = self._sentences.compact(r.sent_at[keep], r.sent_n[keep])
            self._seen = past.head

    def _rebuild(self, rows: Sequence[tuple[int, str, float, bytes, bytes | None]]) -> None:
        """Hold exactly these (memory id, user, at_ts, vector, sentence vectors) rows, given in any order."""
        mids, users, ts, blobs, sentences = zip(*rows) if rows else ((), (), (), (), ())
        ids = np.asarray(mids, np.int64)
        order = np.argsort(ids, kind="stable")
        matrix = np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(order), self.dim)[order]
        # Centring first makes sign bits informative: embeddings share a large common direction.
        self._center = matrix.mean(axis=0) if len(ids) >= 64 else np.zeros(self.dim, np.float32)
        self._users = {}
        codes = [self._code(users[i]) for i in order.tolist()]
        self._buf, self._n, self._dead = self._alloc(self._room(len(ids))), len(ids), 0
        self._sentences = _Sentences(self.dim)
        self._write(
            slice(0, len(ids)),
            ids[order],
            matrix,
            np.asarray(codes, np.int32),
            np.asarray(ts, np.float64)[order],
            [sentences[i] for i in order.tolist()],
        )
        self.rebuilds += 1

    def _drop(self, ids: Iterable[int]) -> None:
        at = self._find(np.fromiter(ids, np.int64))
        at = at[at >= 0]
        at = at[self._buf.live[at]]
        self._buf.live[at] = False
        self._sentences.release(self._buf.sent_n[at])
        self._dead += len(at)
        if self._dead > self._n // 8:  # dead rows still cost every full pass; compacting this late stays amortised
            live = np.flatnonzero(self._rows.live)
            self._move(self._room(len(live)), live)
            self._dead = 0

    def _append(self, rows: Sequence[tuple[int, str, float, bytes, bytes | None]]) -> None:
        """Add memories, or overwrite the rows of those already held (an update)."""
        if not rows:
            return
        rows = sorted(rows, key=lambda row: row[0])
        ids = np.asarray([x[0] for x in rows], np.int64)
        matrix = np.frombuffer(b"".join(r[3] for r in rows), dtype=np.float32).reshape(len(rows), self.dim)
        users = np.asarray([self._code(x[1]) for x in rows], np.int32)
        ts = np.asarray([x[2] for x in rows], np.float64)
        sentences = [x[4] for x in rows]
        at = self._find(ids)
        held = at >= 0
        if held.any():
            was = self._buf.live[at[held]]
            self._dead -= int(np.count_nonzero(~was))
            self._sentences.release(self._buf.sent_n[at[held][was]])
            picked = [sentences[i] for i in np.flatnonzero(held).tolist()]
            self._write(at[held], ids[held], matrix[held], users[held], ts[held], picked)
        new = ~held
        if not new.any():
            return
        start, count = self._n, int(new.sum())
        if start + count > len(self._buf.ids):  # grown by half: each row is copied O(1) times on average
            self._move(max(start + count, len(self._buf.ids) * 3 // 2, 64), slice(None))
        self._n += count
        picked = [sentences[i] for i in np.flatnonzero(new).tolist()]
        self._write(slice(start, start + count), ids[new], matrix[new], users[new], ts[new], picked)
        if start and self._buf.ids[start - 1] > ids[new][0]:  # below the newest id (a vector added by hand):
            self._move(len(self._buf.ids), np.argsort(self._rows.ids, kind="stable"))  # restore id order

    def _find(self, ids: np.ndarray) -> np.ndarray:
        """Row of each id, or -1."""
        held = self._buf.ids[: self._n]
        if not len(held):
            return np.full(len(ids), -1, np.int64)
        at = np.minimum(np.searchsorted(held, ids), len(held) - 1)
        return np.where(held[at] == ids, at, -1)

    def _write(
        self,
        at: slice | np.ndarray,
        ids: np.ndarray,
        matrix: np.ndarray,
        users: np.ndarray,
        ts: np.ndarray,
        sentences: Sequence[bytes | None],
    ) -> None:
        b = self._buf
        b.vecs[at], b.scale[at] = _int16(matrix)
        b.ids[at], b.bits[:, at], b.users[at], b.ts[at] = ids, self._pack(matrix), users, ts
        b.sent_at[at], b.sent_n[at] = self._sentences.add(sentences)
        b.live[at] = True

    def _move(self, capacity: int, rows: slice | np.ndarray) -> None:
        """Copy `rows` of those in use, in that order, to new arrays of `capacity` rows."""
        r, b = self._rows, self._alloc(capacity)
        n = len(r.ids[rows])
        b.ids[:n], b.bits[:, :n], b.vecs[:n] = r.ids[rows], r.bits[:, rows], r.vecs[rows]
        b.users[:n], b.ts[:n], b.live[:n], b.scale[:n] = r.users[rows], r.ts[rows], r.live[rows], r.scale[rows]
        b.sent_at[:n], b.sent_n[:n] = r.sent_at[rows], r.sent_n[rows]
        self._buf, self._n = b, n

    @staticmethod
    def _room(n: int) -> int:
        return n + n // 8 + 64  # the writes after a rebuild or compaction fill spare rows, not new arrays

    def _alloc(self, capacity: int) -> _Rows:
        return _Rows(
            np.empty(capacity, np.int64),
            np.empty(((self.dim + 63) // 64, capacity), np.uint64),
            np.empty((capacity, self.dim), np.int16),
            np.empty(capacity, np.int32),
            np.empty(capacity, np.float64),
            np.zeros(capacity, bool),
            np.empty(capacity, np.float32),
            np.zeros(capacity, np.int64),
            np.zeros(capacity, np.int32),
        )

    def _code(self, user: str) -> int:
        return self._users.setdefault(user, len(self._users))

    def _pack(self, matrix: np.ndarray) -> np.ndarray:
        packed = np.packbits(np.atleast_2d(matrix) - self._center > 0, axis=1)
        padded = np.zeros((len(packed), (self.dim + 63) // 64 * 8), np.uint8)
        padded[:, : packed.shape[1]] = packed
        return np.ascontiguousarray(padded.view(np.uint64).T)

    # ---- the coarse pass ----

    def _scope(
        self, r: _Rows, user: str | None, since: float | None, until: float | None, allowed: np.ndarray | None
    ) -> np.ndarray | None:
        """Row numbers within the scope (None: an unknown user, so nothing)."""
        key = (user, since, until)
        if allowed is None and self._last_scope is not None and self._last_scope[0] == key:
            return self._last_scope[1]
        rows = self._scope_rows(r, user, since, until, allowed)
        if allowed is None:
            self._last_scope = (key, rows)
        return rows

    def _scope_rows(
        self, r: _Rows, user: str | None, since: float | None, until: float | None, allowed: np.ndarray | None
    ) -> np.ndarray | None:
        if user is not None and user not in self._users:
            return None
        code = self._users[user] if user is not None else None
        return np.flatnonzero(_within(r.live, r.users, r.ts, r.ids, code, Scope(None, since, until, allowed)))

    def nearest(
        self,
        query: np.ndarray,
        n: int,
        *,
        user: str | None = None,
        since: float | None = None,
        until: float | None = None,
        allowed: np.ndarray | None = None,
        sentences: bool = True,
    ) -> list[tuple[int, float]]:
        """Up to n (memory id, cosine) pairs, best first, within the scope; a memory of several sentences
        scores as the best of its own cosine and its sentences' (unless `sentences` is false)."""
        with self.lock:
            r = self._rows
            rows = self._scope(r, user, since, until, allowed)
            if rows is None:
                return []
            want = max(min(n * self.oversample, self.max_candidates), self.min_candidates)
            want = max(want, int(len(rows) * self.scope_share))
            if len(rows) > max(want, self.exact_below):  # big scope: keep the Hamming-nearest for re-scoring
                most = 2 * len(rows) >= len(r.ids)  # one contiguous pass over every row beats gathering most
                distance = np.zeros(len(r.ids) if most else len(rows), np.uint16)
                for word, qword in zip(r.bits, self._pack(query)[:, 0]):
                    distance += np.bitwise_count((word if most else word[rows]) ^ qword)
                if most and len(rows) < len(r.ids):
                    distance = distance[rows]
                # the `want` nearest by a histogram of the few hundred possible distances: a cut-off, then one
                # pass, instead of argpartition over every row (measured 3x faster at 100k)
                cut = int(np.searchsorted(np.cumsum(np.bincount(distance)), want))
                keep = np.flatnonzero(distance <= cut)
                if len(keep) > 2 * want:  # a crowd of ties at the cut-off
                    keep = keep[np.argpartition(distance[keep], want)[:want]]
                rows = rows[keep]
            query = query.astype(np.float32)
            sims = _cosines(r.vecs, r.scale, rows, query)
            several = np.flatnonzero(r.sent_n[rows]) if sentences else ()
            if len(several):  # a memory scores as the best of its own vector and its sentences'
                best = self._sentences.best(r.sent_at[rows[several]], r.sent_n[rows[several]], query)
                sims[several] = np.maximum(sims[several], best)
            order = np.argsort(-sims, kind="stable")[:n]
            return list(zip(r.ids[rows[order]].tolist(), sims[order].tolist()))

    def bm25(
        self, phrases: Sequence[Sequence[str]], n: int, scope: Scope = Scope(), *, max_df: float = 1.0
    ) -> list[tuple[int, float]]:
        """Up to n (memory id, BM25) pairs, best first, of the memories within the scope that hold any phrase's
        terms: FTS5's bm25() over every memory, sign flipped (higher is better)."""
        with self.lock:
            if scope.user is not None and scope.user not in self._users:
                return []
            code = self._users[scope.user] if scope.user is not None else None
            return self.text.search(phrases, n, code, scope, max_df)

    def states_time(self, ids: Iterable[int]) -> dict[int, bool]:
        """Whether each memory held says when something happened (states_time of its text)."""
        with self.lock:
            return self.text.timed(ids)

    def neighbours(
        self,
        ids: Sequence[int] | np.ndarray,
        radius: int,
        *,
        gap: float,
        user: str | None = None,
        since: float | None = None,
        until: float | None = None,
        allowed: np.ndarray | None = None,
    ) -> Links:
        """The memories up to `radius` before and after each id in its user's bank, within the scope and at
        most `gap` seconds from it."""
        with self.lock:  # sync changes rows in place: read them all under the lock
            r = self._rows
            rows = self._scope(r, user, since, until, allowed)
            if rows is None or not len(rows) or not len(ids):
                return Links.none()
            return self._links(r, rows, ids, radius, gap, user)

    @staticmethod
    def _links(
        r: _Rows, rows: np.ndarray, ids: Sequence[int] | np.ndarray, radius: int, gap: float, user: str | None
    ) -> Links:
        wanted = np.asarray(ids, np.int64)
        row = np.minimum(np.searchsorted(r.ids, wanted), len(r.ids) - 1)
        if user is None:  # several users: order the scope by user, then id
            rows = rows[np.lexsort((r.ids[rows], r.users[rows]))]
            where = np.full(len(r.ids), -1, np.int64)  # row number -> place in the scope
            where[rows] = np.arange(len(rows))
            place = where[row]
        else:  # one user's scope is in row order already: find the places instead of mapping every row
            place = np.minimum(np.searchsorted(rows, row), len(rows) - 1)
            place = np.where(rows[place] == row, place, -1)
        at = np.where(r.ids[row] == wanted, place, -1)  # -1: gone since, or outside the scope

        def alike(i: np.ndarray, there: np.ndarray) -> np.ndarray:  # the same user's, within the gap
            other, own = rows[there], row[i]
            return (r.users[other] == r.users[own]) & (np.abs(r.ts[other] - r.ts[own]) <= gap)

        i, there, step = _beside(at, len(rows), radius, alike)
        return Links(wanted[i], r.ids[rows[there]], step)


def _beside(
    at: np.ndarray, count: int, radius: int, alike: Callable[[np.ndarray, np.ndarray], np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The places up to `radius` before and after each place in `at` (-1: none) among `count` in order, where
    alike(i, there) holds: (i, there, step) arrays, i indexing `at`, step < 0 for the places before. The one
    walk that links memories (by user and time gap) and turns (by session) to their context."""
    parts = [(np.empty(0, np.int64),) * 3]
    for distance in range(1, radius + 1):
        for step in (-distance, distance):
            there = at + step
            i = np.flatnonzero((at >= 0) & (there >= 0) & (there < count))
            i = i[alike(i, there[i])]
            parts.append((i, there[i], np.full(len(i), step, np.int64)))
    i, there, steps = (np.concatenate(column) for column in zip(*parts))
    return i, there, steps


class Links(NamedTuple):
    """Context links: neighbour[i] was said step[i] memories after memory[i] (before it when negative)."""

    memory: np.ndarray
    neighbour: np.ndarray
    step: np.ndarray

    @classmethod
    def none(cls) -> Links:
        return cls(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64))

    def triples(self) -> list[tuple[int, int, int]]:
        return list(zip(self.memory.tolist(), self.neighbour.tolist(), self.step.tolist()))


def query_words(text: str, max_terms: int = 32) -> list[str]:
    """The words a query searches for: each once, lower-cased, stopwords dropped unless nothing else is left."""
    words = list(dict.fromkeys(w.lower() for w in _WORD.findall(text)))
    return ([w for w in words if w not in STOPWORDS] or words)[:max_terms]


def fts_query(text: str, max_terms: int = 32) -> str | None:
    """Words of the query as quoted FTS5 strings joined by OR: user text can never be FTS syntax."""
    return " OR ".join(f'"{w}"' for w in query_words(text, max_terms)) or None


def asks_when(query: str) -> bool:
    """Whether a query asks for a time: "When did...", "How long...", "In which year..."."""
    return bool(_ASKS_WHEN.search(query))


def states_time(text: str) -> bool:
    """Whether a memory says when something happened: "yesterday", "last weekend", "in May", "2022"."""
    return bool(_STATES_TIME.search(text) or _MONTH.search(text))  # months by case: "may" is mostly a verb


_SPEAKER = re.compile(r"^[^\W\d][\w .'-]{0,39}: ")  # "Caroline: ...", as raw turns are stored
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+|\s+(?=\[)")  # after . ! ?, and before "[shares a photo: ...]"


def sentences(text: str, most: int = 16) -> list[str]:
    """The sentences a memory is also found by, each with the memory's speaker prefix; [] for one sentence.
    At most `most`: each costs an embedding when the memory is written."""
    prefix = match.group(0) if (match := _SPEAKER.match(text)) else ""
    parts = [p.strip() for p in _SENTENCE_BREAK.split(text[len(prefix) :])]
    parts = [p[1:-1] if p.startswith("[") and p.endswith("]") else p for p in parts if _WORD.search(p)]
    return [prefix + p for p in parts[:most]] if len(parts) > 1 else []


class TextIndex:
    """In-memory BM25 over the memories' FTS5 terms: what FTS5's bm25() ranks, at numpy speed.

    FTS5 scores every memory that holds any query word before it can sort them; with common words
    that is tens of thousands of rows at 100k memories, and made search() slower than a plain vec0
    scan (issue 15). Here each term keeps its postings (slot, count) as numpy arrays and a query is a
    few gathers and one bincount. The terms are FTS5's own (Store.terms runs its tokenizer) and the
    formula is bm25()'s: k1 = 1.2, b = 0.75, IDF = log((N - df + 0.5) / (df + 0.5)) floored at 1e-6,
    N and the mean length over every memory in the bank, whichever user's.

    A memory is one slot; an update takes a new slot and kills the old one, a delete kills it. Dead
    slots stay in the postings (skipped) until they are an eighth of all, then everything is rebuilt
    from the live slots.
    """

    K1, B = 1.2, 0.75
    LONG = 1024  # postings beyond 4n + LONG are worth a check whether they can be skipped

    def __init__(self) -> None:
        self._terms: dict[str, int] = {}
        self._postings: list[list[tuple[np.ndarray, np.ndarray]]] = []  # per term: chunks of (slots, counts)
        self._slot_of: dict[int, int] = {}  # memory id -> live slot
        self._n = 0
        self._alloc(0)
        self._live_count = 0
        self._total_length = 0.0
        self._version = 0  # counts the writes followed: a remembered scope holds until the next one
        self._last_mask: tuple[tuple[Any, ...], tuple[np.ndarray | None, int]] | None = None
        self._dead_slots: tuple[int, np.ndarray] | None = None  # (version, the dead slots then)

    def _alloc(self, capacity: int) -> None:
        self.ids = np.zeros(capacity, np.int64)
        self.length = np.zeros(capacity, np.float64)
        self.users = np.zeros(capacity, np.int32)
        self.ts = np.zeros(capacity, np.float64)
        self.live = np.zeros(capacity, bool)
        self.timed_slots = np.zeros(capacity, bool)

    def _grow(self, need: int) -> None:
        if need <= len(self.ids):
            return
        old = self._columns()
        self._alloc(max(need, len(self.ids) * 3 // 2, 64))
        for new, arr in zip(self._columns(), old):
            new[: self._n] = arr[: self._n]

    def _columns(self) -> tuple[np.ndarray, ...]:
        return (self.ids, self.length, self.users, self.ts, self.live, self.timed_slots)

    def rebuild(self, rows: Sequence[IndexRow], postings: Sequence[tuple[str, str]], code: Any) -> None:
        """Hold exactly these memories, with FTS5's postings: (term, memory ids, one per occurrence)."""
        self._version += 1
        rows = sorted(rows, key=lambda row: row[0])
        self._terms, self._postings = {}, []
        self._n = len(rows)
        self._alloc(self._n + self._n // 8 + 64)
        ids = np.asarray([r[0] for r in rows], np.int64)
        self.ids[: self._n] = ids
        self.users[: self._n] = [code(r[1]) for r in rows]
        self.ts[: self._n] = [r[2] for r in rows]
        self.live[: self._n] = True
        self.timed_slots[: self._n] = [states_time(r[4]) for r in rows]
        self._slot_of = dict(zip(ids.tolist(), range(self._n)))
        all_slots, all_counts = [], []
        for term, docs in postings:
            mids, counts = np.unique(np.asarray(docs.split(), np.int64), return_counts=True)
            at = np.minimum(np.searchsorted(ids, mids), max(self._n - 1, 0))
            held = ids[at] == mids if self._n else np.zeros(len(mids), bool)
            slots, counts = at[held].astype(np.int32), counts[held].astype(np.float32)
            self._terms[term] = len(self._postings)
            self._postings.append([(slots, counts)])
            all_slots.append(slots)
            all_counts.append(counts)
        if all_slots:
            self.length[: self._n] = np.bincount(
                np.concatenate(all_slots), weights=np.concatenate(all_counts), minlength=self._n
            )
        self._live_count = self._n
        self._total_length = float(self.length[: self._n].sum())

    def drop(self, ids: Iterable[int]) -> None:
        self._version += 1
        for mid in ids:
            slot = self._slot_of.pop(mid, None)
            if slot is not None:
                self.live[slot] = False
                self._live_count -= 1
                self._total_length -= self.length[slot]

    def add(self, rows: Sequence[IndexRow], terms: Sequence[Sequence[str]], code: Any) -> None:
        """Add memories, or replace those held (an update): each takes a new slot."""
        self._version += 1
        self.drop(row[0] for row in rows)
        self._grow(self._n + len(rows))
        for row, words in zip(rows, terms, strict=True):
            slot = self._n
            self._n += 1
            counts: dict[str, int] = {}
            for term in words:
                counts[term] = counts.get(term, 0) + 1
            for term, count in counts.items():
                if term not in self._terms:
                    self._terms[term] = len(self._postings)
                    self._postings.append([])
                chunks = self._postings[self._terms[term]]
                chunks.append((np.asarray([slot], np.int32), np.asarray([count], np.float32)))
                if len(chunks) >= 16:  # a term no search asks for would keep two tiny arrays per memory
                    self._chunk(self._terms[term])
            self.ids[slot], self.users[slot], self.ts[slot] = row[0], code(row[1]), row[2]
            self.length[slot], self.live[slot], self.timed_slots[slot] = len(words), True, states_time(row[4])
            self._slot_of[row[0]] = slot
            self._live_count += 1
            self._total_length += len(words)
        if self._n - self._live_count > self._n // 8 + 64:
            self._compact()

    def _compact(self) -> None:
        """Renumber the live slots densely and drop the dead ones from every posting list."""
        live = np.flatnonzero(self.live[: self._n])
        renumber = np.full(self._n, -1, np.int64)
        renumber[live] = np.arange(len(live))
        postings = []
        for term_id in range(len(self._postings)):
            slots, counts = self._chunk(term_id)
            keep = renumber[slots] >= 0
            postings.append([(renumber[slots[keep]].astype(np.int32), counts[keep])])
        old = self._columns()
        n = len(live)
        self._alloc(n + n // 8 + 64)
        for new, arr in zip(self._columns(), old):
            new[:n] = arr[live]
        self._n, self._postings = n, postings
        self._slot_of = dict(zip(self.ids[:n].tolist(), range(n)))

    def _chunk(self, term_id: int) -> tuple[np.ndarray, np.ndarray]:
        """A term's postings as one pair of arrays (the chunks that single adds left are merged once)."""
        chunks = self._postings[term_id]
        if len(chunks) != 1:
            merged = (
                (np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks]))
                if chunks
                else (np.empty(0, np.int32), np.empty(0, np.float32))
            )
            self._postings[term_id] = [merged]
        return self._postings[term_id][0]

    def search(
        self, phrases: Sequence[Sequence[str]], n: int, user: int | None, scope: Scope, max_df: float = 1.0
    ) -> list[tuple[int, float]]:
        """bm25() over every live slot; then the slots of user (a code) within the scope's window and ids.

        Three ways to the same ranking, by cost. A small scope (one user of many) looks its slots up in each
        term's postings. Otherwise the terms with short posting lists are scored first (MaxScore): when the n-th
        best of those scores is above the most that the long lists' terms together could add, a memory in none
        of the short lists cannot reach the top n, and the long lists (common words) are only looked up for the
        memories already found. Failing that, every posting is scored."""
        if not self._live_count or n < 1:
            return []
        total = self._live_count
        phrased = [f for phrase in phrases if (f := self._phrase(phrase)) is not None]
        if max_df < 1.0:
            phrased = [f for f in phrased if f[2] <= max_df * total] or phrased
        if not phrased:
            return []
        phrased.sort(key=lambda f: f[2])  # rarest first
        idf = [max(float(np.log((total - df + 0.5) / (df + 0.5))), 1e-6) for _, _, df in phrased]
        found = [(slots, counts) for slots, counts, _ in phrased]
        # the most a term can add to one memory's score: tf / (tf + norm) < 1
        reach = np.cumsum([i * (self.K1 + 1) for i in idf][::-1])[::-1].tolist() + [0.0]
        inside, size = self._scope_mask(user, scope)
        if inside is not None and size * len(found) * 8 < sum(len(s) for s, _ in found):
            scoped = np.flatnonzero(inside)
            return self._best(scoped, self._lookup(scoped, found, idf, 0), n)
        if inside is None and self._live_count < self._n:  # dead slots are still in the postings
            inside = self.live[: self._n]
        taken = 0  # postings in found[:j]
        for j in range(1, len(found)):
            taken += len(found[j - 1][0])
            if taken > self._n // 4:  # scoring every posting costs about as much
                break
            if len(found[j][0]) <= 4 * n + self.LONG or reach[0] - reach[j] <= reach[j]:
                continue  # a short list ahead is taken too; or found[:j] cannot outscore the rest yet
            held, where = np.unique(np.concatenate([s for s, _ in found[:j]]), return_inverse=True)
            partial = np.bincount(where, weights=self._weights_of(found[:j], idf))
            if inside is not None:
                keep = inside[held]
                held, partial = held[keep], partial[keep]
            if np.count_nonzero(partial > reach[j]) >= n:  # the n-th best is above all the rest could add
                return self._best(held, partial + self._lookup(held, found, idf, j), n)
        scores = np.bincount(
            np.concatenate([s for s, _ in found]), weights=self._weights_of(found, idf), minlength=self._n
        )
        held = np.flatnonzero(scores)
        held = held if inside is None else held[inside[held]]
        return self._best(held, scores[held], n)

    def _scope_mask(self, user: int | None, scope: Scope) -> tuple[np.ndarray | None, int]:
        """Which slots are live and within the scope, and how many: (None, count) when that is every live slot.
        The last one is remembered until the next write (a user's searches come in runs)."""
        if user is None and scope.since is None and scope.until is None and scope.allowed is None:
            return None, self._live_count
        key = (user, scope.since, scope.until, self._version)
        if scope.allowed is None and self._last_mask is not None and self._last_mask[0] == key:
            return self._last_mask[1]
        n = self._n
        mask = _within(self.live[:n], self.users[:n], self.ts[:n], self.ids[:n], user, scope)
        count = int(np.count_nonzero(mask))
        out = (None if count == self._live_count else mask, count)
        if scope.allowed is None:
            self._last_mask = (key, out)
        return out

    def _weights(self, slots: np.ndarray, counts: np.ndarray, idf: float) -> np.ndarray:
        """bm25()'s term weight for each (slot, count) posting."""
        norm = self.K1 * (1 - self.B + self.B * self.length[slots] * (self._live_count / self._total_length))
        return idf * counts * (self.K1 + 1) / (counts + norm)

    def _weights_of(self, found: Sequence[tuple[np.ndarray, np.ndarray]], idf: Sequence[float]) -> np.ndarray:
        return np.concatenate([self._weights(slots, counts, i) for (slots, counts), i in zip(found, idf)])

    def _lookup(
        self, slots: np.ndarray, found: Sequence[tuple[np.ndarray, np.ndarray]], idf: Sequence[float], start: int
    ) -> np.ndarray:
        """The BM25 that terms found[start:] add to each of these (ascending) slots, by binary search in their
        postings, which are in slot order."""
        out = np.zeros(len(slots), np.float64)
        for (posted, counts), term_idf in zip(found[start:], idf[start:]):
            at = np.minimum(np.searchsorted(posted, slots), len(posted) - 1)
            hit = posted[at] == slots
            out[hit] += self._weights(slots[hit], counts[at[hit]], term_idf)
        return out

    def _best(self, slots: np.ndarray, scores: np.ndarray, n: int) -> list[tuple[int, float]]:
        """The n best (memory id, score) of these slots that score above 0, best first; ties by id, as FTS5
        breaks them by rowid."""
        keep = scores > 0  # every weight is > 0 (IDF is floored): a slot scores exactly when it holds a phrase
        slots, scores = slots[keep], scores[keep]
        if len(slots) > n:
            top = np.argpartition(-scores, n - 1)[:n]
            slots, scores = slots[top], scores[top]
        ids = self.ids[slots]
        order = np.lexsort((ids, -scores))
        return list(zip(ids[order].tolist(), scores[order].tolist()))

    def _phrase(self, terms: Sequence[str]) -> tuple[np.ndarray, np.ndarray, int] | None:
        """The slots holding a phrase, how often, and how many of them are live (its document frequency). A word
        that FTS5 splits ("a_b") is a phrase of several terms; without positions, a slot holding all of them
        counts, as often as its rarest. Dead slots stay in (a search drops them from what it found): filtering
        the long lists of common words after every delete cost more than the rest of a search."""
        slots: np.ndarray | None = None
        counts: np.ndarray | None = None
        for term in terms:
            term_id = self._terms.get(term)
            if term_id is None:
                return None
            s, c = self._chunk(term_id)
            if slots is None or counts is None:
                slots, counts = s, c
            else:
                both, here, there = np.intersect1d(slots, s, assume_unique=True, return_indices=True)
                slots, counts = both.astype(np.int32), np.minimum(counts[here], c[there])
        if slots is None or counts is None:
            return None
        df = len(slots) - self._dead_among(slots)
        return (slots, counts, df) if df else None

    def _dead_among(self, slots: np.ndarray) -> int:
        """How many of these (ascending) slots are dead."""
        if self._live_count == self._n:
            return 0
        if self._dead_slots is None or self._dead_slots[0] != self._version:
            self._dead_slots = (self._version, np.flatnonzero(~self.live[: self._n]))
        dead = self._dead_slots[1]
        if len(dead) * 16 > len(slots):  # as many dead as the list is long: count them in it
            return len(slots) - int(np.count_nonzero(self.live[slots]))
        at = np.minimum(np.searchsorted(slots, dead), len(slots) - 1)
        return int(np.count_nonzero(slots[at] == dead))

    def timed(self, ids: Iterable[int]) -> dict[int, bool]:
        return {mid: bool(self.timed_slots[slot]) for mid in ids if (slot := self._slot_of.get(mid)) is not None}


class Fused(NamedTuple):
    """Fused scores: each memory once, in the order the lists first held it (the order that breaks ties)."""

    ids: np.ndarray  # int64
    scores: np.ndarray  # float64

    @classmethod
    def of(cls, ids: np.ndarray, values: np.ndarray) -> Fused:
        """The sum of the values of each id."""
        unique, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
        order = np.argsort(first, kind="stable")
        return cls(unique[order], np.bincount(inverse, weights=values, minlength=len(unique))[order])

    def top(self, k: int) -> list[tuple[int, float]]:
        """The k best (id, score), best first; ties in the order held."""
        order = np.argsort(-self.scores, kind="stable")[:k]
        return list(zip(self.ids[order].tolist(), self.scores[order].tolist()))

    def as_dict(self) -> dict[int, float]:
        return dict(zip(self.ids.tolist(), self.scores.tolist()))


def fuse_scores(*lists: tuple[Sequence[tuple[int, float]], float, float | None]) -> Fused:
    """Score fusion of (list of (id, score) best first, weight, floor) triples.

    A memory a list does not hold sits at the list's floor: its last score when the list was cut
    at its depth (None), or a natural zero such as BM25's for a memory matching no word. Scores
    are shifted so the floor is 0 and divided by their root mean square: cosines and BM25 become
    comparable, a top hit far above the rest of its list keeps that lead, and a list of near-equal
    scores (a word in every memory) cannot blow up as it would divided by its spread.
    """
    ids, values = [], []
    for ranked, weight, floor in lists:
        if not ranked:
            continue
        ids.append(np.fromiter((m for m, _ in ranked), np.int64, len(ranked)))
        shifted = np.fromiter((v for _, v in ranked), np.float64, len(ranked))
        shifted -= shifted.min() if floor is None else floor
        scale = float(np.sqrt(np.mean(shifted**2))) or 1.0
        values.append(shifted * (weight / scale))
    if not ids:
        return Fused(np.empty(0, np.int64), np.empty(0, np.float64))
    return Fused.of(np.concatenate(ids), np.concatenate(values))


def spread(fused: Fused, links: Links, tuning: Tuning) -> Fused:
    """Give each memory `tuning.context[d-1]` of the fused score of each linked memory d steps away
    (`tuning.context_after`'s, when said after it)."""
    if not len(links.memory):
        return fused
    sorter = np.argsort(fused.ids)
    given = fused.scores[sorter[np.searchsorted(fused.ids, links.memory, sorter=sorter)]]
    after = tuning.context if tuning.context_after is None else tuning.context_after
    table = np.zeros((2, tuning.radius + 1))  # [said before?, distance]
    table[0, 1 : len(after) + 1], table[1, 1 : len(tuning.context) + 1] = after, tuning.context
    shared = table[(links.step < 0).astype(np.int64), np.abs(links.step)] * given
    return Fused.of(np.concatenate([fused.ids, links.neighbour]), np.concatenate([fused.scores, shared]))


def search(
    store: Store,
    index: VectorIndex,
    query_vector: np.ndarray | None,
    query: str,
    *,
    k: int,
    user: str | None,
    since: float | None,
    until: float | None,
    filters: dict[str, Any] | None,
    mode: Mode = "hybrid",
    tuning: Tuning = DEFAULT_TUNING,
) -> list[Hit]:
    """Top-k hits; each list is max(k, tuning.depth) long before fusion, and context only joins hybrid search."""
    depth = max(k, tuning.depth)
    vector: list[tuple[int, float]] = []
    text: list[tuple[int, float]] = []
    allowed = None
    if filters:  # every list and the context links honour filters through this id set
        allowed = np.asarray(store.memory_ids(user=user, filters=filters), np.int64)
    index.sync(store)
    if mode in ("hybrid", "vector") and query_vector is not None:
        vector = index.nearest(
            query_vector, depth, user=user, since=since, until=until, allowed=allowed, sentences=tuning.sentences
        )
    if mode in ("hybrid", "text") and (words := query_words(query)):
        text = index.bm25(store.terms(words), depth, Scope(user, since, until, allowed), max_df=tuning.max_df)
    # BM25 lists shorter than their depth hold every matching memory: the rest score 0
    fused = fuse_scores((vector, 1.0, None), (text, tuning.text_weight, 0.0 if len(text) < depth else None))
    if mode == "hybrid" and tuning.time_boost and len(fused.ids) and asks_when(query):
        timed = index.states_time(fused.ids.tolist())
        fused.scores[[timed.get(m, False) for m in fused.ids.tolist()]] += tuning.time_boost
    if mode == "hybrid" and tuning.radius and len(fused.ids):
        links = index.neighbours(
            fused.ids,
            tuning.radius,
            gap=tuning.context_gap,
            user=user,
            since=since,
            until=until,
            allowed=allowed,
        )
        fused = spread(fused, links, tuning)
    return top_hits(store, fused, vector, text, k)


def top_hits(
    store: Store,
    fused: Fused,
    vector: Sequence[tuple[int, float]],
    text: Sequence[tuple[int, float]],
    k: int,
) -> list[Hit]:
    """The k best of `fused` as hits, with each pass's own score beside the fused one."""
    score = dict(fused.top(k))  # in rank order
    top = list(score)
    items = store.get_many(top)
    vscore, tscore = dict(vector), dict(text)
    return [
        Hit(memory=items[m], score=score[m], vector_score=vscore.get(m), text_score=tscore.get(m))
        for m in top
        if m in items  # deleted between the two reads
    ]


# ---- raw turns: what the Memory Manager missed is still there for `ask` ----


class _Turns:
    """One user's turn vectors, in id order, with spare rows for the next turns; and the sentence vectors of
    turns of several sentences, in an arena the turns point into (turns are never updated, so it only grows)."""

    def __init__(self, dim: int) -> None:
        self.state = (0, 0)  # (count, last id) of the user's turns in the snapshot last read
        self.n = 0
        self.ids = np.empty(0, np.int64)
        self.sessions = np.empty(0, object)
        self.vecs = np.empty((0, dim), np.float32)
        self.sent_at = np.empty(0, np.int64)
        self.sent_n = np.empty(0, np.int32)
        self.sentences = np.empty((0, dim), np.float32)
        self.used = 0

    def extend(self, count: int, fresh: Sequence[tuple[int, str | None, bytes | None, bytes | None]]) -> None:
        self.state = (count, fresh[-1][0] if fresh else self.state[1])
        fresh = [row for row in fresh if row[2] is not None]
        start, end = self.n, self.n + len(fresh)
        dim = self.vecs.shape[1]
        if end > len(self.ids):  # grown by half: each vector is copied O(1) times on average
            size = max(end, len(self.ids) * 3 // 2, 64)
            self.ids, self.sessions, self.vecs = (
                np.resize(self.ids, size),
                np.resize(self.sessions, size),
                np.resize(self.vecs, (size, dim)),
            )
            self.sent_at, self.sent_n = np.resize(self.sent_at, size), np.resize(self.sent_n, size)
        self.ids[start:end] = [row[0] for row in fresh]
        self.sessions[start:end] = [row[1] for row in fresh]
        vecs = np.frombuffer(b"".join(row[2] or b"" for row in fresh), np.float32)
        self.vecs[start:end] = vecs.reshape(end - start, dim)
        counts = np.asarray([len(row[3]) // (4 * dim) if row[3] else 0 for row in fresh], np.int64)
        total = int(counts.sum())
        if self.used + total > len(self.sentences):
            self.sentences = np.resize(self.sentences, (max(self.used + total, len(self.sentences) * 3 // 2, 64), dim))
        self.sentences[self.used : self.used + total] = np.frombuffer(
            b"".join(row[3] or b"" for row in fresh), np.float32
        ).reshape(total, dim)
        self.sent_at[start:end], self.sent_n[start:end] = self.used + np.cumsum(counts) - counts, counts
        self.used += total
        self.n = end


class TurnRows(NamedTuple):
    """A user's turns that have a vector, as TurnIndex holds them: views that later appends do not change."""

    ids: np.ndarray
    sessions: np.ndarray
    vecs: np.ndarray  # float32 unit vectors
    sent_at: np.ndarray  # where each turn's sentence vectors start in `sentences`
    sent_n: np.ndarray  # how many it has (0: a turn of one sentence)
    sentences: np.ndarray

    def cosines(self, query: np.ndarray) -> np.ndarray:
        """Each turn's cosine: the best of its own vector's and its sentences'."""
        sims = self.vecs @ query
        several = np.flatnonzero(self.sent_n)
        if len(several):
            starts, counts = self.sent_at[several], self.sent_n[several]
            by_sentence = self.sentences[_ranges(starts, counts)] @ query
            sims[several] = np.maximum(sims[several], np.maximum.reduceat(by_sentence, np.cumsum(counts) - counts))
        return sims


class TurnIndex:
    """Each user's turn vectors in memory, in id order. Turns are append-only (only a user's erasure removes
    them), so keeping up means appending what is past the last id seen, in place; a count that no longer adds
    up means turns were erased, and the user's copy is read again."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.lock = threading.Lock()
        self._users: dict[str, _Turns] = {}

    def rows(self, store: Store, user: str) -> TurnRows:
        """The user's turns that have a vector."""
        state = store.turn_state(user)
        with self.lock:
            held = self._users.get(user)
            if held is None or held.state != state:
                count, fresh = store.turns_past(user, held.state[1] if held is not None else 0)
                if held is not None and count != held.state[0] + len(fresh):  # some it holds are gone
                    count, fresh = store.turns_past(user, 0)
                    held = None
                if held is None:
                    held = self._users[user] = _Turns(self.dim)
                held.extend(count, fresh)
            n = held.n  # views: later appends only write past them
            return TurnRows(
                held.ids[:n],
                held.sessions[:n],
                held.vecs[:n],
                held.sent_at[:n],
                held.sent_n[:n],
                held.sentences[: held.used],
            )


def search_turns(
    store: Store,
    index: TurnIndex,
    query_vector: np.ndarray | None,
    query: str,
    *,
    k: int,
    user: str,
    tuning: Tuning = DEFAULT_TUNING,
) -> list[tuple[int, float]]:
    """Top-k (turn id, score) by the fusion memories use: vectors (a turn of several sentences scores as the
    best of them and itself) and BM25, a time boost for "when" questions, and a share of the score for the
    turns said just before and after in the same session."""
    depth = max(k, tuning.depth)
    turns = index.rows(store, user)
    ids, sessions = turns.ids, turns.sessions
    vector: list[tuple[int, float]] = []
    if query_vector is not None and len(ids):
        query_vector = query_vector.astype(np.float32)
        sims = turns.cosines(query_vector) if tuning.sentences else turns.vecs @ query_vector
        top = np.argsort(-sims, kind="stable")[:depth]
        vector = [(int(ids[i]), float(sims[i])) for i in top]
    text: list[tuple[int, float]] = []
    if match := fts_query(query):
        text = [(tid, -bm25) for tid, bm25 in store.turns_fts(match, limit=depth, user=user)]
    fused = fuse_scores((vector, 1.0, None), (text, tuning.text_weight, 0.0 if len(text) < depth else None))
    if tuning.time_boost and len(fused.ids) and asks_when(query):
        said = store.get_turns(fused.ids.tolist())
        fused.scores[[t in said and states_time(said[t].text) for t in fused.ids.tolist()]] += tuning.time_boost
    if tuning.radius and len(fused.ids) and len(ids):
        # a turn's neighbours are the turns beside it in id order, in the same session
        at = np.minimum(np.searchsorted(ids, fused.ids), len(ids) - 1)
        at = at[ids[at] == fused.ids]
        i, there, step = _beside(at, len(ids), tuning.radius, lambda i, there: sessions[at[i]] == sessions[there])
        fused = spread(fused, Links(ids[at[i]], ids[there], step), tuning)
    return fused.top(k)
