"""Hybrid retrieval: the coarse bit pass, exact re-scoring, BM25, fusion and index sync."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from memr1 import Memory, retrieval
from memr1.retrieval import Fused, Links, Tuning, VectorIndex, fts_query, fuse_scores, spread

from .conftest import MINILM, needs_minilm


def test_fts_query_quotes_every_word() -> None:
    assert fts_query('What "pets" does Andrew* have? NEAR(x y) OR -z') == (
        '"pets" OR "andrew" OR "near" OR "x" OR "y" OR "z"'
    )
    assert fts_query("What is it?") == '"what" OR "is" OR "it"'  # nothing but stopwords: keep them
    assert fts_query("?!  ...") is None


@pytest.mark.parametrize(
    "query", ['"', "a AND", "NEAR(", "col:fox", "x OR OR y", "'; DROP TABLE memories; --", "*", "^fox"]
)
def test_fts_syntax_in_queries_is_plain_text(mem: Memory, query: str) -> None:
    mem.add("the fox and the memories table")
    mem.search(query)  # must not raise
    assert mem.stats()["memories"] == 1


def test_modes_use_one_list_each(mem: Memory) -> None:
    mem.add("zebra crossing near the school")
    assert mem.search("zebra", mode="text")[0].vector_score is None
    hit = mem.search("zebra", mode="vector")[0]
    assert hit.text_score is None and hit.vector_score is not None


def clustered(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    """Unit vectors near a 48-d subspace, off-centre, as sentence embeddings are (the speed benchmark's)."""
    basis = rng.normal(size=(48, dim))
    data = (rng.normal(size=(n, 48)) @ basis + 0.2 * rng.normal(size=(n, dim)) + 0.5).astype(np.float32)
    return data / np.linalg.norm(data, axis=1, keepdims=True)


def recall_of_bit_pass(data: np.ndarray, queries: np.ndarray, k: int, **settings: Any) -> float:
    """Mean share of the exact top k that the bit pass plus re-scoring finds (the exact path disabled)."""
    index = VectorIndex(data.shape[1], exact_below=0, **settings)
    index._center = data.mean(axis=0)
    index._append([(i + 1, "u", 0.0, data[i].tobytes(), None) for i in range(len(data))])
    found = []
    for q in queries:
        q = (q / np.linalg.norm(q)).astype(np.float32)
        truth = set((np.argsort(-(data @ q))[:k] + 1).tolist())
        found.append(len(truth & {mid for mid, _ in index.nearest(q, k, user="u")}) / k)
    return float(np.mean(found))


def test_coarse_pass_keeps_recall_on_a_big_scope() -> None:
    """With the exact path disabled, the bit pass plus re-scoring still finds the true top 10."""
    rng = np.random.default_rng(0)
    dim, n = 384, 20_000
    data = clustered(rng, n, dim)
    queries = data[rng.integers(0, n, 30)] + 0.05 * rng.normal(size=(30, dim)).astype(np.float32)
    recall = recall_of_bit_pass(data, queries, 10)
    assert recall >= 0.98, recall


def test_candidates_grow_with_the_scope() -> None:
    """Sign bits rank a big scope loosely, so a fixed number of candidates loses the true top 60 as the bank
    grows (0.88 at 1M memories): at least `scope_share` of the scope is re-scored. Here 100 candidates of
    20,000 rows hold 58% of it, a share of 1/20 (1,000) 98%."""
    rng = np.random.default_rng(0)
    dim, n = 384, 20_000
    data = clustered(rng, n, dim)
    queries = data[rng.integers(0, n, 30)] + 0.05 * rng.normal(size=(30, dim)).astype(np.float32)
    recall = {
        share: recall_of_bit_pass(data, queries, 60, min_candidates=100, max_candidates=100, scope_share=share)
        for share in (0.0, 1 / 20)
    }
    assert recall[0.0] < 0.7 and recall[1 / 20] >= 0.97, recall


def test_index_follows_writes_from_another_process(bank: Path, tiny_embedder: Path) -> None:
    with Memory(bank, embedder=tiny_embedder) as mem:
        first = mem.add("alpha fact", user="u")
        assert [h.memory.id for h in mem.search("alpha fact", user="u", mode="vector")] == [first.id]
        script = (
            "import sys; from memr1 import Memory\n"
            "with Memory(sys.argv[1], embedder=sys.argv[2]) as m:\n"
            "    m.add('beta fact', user='u'); m.delete(int(sys.argv[3]))\n"
        )
        subprocess.run([sys.executable, "-c", script, str(bank), str(tiny_embedder), str(first.id)], check=True)
        hits = mem.search("beta fact", user="u", mode="vector")
        assert [h.memory.text for h in hits] == ["beta fact"]


def test_vector_scores_are_exact_cosines(mem: Memory) -> None:
    item = mem.add("a very particular sentence")
    hit = mem.search("a very particular sentence", mode="vector")[0]
    assert hit.memory.id == item.id and hit.vector_score == pytest.approx(1.0, abs=2e-3)


@needs_minilm
def test_real_embedder_finds_the_semantic_match(tmp_path: Path) -> None:
    with Memory(tmp_path / "real.db", embedder=MINILM) as mem:
        for text in [
            "Caroline went to an LGBTQ support group.",
            "Melanie painted a sunrise last year.",
            "Andrew adopted a dog named Buddy.",
            "Jon lost his job as a banker.",
        ]:
            mem.add(text, user="u")
        assert mem.search("What pets does Andrew have?", k=4, user="u", mode="vector")[0].memory.text.startswith(
            "Andrew"
        )
        assert mem.search("Who is unemployed?", k=4, user="u", mode="vector")[0].memory.text.startswith("Jon")


# ---- fusion and context (retrieval.Tuning) ----


class WordsEmbedder:
    """One dimension per known word: cosine is plain word overlap, so rankings can be worked out by hand."""

    identity = "words"
    VOCAB = "purple sneakers nice what are they for long runs river weather rain chess club book garden".split()
    dim = len(VOCAB)

    def embed(self, texts):
        out = np.zeros((len(texts), self.dim), np.float32)
        for row, text in zip(out, texts):
            for word in text.lower().replace("?", "").split():
                if word in self.VOCAB:
                    row[self.VOCAB.index(word)] += 1
            row[:] = row / (np.linalg.norm(row) or 1)
        return out


def test_score_fusion_shifts_to_the_floor_and_scales() -> None:
    vector = [(1, 0.9), (2, 0.5), (3, 0.1)]  # cut at its depth: the last entry is the floor
    rms = np.sqrt((0.8**2 + 0.4**2) / 3)
    assert fuse_scores((vector, 1.0, None)).as_dict() == pytest.approx({1: 0.8 / rms, 2: 0.4 / rms, 3: 0.0})
    text = [(2, 3.0), (4, 1.0)]  # every BM25 match: the floor is BM25's zero
    both = fuse_scores((vector, 1.0, None), (text, 1.5, 0.0)).as_dict()
    assert list(both) == [1, 2, 3, 4]  # the order ties are broken in: as the lists first hold them
    assert both == pytest.approx({1: 0.8 / rms, 2: 0.4 / rms + 1.5 * 3 / 5**0.5, 3: 0.0, 4: 1.5 / 5**0.5})
    assert fuse_scores(([(9, 2.5)], 1.0, 0.0)).as_dict() == {9: 1.0}  # a lone match still counts
    assert fuse_scores(([(9, 2.5)], 1.0, None)).as_dict() == {9: 0.0}
    flat = fuse_scores(([(5, 1e-6), (6, 0.99e-6)], 1.0, 0.0)).as_dict()  # a word in every memory: near-equal, not huge
    assert 0.9 < flat[6] < flat[5] < 1.1


def test_spread_gives_shares_by_distance() -> None:
    fused = Fused(np.asarray([2, 1]), np.asarray([1.0, 2.0]))
    links = Links(np.asarray([1, 1, 2]), np.asarray([2, 3, 1]), np.asarray([1, 2, -1]))
    out = spread(fused, links, Tuning(context=(0.4, 0.2)))
    assert out.as_dict() == pytest.approx({2: 1.8, 1: 2.4, 3: 0.4})
    assert out.ids.tolist() == [2, 1, 3] and [m for m, _ in out.top(2)] == [1, 2]
    after = spread(fused, links, Tuning(context=(0.4, 0.2), context_after=(0.5,)))  # none for 2 after
    assert after.as_dict() == pytest.approx({2: 1.0 + 0.5 * 2.0, 1: 2.4, 3: 0.0})


def test_context_pulls_in_the_turn_after_the_match(bank: Path) -> None:
    with Memory(bank, embedder=WordsEmbedder()) as mem:
        day = "2023-05-0{}T10:00"
        ids = [
            mem.add(t, user="u", at=day.format(d)).id
            for t, d in [
                ("weather rain", 1),
                ("purple sneakers", 2),
                ("nice what are they for", 2),
                ("long runs river", 2),
                ("chess club", 4),
                ("book garden", 4),
            ]
        ]
        plain = mem.search("purple sneakers", k=10, user="u", mode="vector")
        assert plain[0].memory.id == ids[1] and all(h.vector_score == 0 for h in plain[1:])
        hits = mem.search("purple sneakers", k=10, user="u")
        got = [h.memory.id for h in hits]
        assert got[:2] == [ids[1], ids[2]]  # the reply right after the match comes next
        assert got.index(ids[3]) < got.index(ids[4]) and got.index(ids[0]) > got.index(ids[3])
        assert hits[1].vector_score == 0 and hits[1].text_score is None  # it is there by context alone
        assert {h.memory.id: h.score for h in hits}[ids[0]] == 0.0  # said the day before the match: no context


def test_context_stays_within_a_user(bank: Path) -> None:
    with Memory(bank, embedder=WordsEmbedder()) as mem:
        at = "2023-05-02T10:00"
        match, other, own = (
            mem.add(t, user=u, at=at).id
            for t, u in [("purple sneakers", "u"), ("nice what are they for", "v"), ("long runs river", "u")]
        )
        scores = {h.memory.id: h.score for h in mem.search("purple sneakers", k=3, user=None)}
        assert scores[own] > 0 and scores[other] == 0  # v's memory sits between in id order but is not u's context
        assert [h.memory.id for h in mem.search("purple sneakers", k=3, user="v")] == [other]


def test_context_respects_scope_and_follows_updates(bank: Path) -> None:
    with Memory(bank, embedder=WordsEmbedder()) as mem:
        a = mem.add("purple sneakers", user="u", at="2023-05-02T10:00", metadata={"kind": "x"})
        b = mem.add("nice what are they for", user="u", at="2023-05-02T10:00", metadata={"kind": "y"})
        assert [h.memory.id for h in mem.search("purple sneakers", user="u")] == [a.id, b.id]
        assert [h.memory.id for h in mem.search("purple sneakers", user="u", filters={"kind": "x"})] == [a.id]
        assert [h.memory.id for h in mem.search("purple sneakers", user="u", until="2023-05-01")] == []
        c = mem.add("chess club", user="u", at="2023-05-02T10:00")
        mem.update(a.id, "purple sneakers again")  # re-appended in the index: id order must still hold
        index = mem.vector_index()
        index.sync(mem.store)
        assert list(index._rows.ids) == sorted(index._rows.ids)
        links = index.neighbours([b.id], 2, gap=3600, user="u")
        assert sorted(links.triples()) == [(b.id, a.id, -1), (b.id, c.id, 1)]


def test_time_questions_and_time_statements() -> None:
    for q in ["When did Caroline go to the support group?", "How long has Mel been married?", "In which year did...?"]:
        assert retrieval.asks_when(q), q
    for q in ["What did Caroline do when she moved?", "Who went to the park?", "How many kids?"]:
        assert not retrieval.asks_when(q), q
    for t in ["I went yesterday", "last weekend we hiked", "back in May", "in 2022", "a few weeks ago", "on Friday"]:
        assert retrieval.states_time(t), t
    for t in ["I may go hiking", "we love painting", "the 2 kids"]:
        assert not retrieval.states_time(t), t


def test_time_boost_lifts_memories_that_say_when(bank: Path) -> None:
    with Memory(bank, embedder=WordsEmbedder()) as mem:
        plain = mem.add("chess club", user="u", at="2023-05-01").id
        dated = mem.add("chess club last week", user="u", at="2023-05-09").id  # "last week" is no WordsEmbedder word
        assert [h.memory.id for h in mem.search("What about the chess club?", k=2, user="u")] == [plain, dated]
        assert [h.memory.id for h in mem.search("When was the chess club?", k=2, user="u")] == [dated, plain]
