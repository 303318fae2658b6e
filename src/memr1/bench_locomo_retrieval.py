"""Evidence recall of memr1's search() on LoCoMo, without an LLM.

    memr1 bench locomo-retrieval [--split all] [--source turns] [--k 5,10,30,60] [--out DIR]

(in a clone, `python -m benchmarks.locomo_retrieval` is the same command)

Each conversation gets its own fresh bank. Its raw turns (or LoCoMo's `observation` facts) go in
through `Memory.add`, each with metadata {"dia_id": "D1:3"}; facts citing several turns also carry
"dia_ids". Every question is then searched once per mode at the largest k, and recall@k reads the
first k hits.

recall@k of a question = the share of its evidence dia_ids that some hit among the top k maps back
to; a split's figure is the mean over its questions that have evidence. Evidence strings are read
leniently and counted in the report: "D8:6; D9:17" is two ids, "D:11:26" is D11:26, "D30:05" is
D30:5. Ids naming no turn of the conversation are dropped, and a question left with no evidence
is skipped.

Modes: `vector` and `text` (BM25) are one list alone; `hybrid` is `Memory.search()` as shipped; `turns` is
what `Memory.ask` searches by default: the same turns stored as raw turns (as `observe` stores them, with no
memory written), searched by `retrieval.search_turns`;
`hybrid-rrf` is hybrid search as memr1 first shipped it (reciprocal-rank fusion of two 50-deep
lists), the baseline; it is defined here, not in memr1.retrieval, as only this comparison runs it.
`--ablation` adds the steps between the two, run through the retrieval layer on the same bank.
Tune on train and val (conv-26, conv-30) only; the test figure is for reporting.

Embeddings are cached by model and text in --cache (default ~/.cache/memr1/locomo_retrieval), so
only the first run pays for embedding about 6,000 turns (several minutes with MiniLM on 2 cores).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from . import datasets
from .embedding import DEFAULT_EMBEDDER as MEMR1_EMBEDDER
from .embedding import Embedder, LlamaEmbedder, embed_texts
from .memory import Memory, turn_line
from .prompts import ManagerPlan
from .retrieval import DEFAULT_TUNING, Fused, Tuning, VectorIndex, fts_query, search_turns, top_hits
from .retrieval import search as retrieval_search
from .schema import Hit
from .schema import Turn as MemoryTurn
from .scoring import CATEGORIES
from .store import Store

MINILM = datasets.SHARED / "models" / "all-MiniLM-L6-v2-f16.gguf" if datasets.SHARED else None
# the MiniLM GGUF beside a clone (RESULTS.md's figures), else memr1's default embedder
DEFAULT_EMBEDDER = str(MINILM) if MINILM and MINILM.exists() else MEMR1_EMBEDDER
MODES = ("vector", "text", "hybrid-rrf", "hybrid", "turns")
RRF_K = 60  # the constant from Cormack et al.; robust across collections


@dataclass(frozen=True)
class PlainRRF:
    """Hybrid search as memr1 first shipped it: reciprocal-rank fusion of the vector and BM25 lists, each
    max(k, depth) deep, with no time boost and no context. Score fusion replaced it (see RESULTS.md)."""

    depth: int = 50
    sentences: bool = False  # sentence vectors came later


# From memr1's first hybrid search to its default, one step at a time (tuned on train+val only).
ABLATION: dict[str, Tuning | PlainRRF] = {
    "rrf, 50 deep (first shipped)": PlainRRF(),
    "rrf, 200 deep": PlainRRF(depth=200),
    "score fusion, 50 deep": Tuning(depth=50, text_weight=1.0, context=(), time_boost=0.0, sentences=False),
    "score fusion, 200 deep": Tuning(text_weight=1.0, context=(), time_boost=0.0, sentences=False),
    "+ context ±1 (0.4)": Tuning(text_weight=1.0, context=(0.4,), time_boost=0.0, sentences=False),
    "+ context ±2 (0.4, 0.2)": Tuning(text_weight=1.0, time_boost=0.0, sentences=False),
    "+ text weight 1.5": Tuning(text_weight=1.5, time_boost=0.0, sentences=False),
    "+ time boost 1.0 for when-questions": Tuning(text_weight=1.5, sentences=False),
    "+ sentence vectors": Tuning(text_weight=1.5),
    "+ text weight 1.0: default": DEFAULT_TUNING,
    "text weight 0.75": Tuning(text_weight=0.75),
    "text weight 1.25": Tuning(text_weight=1.25),
    "text weight 2.0": Tuning(text_weight=2.0),
    "time boost 0.5": Tuning(time_boost=0.5),
    "time boost 2.0": Tuning(time_boost=2.0),
    "context ±3 (0.4, 0.2, 0.1)": Tuning(context=(0.4, 0.2, 0.1)),
    "context ±2 (0.3, 0.15)": Tuning(context=(0.3, 0.15)),
    "context ±2 (0.5, 0.25)": Tuning(context=(0.5, 0.25)),
    "context after (0.5, 0.25), before (0.3, 0.15)": Tuning(context=(0.3, 0.15), context_after=(0.5, 0.25)),
    "context gap 0 s": Tuning(context_gap=0.0),
    "lists 100 deep": Tuning(depth=100),
    "lists 400 deep": Tuning(depth=400),
    "BM25 on words in <= 20% of turns": Tuning(max_df=0.2),
    "BM25 on words in <= 10% of turns": Tuning(max_df=0.1),
}
TEXT_STYLES = ("speaker", "plain", "dated")
_DIA = re.compile(r"D:?(\d+):(\d+)")


# ---- evidence ----


@dataclass
class EvidenceCount:
    ids: int = 0  # evidence ids as written (a string may hold several)
    repaired: int = 0  # read after fixing their form, e.g. "D:11:26"
    unknown: int = 0  # well formed, but no turn of the conversation has that id
    unreadable: int = 0  # no id in the string at all, e.g. "D"
    no_evidence: int = 0  # questions left without evidence, so skipped

    def add(self, other: EvidenceCount) -> None:
        for name in vars(self):
            setattr(self, name, getattr(self, name) + getattr(other, name))


def parse_dia_ids(raw: object) -> tuple[list[str], int, int]:
    """Dialogue ids in an evidence string (or list of them): (ids, how many needed repair, unreadable strings)."""
    strings = [raw] if isinstance(raw, str) else list(raw) if isinstance(raw, (list, tuple)) else [str(raw)]
    ids, repaired, unreadable = [], 0, 0
    for text in strings:
        text = str(text).strip()
        found = [f"D{int(m[1])}:{int(m[2])}" for m in _DIA.finditer(text)]
        if not found:
            unreadable += 1
        repaired += len(found) if len(found) > 1 or (found and found[0] != text) else 0
        ids += found
    return ids, repaired, unreadable


def evidence_of(raw: Sequence[str], known: set[str]) -> tuple[list[str], EvidenceCount]:
    ids, repaired, unreadable = parse_dia_ids(list(raw))
    count = EvidenceCount(ids=len(ids) + unreadable, repaired=repaired, unreadable=unreadable)
    good = [i for i in dict.fromkeys(ids) if i in known]
    count.unknown = len(set(ids) - known)
    count.no_evidence = int(not good)
    return good, count


def fuse(*ranked: Sequence[int], k: int = RRF_K) -> dict[int, float]:
    """Reciprocal-rank fusion: each list adds 1 / (k + rank) to the memories it holds, rank counted from 1."""
    scores: dict[int, float] = {}
    for ranking in ranked:
        for rank, mid in enumerate(ranking):
            scores[mid] = scores.get(mid, 0.0) + 1.0 / (k + rank + 1)
    return scores


def rrf_search(
    store: Store,
    index: VectorIndex,
    query_vector: np.ndarray,
    query: str,
    *,
    k: int,
    user: str | None,
    baseline: PlainRRF = PlainRRF(),
) -> list[Hit]:
    """Top-k hits of the first hybrid search, built from the same vector index and FTS table as search()."""
    depth = max(k, baseline.depth)
    index.sync(store)
    vector = index.nearest(query_vector, depth, user=user, sentences=baseline.sentences)
    text: list[tuple[int, float]] = []
    if match := fts_query(query):
        text = [
            (mid, -bm25) for mid, bm25 in store.fts(match, limit=depth, user=user, since=None, until=None, filters=None)
        ]
    fused = fuse([m for m, _ in vector], [m for m, _ in text])
    return top_hits(
        store, Fused(np.fromiter(fused, np.int64), np.fromiter(fused.values(), np.float64)), vector, text, k
    )


def recall(evidence: Sequence[str], hits: Sequence[Iterable[str]], k: int) -> float:
    found = {d for hit in hits[:k] for d in hit}
    return sum(e in found for e in evidence) / len(evidence)


# ---- embeddings, cached by model and text ----


class CachedEmbedder(LlamaEmbedder):
    """A LlamaEmbedder that remembers every vector in an SQLite file, keyed by the model file's digest and the text."""

    def __init__(self, model: str | Path, cache: Path):
        super().__init__(model)
        cache.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(cache / "embeddings.sqlite", check_same_thread=False)
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS vectors (model TEXT, text_sha1 TEXT, vector BLOB, "
            "PRIMARY KEY (model, text_sha1))"
        )
        digest = hashlib.sha256(self.path.read_bytes()).hexdigest()[:16]
        self.model = f"{self.identity}:{self.dim}:{digest}"
        self.computed = 0

    def _lookup(self, keys: list[str]) -> dict[str, bytes]:
        found: dict[str, bytes] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            rows = self.db.execute(
                f"SELECT text_sha1, vector FROM vectors WHERE model = ? AND text_sha1 IN ({','.join('?' * len(chunk))})",
                [self.model, *chunk],
            )
            found.update(rows)
        return found

    def prefill(self, texts: Sequence[str], *, progress: bool = True) -> None:
        """Embed every text not cached yet, in batches, with a progress bar."""
        from tqdm.auto import tqdm

        unique = list(dict.fromkeys(texts))
        have = self._lookup([_sha1(t) for t in unique])
        todo = [t for t in unique if _sha1(t) not in have]
        bar = tqdm(total=len(todo), desc="embed", unit="text", disable=not progress or not todo, file=sys.stderr)
        for start in range(0, len(todo), 64):
            chunk = todo[start : start + 64]
            vectors = super().embed(chunk)
            with self.db:
                self.db.executemany(
                    "INSERT OR REPLACE INTO vectors VALUES (?, ?, ?)",
                    [(self.model, _sha1(t), v.astype(np.float32).tobytes()) for t, v in zip(chunk, vectors)],
                )
            self.computed += len(chunk)
            bar.update(len(chunk))
        bar.close()

    def embed(self, texts: Sequence[str], *, query: bool = False) -> np.ndarray:
        inputs = [self.query_prefix + t if query else t for t in texts]
        self.prefill(inputs, progress=False)
        found = self._lookup([_sha1(t) for t in inputs])
        return np.asarray([np.frombuffer(found[_sha1(t)], np.float32) for t in inputs], np.float32).reshape(
            -1, self.dim
        )

    def close(self) -> None:
        self.db.close()


def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


# ---- what goes into a bank ----


@dataclass
class Entry:
    text: str
    at: datetime
    dia_ids: list[str]


def chunk_text(turn: datasets.Turn, style: str) -> str:
    """The text a raw turn is stored as; `speaker` won on train+val (see RESULTS.md)."""
    if style == "plain":
        return turn.text
    if style == "dated":
        return f"[{turn.at:%-d %B %Y}] {turn_line(turn.speaker, turn.text)}"
    return turn_line(turn.speaker, turn.text)


def entries(sample: dict[str, Any], source: str, style: str, sessions: int | None) -> list[Entry]:
    turns = [t for t in datasets.locomo_turns(sample) if sessions is None or t.session <= sessions]
    if source == "turns":
        return [Entry(chunk_text(t, style).strip(), t.at, [t.dia_id]) for t in turns]
    dates = {t.session: t.at for t in turns}
    out = []
    for key, by_speaker in sample.get("observation", {}).items():
        n = int(re.findall(r"\d+", key)[0])
        if n not in dates:
            continue
        for facts in by_speaker.values():
            for fact in facts:
                text = str(fact[0]).strip()
                ids, _, _ = parse_dia_ids(fact[1]) if len(fact) > 1 else ([], 0, 0)
                if text:  # add() refuses empty text
                    out.append(Entry(text, dates[n], ids))
    return out


@dataclass
class Question:
    conversation: str
    split: str
    category: int
    text: str
    evidence: list[str]


@dataclass
class Conversation:
    sample_id: str
    entries: list[Entry]
    questions: list[Question]
    evidence: EvidenceCount = field(default_factory=EvidenceCount)
    reachable: float = 0.0  # share of evidence ids that some stored memory cites
    turns: list[datasets.Turn] = field(default_factory=list)  # the raw turns, for the `turns` mode


def conversations(
    data: list[dict[str, Any]],
    *,
    split: str,
    ids: Sequence[str] | None,
    source: str,
    style: str,
    sessions: int | None,
    max_questions: int | None,
) -> list[Conversation]:
    out = []
    for sample in data:
        sid = sample["sample_id"]
        if ids and sid not in ids:
            continue
        part = datasets.split_of(sid)
        if split not in ("all", part) and not (split == "tune" and part in ("train", "val")):
            continue
        kept = [t for t in datasets.locomo_turns(sample) if sessions is None or t.session <= sessions]
        known = {t.dia_id for t in kept}
        conv = Conversation(sid, entries(sample, source, style, sessions), [], turns=kept)
        for qa in datasets.locomo_questions([sample]):
            evidence, count = evidence_of(qa.evidence, known)
            if sessions is not None and count.unknown:  # partly outside the sessions kept: skip it whole
                continue
            conv.evidence.add(count)
            if evidence and (max_questions is None or len(conv.questions) < max_questions):
                conv.questions.append(Question(sid, part, qa.category, qa.question.strip(), evidence))
        cited = {d for e in conv.entries for d in e.dia_ids}
        wanted = [e for q in conv.questions for e in q.evidence]
        conv.reachable = sum(e in cited for e in wanted) / len(wanted) if wanted else 0.0
        out.append(conv)
    return out


# ---- running ----


def build_bank(path: Path, conv: Conversation, embedder: Embedder, *, turns: bool = False) -> Memory:
    """The conversation's entries as memories; with `turns`, its raw turns too, each stored as observe stores
    a turn when the Memory Manager writes nothing."""
    mem = Memory(path, embedder=embedder)
    for entry in conv.entries:
        meta: dict[str, Any] = {"dia_id": entry.dia_ids[0] if entry.dia_ids else None}
        if len(entry.dia_ids) > 1:
            meta["dia_ids"] = entry.dia_ids
        mem.add(entry.text, user=conv.sample_id, at=entry.at, metadata=meta)
    for t in conv.turns if turns else ():
        said = MemoryTurn(
            text=t.text,
            speaker=t.speaker,
            at=t.at,
            session=str(t.session),
            user=conv.sample_id,
            metadata={"dia_id": t.dia_id},
        )
        mem.apply(ManagerPlan(), said)
    return mem


def _dia_ids(metadata: dict[str, Any]) -> list[str]:
    if metadata.get("dia_ids"):
        return list(metadata["dia_ids"])
    return [metadata["dia_id"]] if metadata.get("dia_id") else []


def run_mode(mem: Memory, conv: Conversation, mode: str, k: int) -> list[tuple[list[list[str]], float]]:
    """Per question: the dia_ids of each of the top-k hits, and the search time in seconds."""
    out = []
    tuning = PlainRRF() if mode == "hybrid-rrf" else ABLATION.get(mode)
    for q in conv.questions:
        start = time.perf_counter()
        if mode == "turns":  # what ask(sources="turns") ranks
            vector = embed_texts(mem.embedder, [q.text], query=True)[0]
            mem.vector_index()  # makes the turn index too
            assert mem._turns is not None
            ranked = search_turns(mem.store, mem._turns, vector, q.text, k=k, user=conv.sample_id)
            said = mem.store.get_turns([tid for tid, _ in ranked])
            out.append(([[said[tid].metadata["dia_id"]] for tid, _ in ranked], time.perf_counter() - start))
            continue
        if tuning is None:
            hits = mem.search(q.text, k, user=conv.sample_id, mode=mode)  # type: ignore[arg-type]
        else:  # the same index and FTS table, the same bank, other settings
            vector = embed_texts(mem.embedder, [q.text], query=True)[0]
            if isinstance(tuning, PlainRRF):
                hits = rrf_search(
                    mem.store, mem.vector_index(), vector, q.text, k=k, user=conv.sample_id, baseline=tuning
                )
            else:
                hits = retrieval_search(
                    mem.store,
                    mem.vector_index(),
                    vector,
                    q.text,
                    k=k,
                    user=conv.sample_id,
                    since=None,
                    until=None,
                    filters=None,
                    mode="hybrid",
                    tuning=tuning,
                )
        out.append(([_dia_ids(h.memory.metadata) for h in hits], time.perf_counter() - start))
    return out


def summarize(rows: list[tuple[Question, list[list[str]]]], ks: Sequence[int]) -> dict[str, Any]:
    def block(subset: list[tuple[Question, list[list[str]]]]) -> dict[str, Any]:
        return {
            "questions": len(subset),
            "recall": {
                str(k): round(statistics.fmean(recall(q.evidence, hits, k) for q, hits in subset), 4) for k in ks
            }
            if subset
            else {},
        }

    out = block(rows)
    out["by_category"] = {
        CATEGORIES[c]: block([r for r in rows if r[0].category == c]) for c in sorted({q.category for q, _ in rows})
    }
    return out


def evaluate(
    convs: list[Conversation],
    embedder: Embedder,
    *,
    modes: Sequence[str],
    ks: Sequence[int],
    workdir: Path,
    progress: bool = True,
) -> dict[str, Any]:
    from tqdm.auto import tqdm

    kmax = max(ks)
    per_mode: dict[str, list[tuple[Question, list[list[str]]]]] = {m: [] for m in modes}
    times: dict[str, list[float]] = {m: [] for m in modes}
    build_s = 0.0
    for conv in tqdm(convs, desc="conversations", unit="conv", disable=not progress, file=sys.stderr):
        start = time.perf_counter()
        mem = build_bank(workdir / f"{conv.sample_id}.db", conv, embedder, turns="turns" in modes)
        build_s += time.perf_counter() - start
        try:
            for mode in modes:
                results = run_mode(mem, conv, mode, kmax)
                per_mode[mode] += [(q, hits) for q, (hits, _) in zip(conv.questions, results)]
                times[mode] += [s for _, s in results]
        finally:
            mem.close()
    splits = {q.split for q, _ in per_mode[modes[0]]}
    groups: list[str] = [s for s in ("train", "val", "test") if s in splits]
    if {"train", "val"} <= splits:
        groups.insert(2, "train+val")
    if "test" in splits and len(splits) > 1:
        groups.append("all")
    report: dict[str, Any] = {}
    for group in groups:
        members = {"train+val": {"train", "val"}, "all": splits}.get(group, {group})
        report[group] = {m: summarize([r for r in per_mode[m] if r[0].split in members], ks) for m in modes}
    return {
        "results": report,
        "search_ms": {m: round(1000 * statistics.median(t), 2) if t else None for m, t in times.items()},
        "build_s": round(build_s, 2),
    }


# ---- reporting ----


def markdown(report: dict[str, Any]) -> str:
    cfg, ks = report["config"], report["config"]["k"]
    ev = report["evidence"]
    lines = [
        f"LoCoMo evidence recall@k, source={cfg['source']}, text={cfg['text']}, embedder={cfg['embedder']}",
        "",
        f"{ev['questions']} questions with evidence in {len(cfg['conversations'])} conversations; evidence ids: "
        f"{ev['ids']} written, {ev['repaired']} repaired, {ev['unknown']} naming no turn, {ev['unreadable']} "
        f"unreadable; {ev['no_evidence']} questions left without evidence, skipped. "
        f"Evidence that some stored memory cites: {ev['reachable']:.3f}.",
    ]
    for group, modes in report["results"].items():
        first = next(iter(modes.values()))
        lines += ["", f"**{group}** ({first['questions']} questions)", ""]
        lines += ["| mode | " + " | ".join(f"R@{k}" for k in ks) + " |", "|---|" + "---:|" * len(ks)]
        for mode, block in modes.items():
            lines.append(f"| {mode} | " + " | ".join(f"{block['recall'][str(k)]:.3f}" for k in ks) + " |")
        cats = list(first["by_category"])
        kmax = str(max(ks))
        lines += ["", f"R@{kmax} by category:", ""]
        lines += [
            "| mode | " + " | ".join(f"{c} ({first['by_category'][c]['questions']})" for c in cats) + " |",
            "|---|" + "---:|" * len(cats),
        ]
        for mode, block in modes.items():
            lines.append(
                f"| {mode} | " + " | ".join(f"{block['by_category'][c]['recall'][kmax]:.3f}" for c in cats) + " |"
            )
    lines += ["", "median search ms: " + ", ".join(f"{m} {v}" for m, v in report["search_ms"].items())]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None, *, prog: str = "memr1 bench locomo-retrieval") -> int:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--data", default=None, help="locomo10.json (default ../shared/data beside a memr1 clone, else fetched)"
    )
    ap.add_argument(
        "--embedder",
        default=DEFAULT_EMBEDDER,
        help="embedding GGUF (default: MiniLM in ../shared beside a memr1 clone, else memr1's default embedder)",
    )
    ap.add_argument(
        "--split", default="all", choices=("all", "train", "val", "test", "tune"), help="tune = train + val"
    )
    ap.add_argument("--conversations", default=None, help="comma-separated sample ids, e.g. conv-26,conv-30")
    ap.add_argument("--source", default="turns", choices=("turns", "observations"))
    ap.add_argument("--text", default="speaker", choices=TEXT_STYLES, help="how a raw turn is stored")
    ap.add_argument("--k", default="5,10,30,60", help="comma-separated cut-offs")
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, from {', '.join(MODES)}")
    ap.add_argument("--ablation", action="store_true", help="add the tuning steps of hybrid search as modes")
    ap.add_argument("--sessions", type=int, default=None, help="keep only each conversation's first N sessions")
    ap.add_argument("--max-questions", type=int, default=None, help="per conversation")
    ap.add_argument("--cache", default=None, help="embedding cache dir (default ~/.cache/memr1/locomo_retrieval)")
    ap.add_argument("--out", default=None, help="directory for locomo_retrieval.json and .md")
    ap.add_argument("--json", action="store_true", help="print the JSON report instead of Markdown")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)

    ks = sorted({int(k) for k in args.k.split(",")})
    modes = [m for m in args.modes.split(",") if m]
    if args.ablation:
        modes += [m for m in ABLATION if m not in modes]
    unknown = [m for m in modes if m not in MODES and m not in ABLATION]
    if unknown or min(ks) < 1:
        ap.error(f"unknown modes {unknown}" if unknown else "every k must be at least 1")
    data_path = datasets.ensure_locomo(args.data)
    data = datasets.load_locomo(data_path)
    ids = args.conversations.split(",") if args.conversations else None
    convs = conversations(
        data,
        split=args.split,
        ids=ids,
        source=args.source,
        style=args.text,
        sessions=args.sessions,
        max_questions=args.max_questions,
    )
    convs = [c for c in convs if c.questions and c.entries]
    if not convs:
        ap.error("no conversation with questions matches --split/--conversations/--sessions")
    cache = Path(args.cache) if args.cache else datasets.cache_dir() / "locomo_retrieval"
    embedder = CachedEmbedder(args.embedder, cache)
    start = time.perf_counter()
    try:
        texts = [e.text for c in convs for e in c.entries]
        queries = [embedder.query_prefix + q.text for c in convs for q in c.questions]
        embedder.prefill(texts + queries, progress=not args.quiet)
        embed_s = time.perf_counter() - start
        with tempfile.TemporaryDirectory(prefix="memr1-locomo-") as tmp:
            run = evaluate(convs, embedder, modes=modes, ks=ks, workdir=Path(tmp), progress=not args.quiet)
    finally:
        embedder.close()
    evidence = EvidenceCount()
    for c in convs:
        evidence.add(c.evidence)
    wanted = sum(len(q.evidence) for c in convs for q in c.questions)
    report = {
        "config": {
            "data": str(data_path),
            "embedder": embedder.identity,
            "source": args.source,
            "text": args.text,
            "split": args.split,
            "conversations": [c.sample_id for c in convs],
            "k": ks,
            "modes": modes,
            "sessions": args.sessions,
            "max_questions": args.max_questions,
            "default_tuning": vars(DEFAULT_TUNING) | {"context": list(DEFAULT_TUNING.context)},
        },
        "evidence": vars(evidence)
        | {
            "questions": sum(len(c.questions) for c in convs),
            "reachable": round(sum(c.reachable * sum(len(q.evidence) for q in c.questions) for c in convs) / wanted, 4),
        },
        **run,
        "seconds": {
            "embed": round(embed_s, 1),
            "embedded_texts": embedder.computed,
            "total": round(time.perf_counter() - start, 1),
        },
    }
    text = markdown(report)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "locomo_retrieval.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        (out / "locomo_retrieval.md").write_text(text, encoding="utf-8")
    print(json.dumps(report, indent=2) if args.json else text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
