"""Recall ideas tried on LoCoMo's train + val conversations and not kept (issue 15).

    python -m benchmarks.locomo_recall_ideas [--data ../shared/data/locomo10.json] [--split tune]
        [--chat MODEL.gguf]

Each runs on top of what `ask` ranks (`retrieval.search_turns` over the raw turns, as the `turns` mode of
`benchmarks.locomo_retrieval`): the same banks, the same embedder cache. An idea either searches again with
another query or re-orders the whole fused ranking. With --chat, a chat model expands each question first
(query expansion by an LLM: the words an answering message would contain, and such a message), as `ask`
could before it searches; its replies are cached beside the embeddings. Figures and what they bought are in
benchmarks/RESULTS.md ("Recall ideas not kept"). Tune on train + val only: --split test is for reporting.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from memr1 import bench_locomo_retrieval as bench
from memr1 import datasets
from memr1.embedding import embed_texts
from memr1.llm import LlamaCpp, Request
from memr1.retrieval import DEFAULT_TUNING, search_turns

Ranking = dict[int, float]  # turn id -> fused score, of the 200 best


class Conversation:
    """One conversation's bank and what the ideas read of it: each turn's vector, speaker and session."""

    def __init__(self, conv: bench.Conversation, embedder: bench.CachedEmbedder, workdir: Path):
        self.conv, self.embedder = conv, embedder
        self.mem = bench.build_bank(workdir / f"{conv.sample_id}.db", conv, embedder, turns=True)
        self.mem.vector_index()  # makes the turn index too
        assert self.mem._turns is not None
        rows = self.mem._turns.rows(self.mem.store, conv.sample_id)
        self.ids, self.vecs = rows.ids, rows.vecs
        said = self.mem.store.get_turns(self.ids.tolist())
        self.speaker = {t: said[t].speaker for t in said}
        self.session = {t: said[t].session for t in said}
        self.dia = {t: said[t].metadata["dia_id"] for t in said}
        self.speakers = sorted({s for s in self.speaker.values() if s})

    def rank(self, vector: np.ndarray, question: str) -> Ranking:
        # the 200 best: as many as search's lists hold (a larger k would make them deeper, another ranking)
        ranked = search_turns(
            self.mem.store, self.mem._turns, vector, question, k=DEFAULT_TUNING.depth, user=self.conv.sample_id
        )
        return dict(ranked)

    def named(self, question: str) -> list[str]:
        return [s for s in self.speakers if re.search(rf"\b{re.escape(s)}\b", question)]


Idea = Callable[[Conversation, str, np.ndarray], Ranking]


def base(c: Conversation, q: str, v: np.ndarray) -> Ranking:
    return c.rank(v, q)


def best_first(ranking: Ranking) -> list[int]:
    return sorted(ranking, key=ranking.__getitem__, reverse=True)


def searched_again(c: Conversation, q: str, v: np.ndarray, first: Ranking, m: int, beta: float) -> Ranking:
    """Rocchio: the query vector plus beta x the mean of the first ranking's top m, searched again."""
    again = v + beta * c.vecs[np.searchsorted(c.ids, best_first(first)[:m])].mean(axis=0)
    return c.rank(again / np.linalg.norm(again), q)


def feedback(m: int, beta: float) -> Idea:
    """Pseudo-relevance feedback: search again with the query plus beta x the mean of the top m."""

    def idea(c: Conversation, q: str, v: np.ndarray) -> Ranking:
        return searched_again(c, q, v, c.rank(v, q), m, beta)

    return idea


def feedback_past(keep: int, m: int, beta: float) -> Idea:
    """The first search's top `keep`, then the feedback search's ranking: R@10 kept, the tail from feedback."""

    def idea(c: Conversation, q: str, v: np.ndarray) -> Ranking:
        first = c.rank(v, q)
        head = best_first(first)[:keep]
        rest = [t for t in best_first(searched_again(c, q, v, first, m, beta)) if t not in head]
        return {t: -float(i) for i, t in enumerate(head + rest)}

    return idea


def speaker_boost(delta: float) -> Idea:
    """Add delta to the turns of the one speaker the question names (96% of train + val evidence is theirs)."""

    def idea(c: Conversation, q: str, v: np.ndarray) -> Ranking:
        ranking, named = c.rank(v, q), c.named(q)
        if len(named) != 1:
            return ranking
        return {t: s + delta * (c.speaker[t] == named[0]) for t, s in ranking.items()}

    return idea


def speaker_voiced(c: Conversation, q: str, v: np.ndarray) -> Ranking:
    """Embed the question as said by the speaker it names ("Caroline: What is ...?"), as turns are stored."""
    named = c.named(q)
    if len(named) != 1:
        return c.rank(v, q)
    voiced = embed_texts(c.embedder, [f"{named[0]}: {q}"], query=True)[0]
    return c.rank(voiced, q)


def session_score(gamma: float) -> Idea:
    """Add gamma x the session's best fused score (z-scored over sessions) to each of its turns."""

    def idea(c: Conversation, q: str, v: np.ndarray) -> Ranking:
        ranking = c.rank(v, q)
        best: dict[str | None, float] = {}
        for t, s in ranking.items():
            best[c.session[t]] = max(best.get(c.session[t], -np.inf), s)
        values = np.array(list(best.values()))
        z = {k: (b - values.mean()) / (values.std() or 1.0) for k, b in best.items()}
        return {t: s + gamma * z[c.session[t]] for t, s in ranking.items()}

    return idea


def session_cap(cap: int, keep: int = 10) -> Idea:
    """Past the top `keep`, at most `cap` turns of one session; the rest wait at the end, in order."""

    def idea(c: Conversation, q: str, v: np.ndarray) -> Ranking:
        ranking = c.rank(v, q)
        order = best_first(ranking)
        seen: dict[str | None, int] = {}
        first, later = [], []
        for place, t in enumerate(order):
            n = seen.get(c.session[t], 0)
            (first if place < keep or n < cap else later).append(t)
            seen[c.session[t]] = n + 1
        return {t: -float(i) for i, t in enumerate(first + later)}

    return idea


class Expansions:
    """A chat model's guess at what the messages answering a question say, one JSON reply per question, cached
    in a file per model (a 1.5B model takes about 4 s a question on 2 cores)."""

    PROMPT = (
        "You help search a long chat between two friends. Given a question about the chat, write what the "
        'messages that answer it would likely say. Reply in JSON: "message": one short chat message that '
        'could answer the question, and "terms": 6 to 10 words or short phrases such messages would contain '
        "(synonyms, related words, concrete examples), not the names in the question."
    )
    SCHEMA = {
        "type": "object",
        "properties": {
            "message": {"type": "string", "maxLength": 200},
            "terms": {
                "type": "array",
                "items": {"type": "string", "maxLength": 30},
                "minItems": 3,
                "maxItems": 10,
            },
        },
        "required": ["message", "terms"],
    }

    def __init__(self, model: str, cache: Path):
        self.llm = LlamaCpp(model, n_ctx=2048)
        self.file = cache / f"expansions-{Path(model).stem}.json"
        self.replies: dict[str, dict] = json.loads(self.file.read_text()) if self.file.exists() else {}

    def __call__(self, question: str) -> dict:
        if question not in self.replies:
            messages = [
                {"role": "system", "content": self.PROMPT},
                {"role": "user", "content": "Question: " + question},
            ]
            text = self.llm.generate(Request(messages=messages, schema=self.SCHEMA, max_tokens=160)).text
            try:
                self.replies[question] = json.loads(text)
            except ValueError:  # cut off at max_tokens: no expansion
                self.replies[question] = {"message": "", "terms": [], "raw": text}
            self.file.write_text(json.dumps(self.replies, indent=0))
        return self.replies[question]

    def terms(self, question: str) -> str:
        return " ".join(self(question).get("terms", []))


def expanded(expand: Expansions, *, vector: bool, words: bool) -> Idea:
    """The model's terms added to the query vector's text, to BM25's query, or to both."""

    def idea(c: Conversation, q: str, v: np.ndarray) -> Ranking:
        longer = f"{q} {expand.terms(q)}"
        return c.rank(embed_texts(c.embedder, [longer], query=True)[0] if vector else v, longer if words else q)

    return idea


def imagined_answer(expand: Expansions) -> Idea:
    """The model's imagined answering message as the query vector (HyDE); BM25 keeps the question."""

    def idea(c: Conversation, q: str, v: np.ndarray) -> Ranking:
        message = expand(q).get("message") or q
        return c.rank(embed_texts(c.embedder, [message], query=True)[0], q)

    return idea


def with_expansions(expand: Expansions) -> dict[str, Idea]:
    return {
        "LLM terms in the query vector": expanded(expand, vector=True, words=False),
        "LLM terms in the BM25 query": expanded(expand, vector=False, words=True),
        "LLM terms in both": expanded(expand, vector=True, words=True),
        "LLM's imagined answer as the query vector": imagined_answer(expand),
    }


IDEAS: dict[str, Idea] = {
    "default (what ask ranks)": base,
    "feedback m=5 beta=0.3": feedback(5, 0.3),
    "feedback m=10 beta=0.6": feedback(10, 0.6),
    "feedback m=10 beta=1.0": feedback(10, 1.0),
    "feedback m=10 beta=0.6, past the first top 10": feedback_past(10, 10, 0.6),
    "speaker boost 0.2": speaker_boost(0.2),
    "speaker boost 0.5": speaker_boost(0.5),
    "speaker boost 1.0": speaker_boost(1.0),
    "speaker-voiced question": speaker_voiced,
    "session score 0.1": session_score(0.1),
    "session score 0.2": session_score(0.2),
    "session score 0.4": session_score(0.4),
    "session cap 5": session_cap(5),
    "session cap 8": session_cap(8),
}


def recall_of_ideas(
    convs: list[bench.Conversation],
    embedder: bench.CachedEmbedder,
    ks: list[int],
    workdir: Path,
    expand: Expansions | None = None,
) -> dict[str, dict[int, float]]:
    """Mean recall@k of each idea over the questions of these conversations."""
    ideas = IDEAS | (with_expansions(expand) if expand else {})
    found: dict[str, dict[int, list[float]]] = {name: {k: [] for k in ks} for name in ideas}
    for conv in convs:
        c = Conversation(conv, embedder, workdir)
        try:
            vectors = embed_texts(embedder, [q.text for q in conv.questions], query=True)
            for q, v in zip(conv.questions, vectors):
                for name, idea in ideas.items():
                    ranking = idea(c, q.text, v)
                    hits = [[c.dia[t]] for t in best_first(ranking)]
                    for k in ks:
                        found[name][k].append(bench.recall(q.evidence, hits, k))
        finally:
            c.mem.close()
    return {name: {k: float(np.mean(v)) for k, v in by_k.items()} for name, by_k in found.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="locomo10.json (default ../shared/data beside a memr1 clone)")
    ap.add_argument("--embedder", default=bench.DEFAULT_EMBEDDER)
    ap.add_argument("--split", default="tune", choices=("tune", "test", "all"))
    ap.add_argument("--k", default="10,60")
    ap.add_argument("--cache", default=None, help="embedding cache dir (default ~/.cache/memr1/locomo_retrieval)")
    ap.add_argument("--chat", default=None, help="a GGUF chat model: adds the LLM query expansion ideas")
    args = ap.parse_args(argv)
    ks = [int(k) for k in args.k.split(",")]
    data = datasets.load_locomo(datasets.ensure_locomo(args.data))
    convs = bench.conversations(
        data, split=args.split, ids=None, source="turns", style="speaker", sessions=None, max_questions=None
    )
    questions = sum(len(c.questions) for c in convs)
    cache = Path(args.cache or datasets.cache_dir() / "locomo_retrieval")
    embedder = bench.CachedEmbedder(args.embedder, cache)
    expand = Expansions(args.chat, cache) if args.chat else None
    try:
        with tempfile.TemporaryDirectory(prefix="memr1-ideas-") as tmp:
            results = recall_of_ideas(convs, embedder, ks, Path(tmp), expand)
    finally:
        embedder.close()
    print(f"| idea ({args.split}, {questions} questions) | " + " | ".join(f"R@{k}" for k in ks) + " |")
    print("|---|" + "---:|" * len(ks))
    for name, by_k in results.items():
        print(f"| {name} | " + " | ".join(f"{by_k[k]:.3f}" for k in ks) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
