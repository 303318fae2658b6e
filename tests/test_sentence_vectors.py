"""A memory of several sentences is also found by its best sentence (issue 15, recall).

Every way a memory is written (add, update, the Memory Manager's apply, import) stores a vector per sentence
beside the memory's own, in the same transaction; deletes and erasure take them away; the in-memory index
follows all of it, and an old bank gains the table by migration.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from memr1 import Memory, retrieval
from memr1.errors import InvalidInput
from memr1.prompts import ManagerPlan, PlannedOp
from memr1.retrieval import VectorIndex, sentences
from memr1.schema import Turn
from memr1.store import _MIGRATIONS, Change, _statements

from .test_retrieval import WordsEmbedder

TWO = "river weather rain garden book. chess club"  # its second sentence is all a chess question asks


def sentence_counts(mem: Memory, table: str = "sentence_vectors") -> dict[int, int]:
    dim = mem.embedder.dim
    rows = mem.store.query(f"SELECT * FROM {table}")
    return {key: len(blob) // (4 * dim) for key, blob in rows}


def brute_force(mem: Memory, query: np.ndarray) -> list[tuple[int, float]]:
    """Every memory's best cosine, of its own vector's and its sentences', from the bank itself."""
    dim, out = mem.embedder.dim, []
    for mid, _, _, vector, _, split in mem.store.vectors_past(-1, reload_over=0).rows:
        vecs = np.frombuffer(vector + (split or b""), np.float32).reshape(-1, dim)
        out.append((mid, float((vecs @ query / np.linalg.norm(vecs, axis=1) / np.linalg.norm(query)).max())))
    return sorted(out, key=lambda x: -x[1])


def test_sentences_of_a_memory() -> None:
    assert sentences("Caroline: I went hiking. My son loves it! [shares a photo: a trail]") == [
        "Caroline: I went hiking.",
        "Caroline: My son loves it!",
        "Caroline: shares a photo: a trail",
    ]
    assert sentences("Caroline adopted a dog named Buddy.") == []  # one sentence: its own vector is enough
    assert sentences("Wow! ...") == []  # a "sentence" without a word is none
    assert len(sentences(". ".join(f"Fact {i}" for i in range(40)))) == 16  # each costs an embedding


def test_a_memory_is_found_by_its_best_sentence(bank: Path) -> None:
    with Memory(bank, embedder=WordsEmbedder()) as mem:
        two = mem.add(TWO, user="u")
        one = mem.add("chess club purple sneakers nice", user="u")  # closer to the question as a whole
        hits = mem.search("chess club", user="u", mode="vector")
        assert [h.memory.id for h in hits] == [two.id, one.id]
        assert hits[0].vector_score == pytest.approx(1.0, abs=1e-4)  # the sentence's cosine
        mem.update(two.id, "river weather rain garden book chess club")  # one sentence now: scored as a whole
        assert [h.memory.id for h in mem.search("chess club", user="u", mode="vector")] == [one.id, two.id]
        assert sentence_counts(mem) == {}


def test_every_write_keeps_sentence_vectors_with_their_memory(mem: Memory, tmp_path: Path) -> None:
    a = mem.add("First thing. Second thing. Third thing.", user="u")
    b = mem.add("Just one.", user="u")
    assert sentence_counts(mem) == {a.id: 3}
    mem.update(b.id, "Now two. Really.", user="u")
    assert sentence_counts(mem) == {a.id: 3, b.id: 2}
    turn = Turn(text="I adopted a dog. His name is Scout.", user="u", speaker="Mel")
    plan = ManagerPlan([PlannedOp("ADD", None, "Mel adopted a dog. The dog is named Scout.")])
    added = [op for op in mem.apply(plan, turn) if op.kind == "ADD"][0]
    assert sentence_counts(mem)[added.memory_id] == 2
    assert list(sentence_counts(mem, "turn_sentence_vectors").values()) == [2]  # the turn's own, for ask
    mem.delete(a.id)
    assert a.id not in sentence_counts(mem) and mem.check() == []
    mem.export(tmp_path / "u.jsonl", user="u")
    with Memory(tmp_path / "copy.db", embedder=mem.embedder) as copy:
        copy.import_jsonl(tmp_path / "u.jsonl")
        assert sorted(sentence_counts(copy).values()) == [2, 2]  # re-embedded, sentences too
    mem.forget("u")
    assert sentence_counts(mem) == {} == sentence_counts(mem, "turn_sentence_vectors") and mem.check() == []


def test_sentence_vectors_must_match_the_memory_vector(mem: Memory) -> None:
    mem.add("seed", user="u")  # binds the embedder, creating the vector table
    vector = np.ones(mem.embedder.dim, np.float32).tobytes()
    nan = np.full(mem.embedder.dim, np.nan, np.float32).tobytes()
    for bad in (b"", vector[:-4], vector + b"\0\0", nan):
        with pytest.raises(InvalidInput, match="sentence vectors must be"):
            mem.store.apply([Change("ADD", "u", text="x. y.", vector=vector, sentences=bad, at_ts=0.0)], actor="t")
    assert [m.text for m in mem.list(user="u")] == ["seed"]  # nothing of the refused write stayed


def test_the_index_follows_sentence_writes_as_a_fresh_one_reads_them(mem: Memory) -> None:
    """Updates leave old sentence vectors behind in the index until they are an eighth of it; searches must
    not see them, before or after they are compacted away."""
    rng = np.random.default_rng(0)
    texts = [
        ". ".join(f"w{rng.integers(50)} w{rng.integers(50)}" for _ in range(rng.integers(1, 4))) for _ in range(300)
    ]
    items = [mem.add(t, user="u") for t in texts]
    index = VectorIndex(mem.embedder.dim)
    index.sync(mem.store)
    queries = mem.embedder.embed([f"w{i} w{i + 1}" for i in range(10)])
    for round_ in range(4):
        for item in rng.choice(items, 80, replace=False):
            mem.update(int(item.id), ". ".join(f"w{rng.integers(50)}" for _ in range(rng.integers(1, 5))), user="u")
        index.sync(mem.store)
        fresh = VectorIndex(mem.embedder.dim)
        fresh.sync(mem.store)
        for q in queries:
            got, want = index.nearest(q, 20, user="u"), fresh.nearest(q, 20, user="u")
            assert [m for m, _ in got] == [m for m, _ in want], round_
            assert np.allclose([s for _, s in got], [s for _, s in want], atol=1e-6)
            exact = brute_force(mem, q)
            assert np.allclose([s for _, s in got], [s for _, s in exact[:20]], atol=1e-4)  # int16 is that exact
    assert index.rebuilds == 1 and index._sentences.used < 2 * index._sentences.live  # compacted on the way


def test_an_old_bank_gains_sentence_vectors(bank: Path, tiny_embedder: Path) -> None:
    with Memory(bank, embedder=tiny_embedder) as mem:
        old = mem.add("Written before. By an older memr1.", user="u")
    with sqlite3.connect(bank) as conn:  # back to schema 2: as if written before migration 3
        conn.execute("DROP TRIGGER memories_ad_sentences")
        conn.execute("DROP TABLE sentence_vectors")
        conn.execute("DROP TRIGGER turns_ad_sentences")
        conn.execute("DROP TABLE turn_sentence_vectors")
        conn.execute("DELETE FROM migrations WHERE version = 3")
    assert _MIGRATIONS[-1][0] == 3 and "sentence_vectors" in _statements(_MIGRATIONS[-1][2])[0]
    with Memory(bank, embedder=tiny_embedder) as mem:
        assert [h.memory.id for h in mem.search("Written before", user="u")] == [old.id]  # its own vector
        new = mem.add("Written after. By this one.", user="u")
        assert sentence_counts(mem) == {new.id: 2} and mem.check() == []


def test_a_raw_turn_is_found_by_its_best_sentence(bank: Path) -> None:
    """ask's default source is the raw turns: they are scored by their sentences too."""
    with Memory(bank, embedder=WordsEmbedder()) as mem:
        for text in (TWO, "chess club purple sneakers nice"):
            mem.apply(ManagerPlan(), Turn(text=text, user="u"))
        mem.vector_index()  # binds the embedder and makes the turn index
        turns = mem._turns.rows(mem.store, "u")
        query = mem.embedder.embed(["chess club"])[0]
        best = turns.cosines(query)
        assert best[0] == pytest.approx(1.0, abs=1e-6) and best[1] < 0.9
        assert (turns.vecs @ query)[0] < (turns.vecs @ query)[1]  # without sentences, the other turn
        ranked = retrieval.search_turns(mem.store, mem._turns, query, "chess club", k=2, user="u")
        assert [tid for tid, _ in ranked] == turns.ids.tolist()
