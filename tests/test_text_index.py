"""search()'s BM25 list comes from an in-memory index (issue 15); FTS5's own bm25() is the reference it must equal.

A real bank: memories written through the store, then updated, deleted and added again so the index follows
the history (including a compaction of its dead slots), searched with and without a user, a time window
and metadata filters.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from memr1.retrieval import Scope, VectorIndex, fts_query, query_words
from memr1.store import Change

WORDS = (
    "the quick brown fox jumps over lazy dogs running ran runs adopted adopting painting painted Caroline "
    "Melanie support group yesterday café naïve foo_bar x2 don't Ünïcode 2023 pottery class hiking"
).split()
DIM = 32  # the tiny embedder's, which the bank is bound to


def vector(rng: random.Random) -> bytes:
    return np.asarray([rng.random() for _ in range(DIM)], np.float32).tobytes()


def text(rng: random.Random, most: int = 20) -> str:
    return " ".join(rng.choices(WORDS, k=rng.randint(1, most)))


def fts5(store, query: str, n: int, **scope) -> dict[int, float]:
    scope = {"user": None, "since": None, "until": None, "filters": None} | scope
    return {mid: -bm25 for mid, bm25 in store.fts(fts_query(query), limit=n, **scope)}


def same(got: list[tuple[int, float]], want: dict[int, float]) -> None:
    """Equal scores for equal ids, and the same set but for ties at the cut-off."""
    scores = [s for _, s in got]
    assert scores == sorted(scores, reverse=True)
    assert len(got) == len(want)
    for mid, score in got:
        if mid in want:
            assert score == pytest.approx(want[mid], rel=1e-6, abs=1e-9)
        else:  # a tie with one FTS5 kept at the cut-off
            assert score == pytest.approx(min(want.values()), rel=1e-6, abs=1e-9)


def test_in_memory_bm25_equals_fts5_through_writes(mem):
    rng = random.Random(0)
    store = mem.store
    store.apply(
        [
            Change("ADD", f"u{i % 3}", text=text(rng), vector=vector(rng), at_ts=float(i), metadata={"i": i % 2})
            for i in range(1500)
        ],
        actor="test",
    )
    index = VectorIndex(DIM)

    def check() -> None:
        index.sync(store)
        for _ in range(40):
            query = text(rng, 6)
            phrases = store.terms(query_words(query))
            for n in (10, 200):
                same(index.bm25(phrases, n), fts5(store, query, n))
                same(index.bm25(phrases, n, Scope(user="u1")), fts5(store, query, n, user="u1"))
                same(
                    index.bm25(phrases, n, Scope(since=300.0, until=900.0)),
                    fts5(store, query, n, since=300.0, until=900.0),
                )
            allowed = np.asarray(store.memory_ids(user="u2", filters={"i": 1}), np.int64)
            same(
                index.bm25(phrases, 50, Scope(user="u2", allowed=allowed)),
                fts5(store, query, 50, user="u2", filters={"i": 1}),
            )

    check()
    assert index.rebuilds == 1
    # updates and deletes past the index: it follows the history, and compacts once an eighth of it is dead
    ids = store.memory_ids()
    store.apply(
        [Change("UPDATE", f"u{(m - 1) % 3}", memory_id=m, text=text(rng, 8), vector=vector(rng)) for m in ids[:90]],
        actor="t",
    )
    store.apply([Change("DELETE", f"u{(m - 1) % 3}", memory_id=m) for m in ids[100:330]], actor="t")
    store.apply([Change("ADD", "u1", text=text(rng), vector=vector(rng), at_ts=5.0) for _ in range(40)], actor="t")
    check()
    assert index.rebuilds == 1  # caught up from the history, not reloaded


def test_an_unknown_word_or_user_finds_nothing(mem):
    rng = random.Random(1)
    mem.store.apply([Change("ADD", "u0", text=text(rng), vector=vector(rng), at_ts=0.0) for _ in range(20)], actor="t")
    index = VectorIndex(DIM)
    index.sync(mem.store)
    assert index.bm25(mem.store.terms(["zzzunheard"]), 10) == []
    assert index.bm25(mem.store.terms(["fox"]), 10, Scope(user="nobody")) == []


def test_terms_are_fts5s_own(mem):
    """The porter stemmer and diacritics folding of the bank's FTS5 tables, word by word."""
    assert mem.store.terms(["Running", "café", "foo_bar", ""]) == [["run"], ["cafe"], ["bar", "foo"], []]


def test_the_shortcuts_rank_as_fts5_does(mem, monkeypatch):
    """Words drawn as in natural text (Zipf): a query's common words have long posting lists, which search skips
    once its rare words settle the top n, and one user of many is scored by looking up that user's memories.
    Both must give FTS5's ranking, and both must have been taken."""
    from memr1.retrieval import TextIndex

    rng = random.Random(2)
    vocabulary = [f"w{i}x" for i in range(400)]
    weights = [1 / (rank + 1) for rank in range(len(vocabulary))]

    def zipf_text(k: int) -> str:
        return " ".join(rng.choices(vocabulary, weights, k=k))

    mem.store.apply(
        [Change("ADD", f"u{i % 30}", text=zipf_text(12), vector=vector(rng), at_ts=float(i)) for i in range(3000)],
        actor="test",
    )
    index = VectorIndex(DIM)
    index.sync(mem.store)
    taken: list[int] = []
    lookup = TextIndex._lookup
    monkeypatch.setattr(TextIndex, "_lookup", lambda self, *a: taken.append(a[-1]) or lookup(self, *a))
    monkeypatch.setattr(TextIndex, "LONG", 300)  # lists of middling words count as long too, where bounds are tight

    def check() -> None:
        taken.clear()
        for i in range(80):
            if i % 2:  # rare words and the commonest
                query = f"{zipf_text(2)} {rng.choice(vocabulary[100:])} {vocabulary[0]} {vocabulary[1]}"
            else:  # middling words only, whose bounds are close to the scores
                query = " ".join(rng.sample(vocabulary[2:40], 4))
            phrases = mem.store.terms(query_words(query))
            for n in (10, 60):
                same(index.bm25(phrases, n), fts5(mem.store, query, n))
                same(index.bm25(phrases, n, Scope(user="u7")), fts5(mem.store, query, n, user="u7"))
        assert taken.count(0) >= 40  # one user's memories looked up
        assert sum(start > 0 for start in taken) >= 40  # common words' lists skipped

    check()
    # dead slots (fewer than an eighth, so not compacted away) stay in the postings: searches must skip them,
    # and count only live memories in each word's document frequency
    ids = mem.store.memory_ids()
    mem.store.apply([Change("DELETE", f"u{(m - 1) % 30}", memory_id=m) for m in ids[::20]], actor="t")
    mem.store.apply(
        [Change("UPDATE", f"u{(m - 1) % 30}", memory_id=m, text=zipf_text(12), vector=vector(rng)) for m in ids[7::25]],
        actor="t",
    )
    index.sync(mem.store)
    assert 0 < index.text._n - index.text._live_count < index.text._n // 8
    check()
