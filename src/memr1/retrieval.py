"""Hybrid search: a vector list and a BM25 list, fused by reciprocal rank.

The vectors live in sqlite-vec (vec0, cosine), the durable source of truth. Search runs
on an in-memory copy of them: sign bits (one per dimension, after centring) for a coarse
Hamming pass, and float16 values to re-score the candidates. A plain vec0 scan reads
every float (≈45-60 ms for 100k×384 on 2 cores), vec0's top-k grows with k and its
lookups by id scan too, so this is how search stays in single-digit milliseconds
(benchmarks/retrieval_speed.py).

The in-memory copy follows the bank through the append-only history table: every write
adds history rows, so replaying the rows past the last one seen keeps it exact even when
other processes write.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .schema import Hit
from .store import Store

RRF_K = 60  # the constant from Cormack et al.; robust across collections
Mode = Literal["hybrid", "vector", "text"]
_WORD = re.compile(r"\w+", re.UNICODE)
# Words that match most memories cost BM25 time and add no signal; dropped unless nothing else is left.
STOPWORDS = frozenset(
    "a an and are as at be been but by can could did do does for from had has have he her hers him his how i if "
    "in into is it its me my of on or our she so than that the their them then there these they this to was we "
    "were what when where which who whom why will with would you your".split()
)


@dataclass
class _Rows:
    ids: np.ndarray  # int64 memory ids
    bits: np.ndarray  # (words, n) uint64 sign bits, column-major so each XOR/popcount is one contiguous pass
    vecs: np.ndarray  # float16 vectors for re-scoring
    users: np.ndarray  # int32 user codes
    ts: np.ndarray  # float64 at_ts


class VectorIndex:
    """In-memory copy of one bank's vectors: sign bits for the coarse pass, float16 to re-score."""

    def __init__(self, dim: int, *, exact_below: int = 4096, oversample: int = 20, min_candidates: int = 2000):
        self.dim = dim
        self.exact_below = exact_below  # scopes this small skip the bit pass entirely
        self.oversample = oversample
        self.min_candidates = min_candidates
        self.lock = threading.Lock()
        self._seen = -1  # last history id applied
        self._center = np.zeros(dim, dtype=np.float32)
        self._users: dict[str, int] = {}
        self._rows = _Rows(np.empty(0, np.int64), np.empty(((dim + 63) // 64, 0), np.uint64),
                           np.empty((0, dim), np.float16), np.empty(0, np.int32), np.empty(0, np.float64))  # fmt: skip

    def __len__(self) -> int:
        return len(self._rows.ids)

    # ---- keeping up with the bank ----

    def sync(self, store: Store) -> None:
        with self.lock, store.read() as conn:
            head = conn.execute("SELECT coalesce(max(id), 0) FROM history").fetchone()[0]
            if head == self._seen:
                return
            if self._seen < 0 or head < self._seen or head - self._seen > max(2048, len(self) // 4):
                self._rebuild(conn)
            else:
                changed = [r[0] for r in conn.execute(
                    "SELECT DISTINCT memory_id FROM history WHERE id > ? AND id <= ?", (self._seen, head))]  # fmt: skip
                self._drop(changed)
                marks = ",".join("?" * len(changed))
                rows = conn.execute(
                    f"SELECT m.id, m.user_id, m.at_ts, v.embedding FROM memories m "
                    f"JOIN vec_memories v ON v.memory_id = m.id WHERE m.id IN ({marks})",
                    changed,
                ).fetchall()
                self._append(rows)
            self._seen = head

    def _rebuild(self, conn: Any) -> None:
        meta = {mid: (user, ts) for mid, user, ts in conn.execute("SELECT id, user_id, at_ts FROM memories")}
        ids, vecs = [], []
        for mid, blob in conn.execute("SELECT memory_id, embedding FROM vec_memories"):
            if mid in meta:
                ids.append(mid)
                vecs.append(blob)
        matrix = np.frombuffer(b"".join(vecs), dtype=np.float32).reshape(len(ids), self.dim)
        # Centring first makes sign bits informative: embeddings share a large common direction.
        self._center = matrix.mean(axis=0) if len(ids) >= 64 else np.zeros(self.dim, np.float32)
        self._users = {}
        users = [self._code(meta[mid][0]) for mid in ids]
        self._rows = _Rows(
            np.asarray(ids, np.int64), self._pack(matrix), matrix.astype(np.float16), np.asarray(users, np.int32),
            np.asarray([meta[mid][1] for mid in ids], np.float64),
        )  # fmt: skip

    def _drop(self, ids: Sequence[int]) -> None:
        keep = ~np.isin(self._rows.ids, np.asarray(ids, np.int64))
        r = self._rows
        self._rows = _Rows(r.ids[keep], r.bits[:, keep], r.vecs[keep], r.users[keep], r.ts[keep])

    def _append(self, rows: Sequence[tuple[int, str, float, bytes]]) -> None:
        if not rows:
            return
        matrix = np.frombuffer(b"".join(r[3] for r in rows), dtype=np.float32).reshape(len(rows), self.dim)
        r = self._rows
        self._rows = _Rows(
            np.concatenate([r.ids, np.asarray([x[0] for x in rows], np.int64)]),
            np.concatenate([r.bits, self._pack(matrix)], axis=1),
            np.concatenate([r.vecs, matrix.astype(np.float16)]),
            np.concatenate([r.users, np.asarray([self._code(x[1]) for x in rows], np.int32)]),
            np.concatenate([r.ts, np.asarray([x[2] for x in rows], np.float64)]),
        )

    def _code(self, user: str) -> int:
        return self._users.setdefault(user, len(self._users))

    def _pack(self, matrix: np.ndarray) -> np.ndarray:
        packed = np.packbits(np.atleast_2d(matrix) - self._center > 0, axis=1)
        padded = np.zeros((len(packed), (self.dim + 63) // 64 * 8), np.uint8)
        padded[:, : packed.shape[1]] = packed
        return np.ascontiguousarray(padded.view(np.uint64).T)

    # ---- the coarse pass ----

    def nearest(self, query: np.ndarray, n: int, *, user: str | None = None, since: float | None = None,
                until: float | None = None, allowed: np.ndarray | None = None) -> list[tuple[int, float]]:  # fmt: skip
        """Up to n (memory id, cosine) pairs, best first, within the scope."""
        with self.lock:
            r = self._rows
            mask = np.ones(len(r.ids), dtype=bool)
            if user is not None:
                if user not in self._users:
                    return []
                mask &= r.users == self._users[user]
            if since is not None:
                mask &= r.ts >= since
            if until is not None:
                mask &= r.ts <= until
            if allowed is not None:
                mask &= np.isin(r.ids, allowed)
            rows = np.flatnonzero(mask)
            want = max(n * self.oversample, self.min_candidates)
            if len(rows) > max(want, self.exact_below):  # big scope: keep the Hamming-nearest for re-scoring
                whole = len(rows) == len(r.ids)
                distance = np.zeros(len(rows), np.int32)
                for word, qword in zip(r.bits, self._pack(query)[:, 0]):
                    distance += np.bitwise_count((word if whole else word[rows]) ^ qword)
                rows = rows[np.argpartition(distance, want)[:want]]
            sims = r.vecs[rows].astype(np.float32) @ query.astype(np.float32)
            order = np.argsort(-sims, kind="stable")[:n]
            return [(int(r.ids[rows[i]]), float(sims[i])) for i in order]


def fts_query(text: str, max_terms: int = 32) -> str | None:
    """Words of the query as quoted FTS5 strings joined by OR: user text can never be FTS syntax."""
    words = list(dict.fromkeys(w.lower() for w in _WORD.findall(text)))
    words = ([w for w in words if w not in STOPWORDS] or words)[:max_terms]
    return " OR ".join(f'"{w}"' for w in words) or None


def fuse(*ranked: Sequence[int], k: int = RRF_K) -> dict[int, float]:
    scores: dict[int, float] = {}
    for ranking in ranked:
        for rank, mid in enumerate(ranking):
            scores[mid] = scores.get(mid, 0.0) + 1.0 / (k + rank + 1)
    return scores


def search(store: Store, index: VectorIndex, query_vector: np.ndarray | None, query: str, *, k: int,
           user: str | None, since: float | None, until: float | None, filters: dict[str, Any] | None,
           mode: Mode = "hybrid", depth: int | None = None) -> list[Hit]:  # fmt: skip
    """Top-k hits; each list is `depth` long (default max(k, 50)) before fusion."""
    depth = depth or max(k, 50)
    vector: list[tuple[int, float]] = []
    text: list[tuple[int, float]] = []
    if mode in ("hybrid", "vector") and query_vector is not None:
        allowed = None
        if filters:
            where, params = store.where(user=user, filters=filters)
            allowed = np.asarray([r[0] for r in store.query(f"SELECT id FROM memories {where}", params)], np.int64)
        index.sync(store)
        vector = index.nearest(query_vector, depth, user=user, since=since, until=until, allowed=allowed)
    if mode in ("hybrid", "text") and (match := fts_query(query)):
        text = [(mid, -bm25) for mid, bm25 in store.fts(match, limit=depth, user=user, since=since,
                                                          until=until, filters=filters)]  # fmt: skip
    fused = fuse([m for m, _ in vector], [m for m, _ in text])
    top = sorted(fused, key=lambda m: -fused[m])[:k]
    items = store.get_many(top)
    vscore, tscore = dict(vector), dict(text)
    return [
        Hit(memory=items[m], score=fused[m], vector_score=vscore.get(m), text_score=tscore.get(m))
        for m in top
        if m in items  # deleted between the two reads
    ]
