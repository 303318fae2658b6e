"""The in-memory indexes follow writes in place (issue 12 item 8), and stay exactly what the bank holds."""

from __future__ import annotations

import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from memr1 import Memory, retrieval
from memr1.retrieval import TurnIndex, VectorIndex


class SeededEmbedder:
    """A random unit vector per text, seeded by the text: deterministic without a model file."""

    identity = "seeded"
    dim = 24

    def embed(self, texts):
        out = [np.random.default_rng(zlib.crc32(t.encode())).normal(size=self.dim) for t in texts]
        return np.asarray([v / np.linalg.norm(v) for v in out], np.float32)


def live(index: VectorIndex) -> dict[int, tuple[bytes, int, float]]:
    """What the index holds per memory id: its int16 vector and scale, user and time."""
    r = index._rows
    users = {code: user for user, code in index._users.items()}
    return {
        int(r.ids[i]): (r.vecs[i].tobytes() + r.scale[i].tobytes(), users[int(r.users[i])], float(r.ts[i]))
        for i in range(len(r.ids))
        if held(r)[i]
    }


def held(r) -> np.ndarray:
    """Which rows are live memories (before rows could be dead, every row was)."""
    return getattr(r, "live", np.ones(len(r.ids), bool))


def copies(snapshots: list[np.ndarray]) -> int:
    """How many times the vectors moved to new arrays between consecutive snapshots."""
    return sum(not np.shares_memory(a, b) for a, b in zip(snapshots, snapshots[1:]) if len(a) and len(b))


def test_writes_change_rows_in_place(bank: Path) -> None:
    """One write must not copy every vector: at 100k that made a search right after a write 6× slower."""
    with Memory(bank, embedder=SeededEmbedder()) as mem:
        ids = [mem.add(f"fact {i}", user=f"u{i % 3}").id for i in range(200)]
        index = mem.vector_index()
        mem.search("fact", user="u0")
        seen = [index._rows.vecs]
        for i in range(300):  # adds, updates and deletes, each followed by a search
            if i % 3 == 0:
                ids.append(mem.add(f"more {i}", user=f"u{i % 3}").id)
            elif i % 3 == 1:
                mem.update(ids[-1], f"changed {i}")
            else:
                mem.delete(ids.pop(0))
            mem.search("fact", user="u0")
            seen.append(index._rows.vecs)
        assert copies(seen) <= 4, copies(seen)  # growth by half and the odd compaction, not one copy per write
        assert getattr(index, "rebuilds", 1) == 1
        assert live(index) == live(fresh_index(mem))


def test_appends_are_amortised() -> None:
    """Growing one row at a time from empty copies the arrays O(log n) times, not n times."""
    index, dim = VectorIndex(8), 8
    rng = np.random.default_rng(0)
    seen = []
    for i in range(1, 2001):
        index._append([(i, "u", 0.0, rng.normal(size=dim).astype(np.float32).tobytes(), None)])
        seen.append(index._rows.vecs)
    assert len(index) == 2000 and list(index._rows.ids) == list(range(1, 2001))
    assert copies(seen) <= 12, copies(seen)


def fresh_index(mem: Memory) -> VectorIndex:
    index = VectorIndex(mem.embedder.dim)
    index.sync(mem.store)
    return index


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_interleaved_writes_match_brute_force(bank: Path, seed: int) -> None:
    """Random adds, updates, deletes (some of many at once) and searches: the index always answers as an exact
    scan of the bank would, and holds what a fresh index built from the bank holds, neighbours included."""
    rng = np.random.default_rng(seed)
    users = ["a", "b", "c"]
    with Memory(bank, embedder=SeededEmbedder()) as mem:
        index = mem.vector_index()
        # the same writes through the coarse pass: only the 10 Hamming-nearest rows of a scope are re-scored
        coarse = VectorIndex(mem.embedder.dim, exact_below=0, oversample=1, min_candidates=1)
        held: dict[int, str] = {}
        for step in range(400):
            roll = rng.random()
            if roll < 0.5 or len(held) < 5:
                user = str(rng.choice(users))
                held[mem.add(f"text {step}", user=user, at=f"2023-05-01T{step % 24:02d}:00").id] = user
            elif roll < 0.7:
                mid = int(rng.choice(list(held)))
                mem.update(mid, f"updated {step}", at=f"2023-05-02T{step % 24:02d}:00" if rng.random() < 0.5 else None)
            elif roll < 0.95:
                del_id = int(rng.choice(list(held)))
                mem.delete(del_id)
                del held[del_id]
            else:  # several at once: many rows die between two searches, and compaction follows
                for mid in list(held)[: len(held) // 3]:
                    mem.delete(mid)
                    del held[mid]
            if step % 7:
                continue
            query = SeededEmbedder().embed([f"query {step}"])[0]
            for user in [*users, None]:
                truth = brute_force(mem, query, user)
                index.sync(mem.store)
                got = index.nearest(query, 10, user=user)
                assert [m for m, _ in got] == [m for m, _ in truth[:10]], (step, user)
                assert np.allclose([s for _, s in got], [s for _, s in truth[:10]], atol=2e-3)
                coarse.sync(mem.store)
                got, exact, far = coarse.nearest(query, 10, user=user), dict(truth), hamming(coarse, query)
                assert {m for m, _ in got} <= set(exact) and len(got) == min(10, len(exact)), (step, user)
                assert all(abs(s - exact[m]) < 2e-3 for m, s in got)
                if got:  # no dead row or other user's row took a candidate's place
                    assert max(far[m] for m, _ in got) <= sorted(far[m] for m in exact)[len(got) - 1]
            reference = fresh_index(mem)
            assert live(index) == live(reference) == live(coarse)
            assert set(live(index)) == set(held)
            some = [int(m) for m in rng.choice(list(held), min(8, len(held)), replace=False)]
            for user in [*users, None]:
                got = index.neighbours(some, 2, gap=3 * 3600, user=user).triples()
                assert sorted(got) == sorted(reference.neighbours(some, 2, gap=3 * 3600, user=user).triples())
        assert getattr(index, "rebuilds", 1) == 1


def brute_force(mem: Memory, query: np.ndarray, user: str | None) -> list[tuple[int, float]]:
    """Every memory in scope by an exact scan, best first, on float16 vectors like the index; ties by id."""
    items = mem.list(user=user)
    if not items:
        return []
    vecs = mem.embedder.embed([m.text for m in items]).astype(np.float16).astype(np.float32)
    sims = vecs @ query
    order = np.lexsort(([m.id for m in items], -sims))
    return [(items[i].id, float(sims[i])) for i in order]


def hamming(index: VectorIndex, query: np.ndarray) -> dict[int, int]:
    """Sign-bit distance from the query to each memory the index holds."""
    r = index._rows
    distance = sum(np.bitwise_count(word ^ q).astype(int) for word, q in zip(r.bits, index._pack(query)[:, 0]))
    return {int(m): int(d) for m, d, ok in zip(r.ids, distance, held(r)) if ok}


def test_rows_below_the_newest_id_keep_id_order() -> None:
    index = VectorIndex(4)
    vec = (np.ones(4, np.float32) / 2).tobytes()
    index._append([(i, "u", 0.0, vec, None) for i in (1, 5, 9)])
    index._drop([5])
    index._append(
        [(3, "u", 0.0, vec, None), (12, "u", 0.0, vec, None), (5, "u", 1.0, vec, None)]
    )  # 5 comes back: its row is reused
    assert list(index._rows.ids) == [1, 3, 5, 9, 12] and len(index) == 5
    assert index.nearest(np.ones(4, np.float32) / 2, 10, user="u", since=0.5) == [(5, pytest.approx(1.0, abs=2e-3))]


def test_updates_and_deletes_from_another_process_are_seen(bank: Path) -> None:
    with Memory(bank, embedder=SeededEmbedder()) as mem:
        ids = [mem.add(f"fact {i}", user="u").id for i in range(40)]
        index = mem.vector_index()
        mem.search("fact 1", user="u")
        script = (
            "import sys; sys.path.insert(0, sys.argv[2]); from test_index_appends import SeededEmbedder\n"
            "from memr1 import Memory\n"
            "with Memory(sys.argv[1], embedder=SeededEmbedder()) as m:\n"
            "    m.update(1, 'fact 1 changed'); m.add('fact 40', user='u')\n"
            "    [m.delete(i) for i in range(2, 20)]\n"
        )
        subprocess.run([sys.executable, "-c", script, str(bank), str(Path(__file__).parent)], check=True)
        query = SeededEmbedder().embed(["fact 1 changed"])[0]
        assert [h.memory.text for h in mem.search("fact 1 changed", k=1, user="u", mode="vector")] == ["fact 1 changed"]
        assert live(index) == live(fresh_index(mem))
        assert set(live(index)) == {ids[0], *ids[19:], ids[-1] + 1}
        assert index.nearest(query, 1, user="u")[0][1] == pytest.approx(1.0, abs=2e-3)
        assert getattr(index, "rebuilds", 1) == 1


# ---- raw turns ----


def add_turns(mem: Memory, user: str, texts: list[str]) -> list[int]:
    vectors = mem.embedder.embed(texts)
    with mem.store.write() as conn:
        return [
            mem.store.add_turn(
                conn, user=user, text=t, speaker=None, session="s", at=None, metadata={}, vector=v.tobytes()
            )
            for t, v in zip(texts, vectors)
        ]


def test_turn_appends_are_amortised(bank: Path) -> None:
    with Memory(bank, embedder=SeededEmbedder()) as mem:
        turns = TurnIndex(mem.embedder.dim)
        assert [len(part) for part in turns.rows(mem.store, "u")] == [0] * 6
        seen, want = [], []
        for i in range(300):
            want += add_turns(mem, "u", [f"turn {i}"])
            ids, sessions, vecs, *_ = turns.rows(mem.store, "u")
            seen.append(vecs)
        assert list(ids) == want and list(sessions) == ["s"] * 300
        assert np.allclose(vecs, mem.embedder.embed([f"turn {i}" for i in range(300)]))
        assert copies(seen) <= 10, copies(seen)


def test_turns_erased_then_replaced_by_more_are_gone(bank: Path) -> None:
    """An erasure followed by more turns than before used to look like growth: the erased turns stayed."""
    with Memory(bank, embedder=SeededEmbedder()) as mem:
        turns = TurnIndex(mem.embedder.dim)
        add_turns(mem, "u", ["old one", "old two"])
        add_turns(mem, "v", ["someone else"])
        assert len(turns.rows(mem.store, "u")[0]) == 2
        with mem.store.write() as conn:
            mem.store.delete_turns(conn, "u")
        new = add_turns(mem, "u", ["new one", "new two", "new three"])
        ids, _, vecs, *_ = turns.rows(mem.store, "u")
        assert list(ids) == new
        assert np.allclose(vecs, mem.embedder.embed(["new one", "new two", "new three"]))
        top = retrieval.search_turns(mem.store, turns, vecs[0], "new one", k=5, user="u")
        assert {tid for tid, _ in top} <= set(new)
