"""Search latency and recall at 100k memories, against a plain sqlite-vec scan in the same run.

    python -m benchmarks.retrieval_speed [--n 100000] [--dim 384] [--queries 200] [--users 1000] [--sentences 0]

Vectors are synthetic, since embedding 100k texts takes about an hour on 2 cores. Sentence
embeddings have a low intrinsic dimension and a shared offset, so the generator draws points
from a 48-d latent space, maps them to `dim`, and adds isotropic noise and an offset.
Queries are perturbed copies of stored points. The bank is written through memr1's own
store (vec0 + FTS5 + history), so the plain vec0 KNN runs on the very same table.

With --sentences S every memory also has S sentence vectors (its own vector plus noise), as a memory of
several sentences does (LoCoMo's turns of several sentences have 3.5): search reads them for its candidates.

The rows "right after a write" time only the search that follows one (untimed) ADD, UPDATE
or DELETE, in turn: the in-memory index must catch up with the bank before it answers. They
alternate with the same searches "alone, between writes", which are what they are compared to.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np

from memr1 import Memory
from memr1.retrieval import VectorIndex, fts_query
from memr1.store import Change

SYLLABLES = "ka lo mi ne ru sa te vi bo da fe gu hi jo ku la".split()


class TableEmbedder:
    """Maps the benchmark's own texts to their precomputed vectors (implements memr1.Embedder)."""

    identity = "synthetic"

    def __init__(self, dim: int):
        self.dim = dim
        self.table: dict[str, np.ndarray] = {}

    def embed(self, texts):
        return np.stack([self.table[t] for t in texts])


def synthetic(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    basis = rng.normal(size=(48, dim)).astype(np.float32)
    x = rng.normal(size=(n, 48)).astype(np.float32) @ basis
    x += 0.2 * rng.normal(size=(n, dim)).astype(np.float32) + 0.5
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def percentiles(samples: list[float]) -> tuple[float, float]:
    return float(np.percentile(samples, 50) * 1000), float(np.percentile(samples, 95) * 1000)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--users", type=int, default=1000, help="users in the multi-user scoped test")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--sentences",
        type=int,
        default=0,
        help="sentence vectors per memory (default 0: memories of one sentence); LoCoMo's turns of several "
        "sentences have 3.5 on average",
    )
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    data = synthetic(args.n, args.dim, rng)
    # a sentence is near its memory, not a copy of it: the memory's vector plus noise of the same size
    sentences = data[:, None, :] + rng.normal(size=(args.n, args.sentences, args.dim)).astype(np.float32) / np.sqrt(
        args.dim
    )
    sentences = (sentences / np.linalg.norm(sentences, axis=2, keepdims=True)).astype(np.float32)
    picks = rng.integers(0, args.n, args.queries)
    queries = data[picks] + 0.05 * rng.normal(size=(args.queries, args.dim)).astype(np.float32)
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)

    embedder = TableEmbedder(args.dim)
    # a 5,000-word vocabulary drawn with Zipf-like frequencies, so BM25 sees realistic selectivity
    vocab = np.array(["".join(rng.choice(SYLLABLES, 3)) for _ in range(5000)])
    freq = 1.0 / np.arange(1, len(vocab) + 1)
    words = rng.choice(vocab, size=(args.n, 12), p=freq / freq.sum())
    texts = [" ".join(row) + f" #{i}" for i, row in enumerate(words)]
    qtexts = [f"what about {' '.join(rng.choice(words[p], 4, replace=False))}? ({i})" for i, p in enumerate(picks)]
    embedder.table.update(zip(qtexts, queries))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "speed.db"
        mem = Memory(path, embedder=embedder)
        mem.vector_index()
        t0 = time.perf_counter()
        for start in range(0, args.n, 5000):  # the store's own write path, 5k memories per transaction
            users = [
                "solo" if args.users <= 1 else f"u{i % args.users}" for i in range(start, min(args.n, start + 5000))
            ]
            mem.store.apply(
                [
                    Change(
                        "ADD",
                        user,
                        text=texts[i],
                        vector=data[i].tobytes(),
                        sentences=sentences[i].tobytes() if args.sentences else None,
                        at_ts=0.0,
                    )
                    for user, i in zip(users, range(start, start + len(users)))
                ],
                actor="bench",
            )
        load_s = time.perf_counter() - t0
        # one user holding everything: the worst case for a scoped search
        mem.store.conn.execute("UPDATE memories SET user_id = 'solo'")
        mem.close()
        # opening the bank: the first search builds the in-memory index (vectors and BM25 terms)
        t0 = time.perf_counter()
        mem = Memory(path, embedder=embedder)
        mem.search(qtexts[0], 10, user="solo")
        open_s = time.perf_counter() - t0
        index = VectorIndex(args.dim)
        t0 = time.perf_counter()
        index.sync(mem.store)
        index_s = time.perf_counter() - t0
        tracemalloc.start()  # what the index holds, dicts included: a second build, measured
        held = VectorIndex(args.dim)
        held.sync(mem.store)
        index_bytes = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        del held

        def exact(q: np.ndarray) -> np.ndarray:  # a memory scores as the best of itself and its sentences
            return np.maximum(data @ q, (sentences @ q).max(axis=1, initial=-1.0))

        truth = {k: [set((np.argsort(-exact(q))[:k] + 1).tolist()) for q in queries] for k in (10, 60)}
        rows: list[tuple[str, float, float, float]] = []

        def run(name: str, fn, recall_at=None) -> None:
            times, recalls = [], []
            for i, q in enumerate(queries):
                t = time.perf_counter()
                got = fn(i, q)
                times.append(time.perf_counter() - t)
                if recall_at is not None:
                    recalls.append(len(truth[recall_at][i] & set(got[:recall_at])) / recall_at)
            p50, p95 = percentiles(times)
            rows.append((name, p50, p95, float(np.mean(recalls)) if recalls else float("nan")))

        def vector(k: int, share: float | None = None):
            """memr1's vector pass at k; `share`, if given, replaces the index's scope share for the search."""

            def search(i: int, q: np.ndarray) -> list[int]:
                kept = index.scope_share
                index.scope_share = kept if share is None else share
                try:
                    return [m for m, _ in index.nearest(q, k, user="solo")]
                finally:
                    index.scope_share = kept

            return search

        conn = mem.store.conn
        for k in (10, 60):
            run(
                f"plain vec0 float KNN, k={k}",
                lambda i, q, k=k: [
                    r[0]
                    for r in conn.execute(
                        "SELECT memory_id FROM vec_memories WHERE embedding MATCH ? AND k = ?", (q.tobytes(), k)
                    )
                ],
                k,
            )
            run(f"memr1 vector (bits + re-score), k={k}", vector(k), k)

        def together(named: dict[str, Any], recall_at: int | None = None) -> None:
            """Several searches of each query, taking turns at going first, so that the machine's other load
            and the caches they warm for each other (a query's words, tokenized once) weigh on all alike."""
            times: dict[str, list[float]] = {name: [] for name in named}
            recalls: dict[str, list[float]] = {name: [] for name in named}
            for i, q in enumerate(queries):
                order = list(named.items())
                for name, fn in order[i % len(order) :] + order[: i % len(order)]:
                    t = time.perf_counter()
                    got = fn(i, q)
                    times[name].append(time.perf_counter() - t)
                    if recall_at is not None:
                        recalls[name].append(len(truth[recall_at][i] & set(got[:recall_at])) / recall_at)
            for name in named:
                recall = float(np.mean(recalls[name])) if recalls[name] else float("nan")
                rows.append((name, *percentiles(times[name]), recall))

        if args.n * index.scope_share > index.min_candidates:  # what re-scoring a share of a big scope buys
            for k in (10, 60):
                together(
                    {
                        f"memr1 vector, k={k}, as above, paired with the next": vector(k),
                        f"memr1 vector, k={k}, {index.min_candidates:,} candidates (no scope share)": vector(k, 0.0),
                    },
                    recall_at=k,
                )
        mem._index = index

        together(
            {
                f"memr1 hybrid search() (vector + BM25 + fusion), k={k}": lambda i, q, k=k: mem.search(
                    qtexts[i], k, user="solo"
                )
                for k in (10, 60)
            }
        )
        together(
            {
                f"FTS5 bm25() alone (what search() ranked by before), k={k}": lambda i, q, k=k: mem.store.fts(
                    fts_query(qtexts[i]), limit=200, user="solo", since=None, until=None, filters=None
                )
                for k in (10, 60)
            }
        )

        # Search right after a write: the index must follow one ADD, UPDATE or DELETE (in turn, on memories
        # written here, so the bank and the recall truth stay as loaded) without re-copying its arrays.
        fresh = synthetic(2 * args.queries, args.dim, np.random.default_rng(args.seed + 1))
        written: list[int] = []
        writes = iter(range(10**9))

        def write() -> None:
            w = next(writes)
            kind, vector = ("ADD", "UPDATE", "DELETE")[w % 3], fresh[w % len(fresh)]
            text = f"{texts[w % args.n]} written {w}"
            if kind == "ADD":
                change = Change("ADD", "solo", text=text, vector=vector.tobytes(), at_ts=0.0)
            else:
                change = Change(kind, "solo", memory_id=written.pop(), text=text, vector=vector.tobytes())
            item = mem.store.apply([change], actor="bench")[0]
            written.extend([item.id] if item is not None else [])

        def paired(name: str, fn) -> None:
            """Each query once alone and once right after an untimed write, the two alternating, so that other
            load on the machine weighs on both alike."""
            times: dict[bool, list[float]] = {False: [], True: []}
            for flip in (0, 1):
                for i, q in enumerate(queries):
                    after = (i + flip) % 2 == 1
                    if after:
                        write()
                    t = time.perf_counter()
                    fn(i, q)
                    times[after].append(time.perf_counter() - t)
            for after, label in ((False, "alone, between writes"), (True, "right after a write")):
                rows.append((f"{name}, {label}", *percentiles(times[after]), float("nan")))

        paired("memr1 hybrid search(), k=10", lambda i, q: mem.search(qtexts[i], 10, user="solo"))
        paired(
            "memr1 vector (sync + bits + re-score), k=10",
            lambda i, q: (index.sync(mem.store), index.nearest(q, 10, user="solo")),
        )

        # many users: a scoped search only touches its user's rows
        if args.users > 1:
            owners = [f"u{i % args.users}" for i in range(args.n)]
            mem.store.conn.execute("UPDATE memories SET user_id = 'u' || ((id - 1) % ?)", (args.users,))
            mem.store.conn.execute(
                "INSERT INTO history (memory_id, user_id, kind, after, changed_at, actor) VALUES (1, 'u0', 'UPDATE', '', '', 'bench')"
            )  # the user column moved outside the API: force the index to notice
            scoped = VectorIndex(args.dim)
            scoped.sync(mem.store)
            run(
                f"memr1 vector, k=10, scoped to 1 of {args.users} users",
                lambda i, q: [m for m, _ in scoped.nearest(q, 10, user=owners[picks[i]])],
            )
            mem._index = scoped
            run(
                f"memr1 hybrid search(), k=10, scoped to 1 of {args.users} users",
                lambda i, q: mem.search(qtexts[i], 10, user=owners[picks[i]]),
            )
        info = mem.sqlite_info()
        mem.close()

    base = {k: next(r for r in rows if r[0] == f"plain vec0 float KNN, k={k}") for k in (10, 60)}
    print(
        f"\n{args.n:,} memories × {args.dim}-d, {args.sentences} sentence vectors each, {args.queries} queries; load {load_s:.1f}s, index build {index_s:.2f}s, "
        f"open + first search {open_s:.2f}s, index memory {index_bytes / 2**20:.0f} MiB"
    )
    print(
        f"python {sys.version.split()[0]}, numpy {np.__version__}, sqlite-vec {info['sqlite_vec_version']}, SQLite {info['sqlite_version']} ({info['driver']})"
    )
    print("\n| search | p50 ms | p95 ms | recall@k vs exact | speed-up vs vec0 (p50) |\n|---|---:|---:|---:|---:|")
    for name, p50, p95, recall in rows:
        k = 60 if "k=60" in name else 10
        ratio = base[k][1] / p50
        rec = "" if np.isnan(recall) else f"{recall:.3f}"
        print(f"| {name} | {p50:.2f} | {p95:.2f} | {rec} | {ratio:.1f}× |")
    p50s = {name: p50 for name, p50, _, _ in rows}  # the target: right after a write within 1.5× of alone
    for name in ("memr1 hybrid search(), k=10", "memr1 vector (sync + bits + re-score), k=10"):
        alone, after = p50s[f"{name}, alone, between writes"], p50s[f"{name}, right after a write"]
        print(f"\n{name}: right after a write / alone (p50) = {after:.2f} / {alone:.2f} ms = {after / alone:.2f}×")
    return 0


if __name__ == "__main__":
    sys.exit(main())
