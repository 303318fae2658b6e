"""Hybrid retrieval: the coarse bit pass, exact re-scoring, BM25, fusion and index sync."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from memr1 import Memory
from memr1.retrieval import VectorIndex, fts_query, fuse

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


def test_fusion_rewards_agreement() -> None:
    scores = fuse([1, 2, 3], [3, 1, 4])
    assert max(scores, key=scores.__getitem__) == 1
    assert scores[3] > scores[2] and 4 in scores


def test_modes_use_one_list_each(mem: Memory) -> None:
    mem.add("zebra crossing near the school")
    assert mem.search("zebra", mode="text")[0].vector_score is None
    hit = mem.search("zebra", mode="vector")[0]
    assert hit.text_score is None and hit.vector_score is not None


def test_coarse_pass_keeps_recall_on_a_big_scope() -> None:
    """With the exact path disabled, the bit pass plus re-scoring still finds the true top 10."""
    rng = np.random.default_rng(0)
    dim, n = 384, 20_000
    basis = rng.normal(size=(48, dim))
    data = (rng.normal(size=(n, 48)) @ basis + 0.2 * rng.normal(size=(n, dim)) + 0.5).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    index = VectorIndex(dim, exact_below=0)
    rows = [(i + 1, "u", 0.0, data[i].tobytes()) for i in range(n)]
    index._center = data.mean(axis=0)
    index._append(rows)
    recalls = []
    for q in data[rng.integers(0, n, 30)] + 0.05 * rng.normal(size=(30, dim)).astype(np.float32):
        q = (q / np.linalg.norm(q)).astype(np.float32)
        truth = set((np.argsort(-(data @ q))[:10] + 1).tolist())
        got = {mid for mid, _ in index.nearest(q, 10, user="u")}
        recalls.append(len(truth & got) / 10)
    assert np.mean(recalls) >= 0.98, np.mean(recalls)


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
        for text in ["Caroline went to an LGBTQ support group.", "Melanie painted a sunrise last year.",
                     "Andrew adopted a dog named Buddy.", "Jon lost his job as a banker."]:  # fmt: skip
            mem.add(text, user="u")
        assert mem.search("What pets does Andrew have?", k=4, user="u", mode="vector")[0].memory.text.startswith(
            "Andrew"
        )
        assert mem.search("Who is unemployed?", k=4, user="u", mode="vector")[0].memory.text.startswith("Jon")
